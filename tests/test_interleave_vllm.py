"""The vLLM backend gives the same Traces as the transformers one (GPU machines only).

The export half runs everywhere; the vLLM half skips with a stated reason where vllm
(the `gpu` extra) or CUDA is missing. Model: the tiny thinker trained in
test_interleave.train_tagger to write its own `<seg>` tags, exported as a full
Qwen2.5-Omni checkpoint (`export_omni_checkpoint`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echo_lite.interleave import InterleavedGenerator
from echo_lite.interleave_vllm import collapse_audio_pads, export_omni_checkpoint
from echo_lite.model import load_thinker


def test_collapse_audio_pads():
    assert collapse_audio_pads([1, 7, 9, 9, 9, 8, 2, 7, 9, 8], audio_pad_id=9) == [1, 7, 9, 8, 2, 7, 9, 8]
    assert collapse_audio_pads([], audio_pad_id=9) == []


def test_export_round_trips_through_transformers(tmp_path):
    from echo_lite.model import load_preset_model

    lm = load_preset_model("tiny")
    out = export_omni_checkpoint(lm.model, lm.tokenizer, tmp_path / "omni", processor=False)
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    again = load_thinker(out)  # transformers maps the `thinker.` prefix of a full checkpoint
    ids = torch.randint(0, 900, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, lm.model(input_ids=ids).logits)


def _need_vllm():
    pytest.importorskip("vllm", reason="vllm is the `gpu` extra; not installed here")
    if not torch.cuda.is_available():
        pytest.skip("the vLLM backend needs a CUDA GPU")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _need_vllm()
    from test_interleave import train_tagger

    from echo_lite.interleave_vllm import make_llm

    lm, queries, data = train_tagger()
    path = export_omni_checkpoint(lm.model, lm.tokenizer, tmp_path_factory.mktemp("omni_tiny"))
    llm = make_llm(path, lm.preset, gpu_memory_utilization=0.3, max_model_len=4096, enforce_eager=True)
    return lm, llm, queries, data


def test_vllm_greedy_traces_match_transformers(served):
    from echo_lite.interleave_vllm import VLLMInterleavedGenerator

    lm, llm, queries, data = served
    assert llm.llm_engine.cache_config.enable_prefix_caching
    got = VLLMInterleavedGenerator(llm, lm.preset, temperature=0).generate(queries)
    ref = InterleavedGenerator(lm, temperature=0).generate(queries)
    assert [t.backend for t in got] == ["vllm"] * 3
    assert [t.n_relistens for t in got] == [1, 2, 3]
    for g, r in zip(got, ref, strict=True):
        assert g.prompt_ids == r.prompt_ids
        assert g.completion_ids == r.completion_ids
        assert g.inserted_mask == r.inserted_mask
        assert [s.applied for s in g.segments] == [s.applied for s in r.segments]
        assert np.allclose(g.logprobs, r.logprobs, atol=5e-2)


def test_vllm_modes_and_sampling(served):
    from echo_lite.interleave_vllm import VLLMInterleavedGenerator

    lm, llm, queries, _ = served
    one_pass = VLLMInterleavedGenerator(llm, lm.preset, mode="one_pass", temperature=0).generate(queries)
    assert all(t.n_relistens == 0 and not any(t.inserted_mask) for t in one_pass)
    tags_only = VLLMInterleavedGenerator(llm, lm.preset, mode="tags_only", temperature=0).generate(queries[:1])[0]
    assert tags_only.segments and not any(tags_only.inserted_mask)
    gen = VLLMInterleavedGenerator(llm, lm.preset, temperature=1.0)
    a, b = gen.generate(queries, seeds=[1, 2, 3]), gen.generate(queries, seeds=[1, 2, 3])
    assert [t.completion_ids for t in a] == [t.completion_ids for t in b]
    placeholders = set(lm.placeholder_ids())
    for t in a:
        assert not {tok for tok, m in zip(t.completion_ids, t.inserted_mask, strict=True) if not m} & placeholders
