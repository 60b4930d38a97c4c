"""The interleaved runtime on vLLM (GPU presets): the same decisions, the same Trace.

Import only when used: `vllm` is the `gpu` extra (vllm 0.31.0). Each round sends every
unfinished trajectory to `LLM.generate` as token ids plus all its clips; vLLM stops at
`</seg>`; the runtime judges the tag (interleave.InterleaveRuntime, shared with the
transformers backend), appends the inserted clip and sends the row again. Prefix
caching (`enable_prefix_caching=True`) hashes the audio items into the block keys, so
"previous context + new clip" reuses the KV blocks of everything before the clip:
the re-prefill of the authors' runtime becomes a cache hit.

vLLM expands each `<|AUDIO|>` of a token prompt into the clip's audio tokens itself, so
prompts are sent with ONE `<|AUDIO|>` per clip (`collapse_audio_pads`); the Trace keeps
the expanded ids (what the model saw), checked against vLLM's count every round.
Log-probs come back as `processed_logprobs` (after temperature; placeholders are banned
with `bad_words`), so they are comparable with the transformers backend's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from echo_lite.config import (
    ENDOFTEXT,
    IM_END,
    PLACEHOLDER_TOKENS,
    SAMPLE_RATE,
    SEG_CLOSE,
    SEG_OPEN,
    Preset,
    SegmentLimits,
    get_preset,
)
from echo_lite.interleave import InterleaveRuntime, Query, RuntimeInputError, _Row
from echo_lite.trace import Trace


def collapse_audio_pads(ids: Sequence[int], audio_pad_id: int) -> list[int]:
    """Expanded ids -> the form vLLM expects: each run of `<|AUDIO|>` becomes one."""
    out: list[int] = []
    for t in ids:
        if t == audio_pad_id and out and out[-1] == audio_pad_id:
            continue
        out.append(t)
    return out


def make_llm(model: str | Path, preset: str | Preset, seed: int = 0, **overrides):
    """`vllm.LLM` for the thinker at `model` (a full Qwen2.5-Omni checkpoint directory or
    hub id), with one audio item per prompt plus one per possible re-listen."""
    from vllm import LLM

    preset = get_preset(preset)
    kwargs = dict(
        model=str(model),
        dtype=preset.model.dtype,
        seed=seed,
        enable_prefix_caching=True,
        limit_mm_per_prompt={"audio": preset.segments.max_clips + 1, "image": 0, "video": 0},
        gpu_memory_utilization=preset.runtime.vllm_gpu_memory_utilization,
        max_model_len=preset.runtime.vllm_max_model_len,
        logprobs_mode="processed_logprobs",
    )
    kwargs.update(overrides)
    return LLM(**kwargs)


class VLLMInterleavedGenerator(InterleaveRuntime):
    """`InterleavedGenerator`'s twin on vLLM: `generate(queries)` -> list[Trace]."""

    backend = "vllm"

    def __init__(self, llm, preset: str | Preset, mode: str = "interleaved", temperature: float | None = None,
                 top_p: float | None = None, batch_size: int | None = None, limits: SegmentLimits | None = None,
                 sampling_params=None):
        """llm: a `vllm.LLM` (see `make_llm`) or an engine with the same `generate` contract;
        sampling_params: the class of its per-request parameters (`vllm.SamplingParams`)."""
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params
        self.sampling_params = sampling_params
        preset = get_preset(preset)
        tok = llm.get_tokenizer()
        eos = [tok.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT)]
        super().__init__(tok, preset, mode=mode, temperature=temperature, top_p=top_p, batch_size=batch_size,
                         limits=limits, eos_ids=eos, max_positions=llm.llm_engine.model_config.max_model_len)
        self.llm = llm
        # Placeholders would break the next round's prompt; one_pass may not open a re-listen.
        self.bad_words = list(PLACEHOLDER_TOKENS) + ([SEG_OPEN] if mode == "one_pass" else [])

    def generate(self, queries: Sequence[Query], seed: int = 0, seeds: Sequence[int] | None = None,
                 forced_prefix=None) -> list[Trace]:
        if forced_prefix is not None:
            raise RuntimeInputError("forced_prefix is a transformers-backend teaching utility; vLLM has no such hook")
        return super().generate(queries, seed=seed, seeds=seeds)

    def _params(self, r: _Row, round_idx: int):
        room = min(self.limits.max_new_tokens - self._budget_used(r),
                   self.max_positions - len(r.prompt_ids) - len(r.completion))
        return self.sampling_params(
            temperature=self.temperature, top_p=self.top_p if self.temperature > 0 else 1.0,
            max_tokens=max(1, room), seed=(r.seed * 1_000_003 + round_idx) % (2**31),
            stop=None if self.mode == "one_pass" else [SEG_CLOSE], include_stop_str_in_output=True,
            stop_token_ids=sorted(self.eos_ids), bad_words=self.bad_words, logprobs=0,
            skip_special_tokens=False, spaces_between_special_tokens=False,
        )

    def _run(self, rows: list[_Row]) -> dict[str, float]:
        timings: dict[str, float] = defaultdict(float)
        t_begin = time.perf_counter()
        active, round_idx = list(rows), 0
        while active:
            prompts = [{"prompt_token_ids": collapse_audio_pads(r.prompt_ids + r.completion, self.pad_audio_id),
                        "multi_modal_data": {"audio": [(c, SAMPLE_RATE) for c in r.clips]}} for r in active]
            t0 = time.perf_counter()
            outs = self.llm.generate(prompts, [self._params(r, round_idx) for r in active], use_tqdm=False)
            timings["generate_s"] += time.perf_counter() - t0
            for r, out, p in zip(active, outs, prompts, strict=True):
                expected = len(r.prompt_ids) + len(r.completion)
                if len(out.prompt_token_ids) not in (expected, len(p["prompt_token_ids"])):
                    raise RuntimeError(f"query {r.query.id!r}: vLLM expanded the prompt to {len(out.prompt_token_ids)} "
                                       f"tokens, the runtime counted {expected}: audio token counts disagree")
                r.pending_clips = []
                comp = out.outputs[0]
                for i, tok in enumerate(comp.token_ids):
                    lp = comp.logprobs[i][tok].logprob if comp.logprobs else 0.0
                    self._accept(r, int(tok), float(lp))
                    if r.finish is not None or r.pending_clips:
                        break  # ended, or a clip was queued: the next round starts after it
                if r.finish is None and not r.pending_clips:
                    if comp.finish_reason == "length":
                        r.finish = "length"
                    elif comp.stop_reason != SEG_CLOSE:  # an end token of the model's own config
                        r.finish = "stop"
            active = [r for r in active if r.finish is None]
            round_idx += 1
        timings["rounds"] = round_idx
        timings["total_s"] = time.perf_counter() - t_begin
        return dict(timings)


def export_omni_checkpoint(model, tokenizer, out_dir: str | Path, processor: bool = True) -> Path:
    """Write a thinker (tiny or fine-tuned) as a full Qwen2.5-Omni checkpoint, the layout
    vLLM serves: `Qwen2_5OmniConfig` around the thinker's config (no audio output),
    weights under the `thinker.` prefix (safetensors), tokenizer, and with `processor`
    the `Qwen2_5OmniProcessor` files (they need torchvision, present with vllm)."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniConfig

    from echo_lite.trace import unwrap_thinker

    thinker = unwrap_thinker(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    cfg.architectures = ["Qwen2_5OmniModel"]
    cfg.save_pretrained(str(out))
    # clone: tied embeddings share storage, which safetensors refuses to write twice
    tensors = {f"thinker.{k}": v.detach().cpu().contiguous().clone() for k, v in thinker.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    tokenizer.save_pretrained(str(out))
    thinker.generation_config.save_pretrained(str(out))
    if processor:
        from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, WhisperFeatureExtractor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        from echo_lite.config import HOP_LENGTH

        fe = WhisperFeatureExtractor(feature_size=thinker.config.audio_config.num_mel_bins, sampling_rate=SAMPLE_RATE,
                                     hop_length=HOP_LENGTH)
        Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                             feature_extractor=fe, tokenizer=tokenizer,
                             chat_template=getattr(tokenizer, "chat_template", None)).save_pretrained(str(out))
    return out
