"""GPU smoke test and memory table on a full-size thinker with random weights (no download).

    python benchmarks/gpu_smoke.py --preset omni-3b            # on a GPU machine
    python benchmarks/gpu_smoke.py --preset tiny --device cpu  # the same code path on CPU

Runs, on the real architecture of the preset:
1. training steps on real thinker inputs (audio collator, 10-30 s clips) for LoRA / full
   fine-tuning with and without gradient checkpointing: peak memory and tokens/s;
2. one SFT step through `echo_lite.sft.run_sft` on the model saved to and loaded from a
   local directory (the `from_pretrained` path the presets use);
3. interleaved generation (runtime, cache resume) with re-listens: tokens/s;
4. one GRPO step (`echo_lite.grpo.run_grpo`) with interleaved rollouts.
Prints a table and writes it as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from echo_lite.audio import write_audio
from echo_lite.config import SAMPLE_RATE, get_preset
from echo_lite.model import (
    LoadedModel,
    apply_lora,
    build_full_size_thinker,
    build_tiny_thinker,
    freeze_audio_tower,
    load_tokenizer,
)


def make_items(root: Path, n: int, seconds: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wav = 0.01 * rng.standard_normal(len(t))
        start = float(rng.integers(0, int(seconds) - 2))
        on = (t >= start) & (t < start + 1.5)
        wav[on] += 0.3 * np.sin(2 * np.pi * 440 * t[on])
        write_audio(root / f"{i}.wav", wav.astype(np.float32))
        items.append({"id": str(i), "audio": f"{i}.wav", "question": f"What is heard at {start + 0.5:.1f} s?",
                      "choices": ["A4 tone", "noise burst"], "answer": "A4 tone",
                      "decisive_spans": [[start, start + 1.5]],
                      "response": f"<think>The question asks about {start + 0.5:.1f} s, let me listen to "
                                  f"<seg>{start:.1f}, {start + 1.5:.1f}</seg>, this is an A4 tone.</think>"
                                  "<answer>A4 tone</answer>"})
    return items


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device):
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else float("nan")


def build(preset_name: str, tok, device: str):
    if preset_name == "tiny":
        return build_tiny_thinker(tok).to(device)
    return build_full_size_thinker(preset_name, tok, dtype=torch.bfloat16, device=device)


def train_steps(preset_name, tok, device, batch, lora: bool, grad_ckpt: bool, steps: int = 2) -> dict:
    """Forward + backward + AdamW on one batch; peak memory over the steps."""
    reset_peak(device)
    model = build(preset_name, tok, device)
    freeze_audio_tower(model)
    for n, p in model.named_parameters():
        if "visual" in n:
            p.requires_grad_(False)
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if lora:
        model = apply_lora(model, get_preset(preset_name).sft)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = {k: v.to(device) for k, v in batch.items()}
    if preset_name != "tiny":
        inputs["input_features"] = inputs["input_features"].to(torch.bfloat16)
    n_tok = int(inputs["attention_mask"].sum())
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        loss = model(**inputs, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    out = {"peak_gib": round(peak_gib(device), 2), "tokens_per_s": round(n_tok / min(times), 1),
           "step_s": round(min(times), 3), "loss": round(float(loss.detach()), 3),
           "trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1)}
    del model, opt
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="omni-3b", choices=["tiny", "omni-3b", "omni-7b"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length of the training items")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["memory", "sft", "generate", "grpo", "full"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from echo_lite.sft import AudioSFTCollator, run_sft

    device, name = args.device, args.preset
    tok = load_tokenizer("tiny")  # special-token ids; the full-size vocabulary is the real one
    preset = get_preset(name).with_overrides(segments={"max_new_tokens": 64})
    if device == "cpu":
        preset = preset.with_overrides(sft={"bf16": False}) if name == "tiny" else preset
    work = Path(tempfile.mkdtemp(prefix="echo_smoke_"))
    items = make_items(work / "data", 8, args.seconds)
    n_mels = preset.model.n_mels
    collator = AudioSFTCollator(tok, preset, work / "data", n_mels)
    batch = collator(items[: args.batch])
    results: dict = {"preset": name, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                     "clip_seconds": args.seconds, "batch": args.batch,
                     "sequence_tokens": int(batch["attention_mask"].sum(1).max())}

    if "memory" not in args.skip:
        configs = [("lora", True, False), ("lora+gc", True, True), ("full+gc", False, True)]
        if "full" in args.skip:
            configs = configs[:2]
        for label, lora, gc in configs:
            try:
                results[f"train_{label}"] = train_steps(name, tok, device, batch, lora, gc)
            except torch.OutOfMemoryError:
                results[f"train_{label}"] = {"peak_gib": "OOM"}
            print(label, results[f"train_{label}"], flush=True)

    base = work / "base"
    if {"sft", "generate", "grpo"} - set(args.skip):
        model = build(name, tok, device)
        model.save_pretrained(str(base), safe_serialization=True)
        tok.save_pretrained(str(base))
        del model
    if "sft" not in args.skip:
        reset_peak(device)
        t0 = time.perf_counter()
        final = run_sft(items, work / "data", work / "sft", preset.with_overrides(sft={"per_device_batch_size": 2}),
                        base=base, max_steps=1, logging_steps=1, disable_tqdm=True, save_steps=1000)
        results["sft_run_sft_step"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_gib": round(peak_gib(device), 2),
                                       "adapter_saved": (final / "adapter_model.safetensors").exists()}
        print("sft", results["sft_run_sft_step"], flush=True)

    if {"generate", "grpo"} - set(args.skip):
        from echo_lite.grpo import RLItem, run_grpo
        from echo_lite.interleave import InterleavedGenerator, Query
        from echo_lite.model import load_thinker

        model = load_thinker(base, dtype="bfloat16" if name != "tiny" else "float32", device=device)
        lm = LoadedModel(model=model, tokenizer=tok, preset=preset)
        wavs = [np.asarray(__import__("soundfile").read(work / "data" / it["audio"])[0], np.float32) for it in items]
        if "generate" not in args.skip:
            queries = [Query(wav=w, question=it["question"], choices=it["choices"], id=it["id"])
                       for w, it in zip(wavs, items)]
            prefix = "<think>" + "".join(f"Listen to <seg>{k}.0, {k + 1}.0</seg>, and " for k in range(4))
            reset_peak(device)
            gen = InterleavedGenerator(lm, mode="interleaved", temperature=1.0)
            t0 = time.perf_counter()
            traces = gen.generate(queries, seed=0, forced_prefix=prefix)
            dt = time.perf_counter() - t0
            n_tok = sum(len(t.completion_ids) for t in traces)
            results["interleaved_generate"] = {
                "rows": len(traces), "relistens_per_row": float(np.mean([t.n_relistens for t in traces])),
                "completion_tokens": n_tok, "seconds": round(dt, 2), "tokens_per_s": round(n_tok / dt, 1),
                "peak_gib": round(peak_gib(device), 2)}
            print("generate", results["interleaved_generate"], flush=True)
        if "grpo" not in args.skip:
            rl = [RLItem(it["id"], w, it["question"], it["choices"], it["answer"],
                         [tuple(s) for s in it["decisive_spans"]]) for w, it in zip(wavs, items)]
            reset_peak(device)
            t0 = time.perf_counter()
            _, log = run_grpo(lm, rl[:2], work / "grpo", preset, steps=1, prompts_per_step=2, num_generations=4,
                              progress=False)
            results["grpo_step"] = {"seconds": round(time.perf_counter() - t0, 1), "peak_gib": round(peak_gib(device), 2),
                                    **{k: round(v, 4) for k, v in log[-1].items() if isinstance(v, float)}}
            print("grpo", results["grpo_step"], flush=True)

    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
