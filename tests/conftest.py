"""Shared fixtures: the tiny tokenizer and a freshly built tiny thinker (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from echo_lite.config import SAMPLE_RATE, get_preset


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny-model ops are far faster on one thread than fighting for two shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from echo_lite.model import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from echo_lite.model import build_tiny_thinker

    return build_tiny_thinker(tiny_tokenizer, get_preset("tiny").model)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory):
    """A small synth output (24 items drafted, seed 5; no datasets copy): DIR/sft, DIR/rl, DIR/eval.
    Tests read it and write elsewhere."""
    from echo_lite.data.synth import synthesize

    out = tmp_path_factory.mktemp("small_synth")
    synthesize(out, preset="tiny", n=24, seed=5, write_hf=False, progress=False)
    return out


@pytest.fixture
def tone():
    """A 10 s clip: 440 Hz for the first half, 880 Hz for the second."""
    t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
    wav = np.where(t < 5, np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 880 * t))
    return (0.3 * wav).astype(np.float32)
