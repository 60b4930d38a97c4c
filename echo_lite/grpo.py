"""Stage 2: GRPO with segment rewards over interleaved rollouts (ECHO_METHOD.md section 5).

An own loop rather than TRL's GRPOTrainer: TRL passes no audio to its log-prob forwards,
so it would need a subclass over private methods; here the loop is ~150 readable lines
over the runtime's `Trace` and `trace_logprobs`, with accelerate for devices.

Per step: P prompts x G interleaved rollouts (temperature 1.0) -> rewards (rewards.py)
-> advantages normalised within each group -> PPO-clipped surrogate + beta * KL to the
reference policy (LoRA adapters disabled) -> token mean over *policy* tokens only: the
runtime-inserted audio tokens are masked out of the loss, the KL and the denominator.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from echo_lite.config import Preset, get_preset
from echo_lite.interleave import InterleavedGenerator, Query
from echo_lite.model import LoadedModel, apply_lora, freeze_audio_tower
from echo_lite.rewards import score_response
from echo_lite.trace import Trace, TraceLogprobs, policy_text, trace_logprobs


@dataclass
class RLItem:
    """One RL prompt: the clip, the question, the gold option and the annotated spans."""

    id: str
    wav: np.ndarray
    question: str
    choices: list[str]
    answer: str
    decisive_spans: list[tuple[float, float]]

    def query(self) -> Query:
        return Query(wav=self.wav, question=self.question, choices=self.choices,
                     decisive_spans=self.decisive_spans, id=self.id)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(R - group mean) / (group std + eps), groups of `group_size` consecutive rewards."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)
    return adv.view(-1)


def grpo_loss(policy: TraceLogprobs, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, clip_eps: float, beta: float, mask_inserted: bool = True) -> tuple:
    """The GRPO objective over a batch of traces; returns (loss, stats).

    Token mean over the loss positions: the sampled tokens when `mask_inserted` (echo_lite),
    or every completion token (the released code's denominator, kept for the ablation).
    KL is the k3 estimator exp(ref - pi) - (ref - pi) - 1, per token.
    """
    mask = (policy.sampled_mask if mask_inserted else policy.completion_mask).float()
    ratio = torch.exp(policy.logprobs - old_logprobs)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None and beta > 0:
        delta = ref_logprobs - policy.logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    denom = mask.sum().clamp(min=1.0)
    loss = (per_token * mask).sum() / denom
    clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).float()
    stats = {"kl": float((kl * mask).sum().detach() / denom), "clip_fraction": float((clipped * mask).sum() / denom),
             "policy_tokens": float(mask.sum())}
    return loss, stats


def reward_stats(traces: list[Trace], items: list[RLItem], tokenizer, preset: Preset) -> tuple[torch.Tensor, dict]:
    """Rewards of each trace (in order) and the per-step means of every component."""
    rows = []
    for t, it in zip(traces, items):
        spans = [s.applied for s in t.segments if s.inserted and s.applied is not None]
        rows.append((score_response(policy_text(t, tokenizer), it.choices, it.answer, spans, it.decisive_spans,
                                    preset.rewards), spans))
    totals = torch.tensor([r.total for r, _ in rows], dtype=torch.float32)
    seg_lengths = [b - a for _, spans in rows for a, b in spans]
    stats = {
        "reward": float(totals.mean()),
        **{f"reward_{k}": float(np.mean([getattr(r, k) for r, _ in rows]))
           for k in ("format", "consistency", "accuracy", "segment", "grounding")},
        "accuracy": float(np.mean([r.correct for r, _ in rows])),
        "segments_per_answer": float(np.mean([len(s) for _, s in rows])),
        "segment_seconds": float(np.mean(seg_lengths)) if seg_lengths else 0.0,
        "completion_tokens": float(np.mean([t.n_generated for t in traces])),
    }
    return totals, stats


@dataclass
class GRPORunConfig:
    steps: int
    prompts_per_step: int
    num_generations: int
    learning_rate: float
    beta: float
    clip_eps: float
    temperature: float
    mask_inserted_audio: bool
    seed: int
    save_every: int = 10

    @classmethod
    def from_preset(cls, preset: Preset, n_items: int, **overrides) -> "GRPORunConfig":
        g = preset.grpo
        steps = max(1, math.floor(g.epochs * n_items / g.prompts_per_step))
        cfg = dict(steps=steps, prompts_per_step=g.prompts_per_step, num_generations=g.num_generations,
                   learning_rate=g.learning_rate, beta=g.beta, clip_eps=g.clip_eps, temperature=g.temperature,
                   mask_inserted_audio=g.mask_inserted_audio, seed=g.seed)
        cfg.update(overrides)
        return cls(**cfg)


def _save_checkpoint(out_dir: Path, step: int, model, optimizer, log: list[dict], cfg: GRPORunConfig) -> Path:
    """Adapter (safetensors), optimizer state and the log, written to a temp dir and then renamed.

    No RNG state is needed: every rollout's sampling is seeded from (seed, step, row)."""
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # tensors and numbers only: loads with weights_only
    (tmp / "log.json").write_text(json.dumps({"step": step, "config": asdict(cfg), "log": log}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return final


def _last_checkpoint(out_dir: Path) -> Path | None:
    cks = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def run_grpo(lm: LoadedModel, items: list[RLItem], out_dir: str | Path, preset: str | Preset | None = None,
             resume: bool = True, progress: bool = True, **overrides) -> tuple[LoadedModel, list[dict]]:
    """Train `lm` with GRPO on `items`: a LoRA adapter (added if it has none; the reference is the
    model with adapters disabled) or, when the preset fine-tunes fully, all language-model weights
    (the reference is a frozen copy of the starting model).

    Resumable: an interrupted run given the same arguments continues from its last checkpoint
    (adapter, optimizer, RNG, log). Returns the trained model and the per-step log.
    """
    from accelerate import Accelerator
    from peft import PeftModel
    from tqdm.auto import tqdm

    preset = get_preset(preset or lm.preset)
    if not items:
        raise ValueError("run_grpo needs at least one RL item")
    cfg = GRPORunConfig.from_preset(preset, len(items), **overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    model = lm.model
    use_lora = preset.sft.use_lora or isinstance(model, PeftModel)
    freeze_audio_tower(model)
    for name, p in model.named_parameters():  # echo_lite never trains the vision tower
        if "visual" in name:
            p.requires_grad_(False)
    reference = None
    if use_lora and not isinstance(model, PeftModel):
        model = apply_lora(model, preset.sft)
    elif not use_lora and cfg.beta > 0:
        # full fine-tuning (the tiny preset): the reference is a frozen copy of the starting policy
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    last = _last_checkpoint(out_dir) if resume else None
    if last is not None:
        from safetensors.torch import load_file

        if use_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(last / "adapter_model.safetensors")))
        else:
            model.load_state_dict(load_file(str(last / "model.safetensors")), strict=False)
    lm.model = model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    accelerator = Accelerator(cpu=preset.device == "cpu")
    model, optimizer = accelerator.prepare(model, optimizer)
    log: list[dict] = []
    start = 0
    if last is not None:
        optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=True))
        saved = json.loads((last / "log.json").read_text())
        log, start = saved["log"], saved["step"]

    generator = InterleavedGenerator(lm, mode="interleaved", temperature=cfg.temperature)
    order = np.random.default_rng(cfg.seed).permutation(len(items)).tolist()
    bar = tqdm(range(start, cfg.steps), desc="grpo", disable=not progress, initial=start, total=cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        batch = [items[order[(step * cfg.prompts_per_step + k) % len(items)]] for k in range(cfg.prompts_per_step)]
        group = [it for it in batch for _ in range(cfg.num_generations)]
        seeds = [cfg.seed * 1_000_003 + step * 10_007 + i for i in range(len(group))]
        traces = generator.generate([it.query() for it in group], seeds=seeds)
        t_roll = time.perf_counter() - t0
        rewards, stats = reward_stats(traces, group, lm.tokenizer, preset)
        advantages = group_advantages(rewards, cfg.num_generations).to(accelerator.device)

        model.train()
        policy = trace_logprobs(model, traces)
        old = torch.zeros_like(policy.logprobs)
        for i, t in enumerate(traces):  # log-probs recorded while sampling (on-policy: ratio starts at 1)
            old[i, : len(t.logprobs)] = torch.tensor(t.logprobs, device=old.device)
        old = old.masked_fill(~policy.sampled_mask, 0.0)
        ref = None
        if cfg.beta > 0:
            with torch.no_grad():
                if reference is not None:
                    ref = trace_logprobs(reference, traces).logprobs
                else:
                    with accelerator.unwrap_model(model).disable_adapter():
                        ref = trace_logprobs(model, traces).logprobs
        loss, loss_stats = grpo_loss(policy, old, ref, advantages, cfg.clip_eps, cfg.beta, cfg.mask_inserted_audio)
        optimizer.zero_grad()
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        model.eval()

        entry = {"step": step + 1, "loss": float(loss.detach()), **stats, **loss_stats,
                 "rollout_s": round(t_roll, 2), "step_s": round(time.perf_counter() - t0, 2)}
        log.append(entry)
        bar.set_postfix(reward=f"{stats['reward']:.2f}", acc=f"{stats['accuracy']:.2f}",
                        segs=f"{stats['segments_per_answer']:.1f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(out_dir, step + 1, accelerator.unwrap_model(model), optimizer, log, cfg)
    lm.model = accelerator.unwrap_model(model).eval()
    final = out_dir / "final"
    lm.model.save_pretrained(str(final))
    lm.tokenizer.save_pretrained(str(final))
    (final / "grpo_log.json").write_text(json.dumps({"config": asdict(cfg), "log": log}, indent=1))
    return lm, log


def rl_items(split_dir: str | Path) -> list[RLItem]:
    """RL prompts from a split written by `echo-lite synth` (the clip is loaded once per scene)."""
    from echo_lite.audio import load_audio
    from echo_lite.data.formats import read_manifest, resolve_audio

    split_dir = Path(split_dir)
    wavs: dict[str, np.ndarray] = {}
    out = []
    for it in read_manifest(split_dir / "manifest.jsonl"):
        if it.audio not in wavs:
            wavs[it.audio] = load_audio(resolve_audio(split_dir, it.audio, it.id))
        out.append(RLItem(it.id, wavs[it.audio], it.question, list(it.choices), it.answer,
                          [tuple(s) for s in it.decisive_spans]))
    if not out:
        raise ValueError(f"{split_dir}: no RL items")
    return out
