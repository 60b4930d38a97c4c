"""A small deterministic test signal shared by tests, benchmarks and notebooks.

(The main job itself lives in `pipeline.py`: `echo-lite demo`.)
"""

from __future__ import annotations

import numpy as np

from echo_lite.config import SAMPLE_RATE


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
