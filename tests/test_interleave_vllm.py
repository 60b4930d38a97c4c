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


class HFEngineStandIn:
    """Stands in for `vllm.LLM` where vLLM cannot run (no GPU): the same `generate`
    contract (token prompts with ONE `<|AUDIO|>` per clip, expanded by the engine; stop
    strings kept in the output; sampled-token log-probs; finish and stop reasons),
    computed by the real tiny thinker with transformers' `generate`. It checks the vLLM
    backend's round logic; the real engine is tested above on GPU machines."""

    def __init__(self, lm):
        from types import SimpleNamespace

        self.lm = lm
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096))

    def get_tokenizer(self):
        return self.lm.tokenizer

    def generate(self, prompts, params, use_tqdm=False):
        from types import SimpleNamespace

        from echo_lite.audio import AudioFeaturizer, audio_token_count
        from echo_lite.config import AUDIO_PAD

        tok, model = self.lm.tokenizer, self.lm.model
        pad = tok.convert_tokens_to_ids(AUDIO_PAD)
        outs = []
        for prompt, p in zip(prompts, params, strict=True):
            clips = [c for c, _ in prompt["multi_modal_data"]["audio"]]
            counts = iter(audio_token_count(len(c)) for c in clips)
            ids = [x for t in prompt["prompt_token_ids"] for x in ([pad] * next(counts) if t == pad else [t])]
            feats = AudioFeaturizer(self.lm.n_mels)(clips)
            inp = torch.tensor([ids])
            bad = [tok.convert_tokens_to_ids(w) for w in p.bad_words if len(tok.encode(w)) == 1]
            with torch.no_grad():
                g = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), **feats, do_sample=False,
                                   max_new_tokens=p.max_tokens, stop_strings=p.stop, tokenizer=tok,
                                   suppress_tokens=bad, return_dict_in_generate=True, output_logits=True)
            new = g.sequences[0, len(ids):].tolist()
            lps = [torch.log_softmax(lg[0].float(), -1)[t].item() for lg, t in zip(g.logits, new, strict=True)]
            text = tok.decode(new, skip_special_tokens=False)
            stopped = bool(p.stop) and text.endswith(p.stop[0])
            finish = "stop" if stopped or new[-1] in p.stop_token_ids else "length"
            outs.append(SimpleNamespace(prompt_token_ids=ids, outputs=[SimpleNamespace(
                token_ids=new, logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(new, lps, strict=True)],
                finish_reason=finish, stop_reason=p.stop[0] if stopped else None)]))
        return outs


def test_vllm_round_logic_with_a_stand_in_engine():
    """Rounds stop at </seg>, the clip goes in, the next round resumes after it: the same
    traces as the transformers backend on a model that writes its own tags."""
    from types import SimpleNamespace

    from test_interleave import train_tagger

    from echo_lite.interleave_vllm import VLLMInterleavedGenerator

    lm, queries, data = train_tagger()
    gen = VLLMInterleavedGenerator(HFEngineStandIn(lm), lm.preset, temperature=0, sampling_params=SimpleNamespace)
    got = gen.generate(queries)
    assert [t.completion_ids for t in got] == [d.completion_ids for d in data]
    assert [t.n_relistens for t in got] == [1, 2, 3]
