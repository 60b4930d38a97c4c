"""The main job (`echo-lite demo`): for now, build the tiny thinker and run one
interleaved-ready forward on a generated clip: the full clip in the prompt, a
`<seg>` span in the reasoning, and that span re-encoded and inserted after it.

Later stages grow this into synth -> SFT -> GRPO -> eval (issue 8).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from echo_lite.audio import AudioFeaturizer, audio_token_count, cut_span
from echo_lite.config import SAMPLE_RATE, THINK_OPEN, get_preset
from echo_lite.model import count_parameters, load_preset_model
from echo_lite.prompts import audio_insert_text, build_prompt
from echo_lite.segments import format_segment, parse_segments, validate_segment


def tone_clip(pitches_hz: list[float], tone_s: float = 1.0, gap_s: float = 0.5, seed: int = 0) -> np.ndarray:
    """A clip of sine tones separated by gaps, with a little noise (deterministic)."""
    rng = np.random.default_rng(seed)
    parts = []
    for f in pitches_hz:
        t = np.arange(int(tone_s * SAMPLE_RATE)) / SAMPLE_RATE
        env = np.minimum(1.0, np.minimum(t, tone_s - t) / 0.02)  # 20 ms ramps, no clicks
        parts += [0.3 * env * np.sin(2 * np.pi * f * t), np.zeros(int(gap_s * SAMPLE_RATE))]
    wav = np.concatenate(parts)
    return (wav + 0.003 * rng.standard_normal(len(wav))).astype(np.float32)


def run_demo(preset_name: str = "tiny", seed: int = 0) -> dict:
    preset = get_preset(preset_name)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    lm = load_preset_model(preset)
    t_load = time.perf_counter() - t0
    wav = tone_clip([262.0, 330.0, 392.0, 523.0, 440.0, 349.0], seed=seed)
    span_text = format_segment(3.0, 4.0)
    decision = validate_segment(parse_segments(span_text)[0], len(wav) / SAMPLE_RATE, 0, preset.segments)
    clip = cut_span(wav, *decision.applied, min_s=preset.segments.min_clip_s)
    n_full, n_clip = audio_token_count(len(wav)), audio_token_count(len(clip))
    prompt = build_prompt("Which tone is heard between 3 and 4 seconds?", ["C4", "E4", "G4", "C5"], [n_full])
    text = prompt + THINK_OPEN + "Let me listen again to " + span_text + audio_insert_text(n_clip) + ", this suggests"
    enc = lm.tokenizer(text, return_tensors="pt")
    feats = AudioFeaturizer(lm.n_mels)([wav, clip])  # the full clip and the re-inserted one
    t1 = time.perf_counter()
    with torch.no_grad():
        out = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **feats)
    t_fwd = time.perf_counter() - t1
    audio_id = lm.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    result = {
        "preset": preset.name,
        "parameters": count_parameters(lm.model)["total"],
        "clip_seconds": round(len(wav) / SAMPLE_RATE, 2),
        "segment": decision.applied,
        "audio_tokens_full": n_full,
        "audio_tokens_reinserted": n_clip,
        "sequence_tokens": int(enc.input_ids.shape[1]),
        "audio_placeholders": int((enc.input_ids == audio_id).sum()),
        "logits_finite": bool(torch.isfinite(out.logits).all()),
        "load_seconds": round(t_load, 2),
        "forward_seconds": round(t_fwd, 3),
    }
    return result


def print_table(rows: dict) -> None:
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
