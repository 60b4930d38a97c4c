"""The runtime's own decoding step against transformers' text-model forward (the reference)."""

from __future__ import annotations

import copy

import pytest
import torch

from echo_lite.decode_step import lean_decode_step, lean_decode_weights, supports_lean_decode
from echo_lite.trace import mrope_positions


def _prefill(text_model, ids: torch.Tensor, attn: torch.Tensor | None = None):
    from transformers import DynamicCache

    cache = DynamicCache()
    pos = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    text_model(input_ids=ids, attention_mask=attn, position_ids=mrope_positions(pos), past_key_values=cache,
               use_cache=True)
    return cache


def _hf_step(text_model, tok, pos, cache, attn=None):
    return text_model(input_ids=tok, attention_mask=attn, position_ids=mrope_positions(pos), past_key_values=cache,
                      use_cache=True).last_hidden_state


def _compare(text_model, ids, n_steps=6, attn=None, atol=1e-5, fused=False):
    """Decode n_steps tokens both ways from the same prefill; hidden states and caches agree.

    fused: the step runs on `lean_decode_weights` (the runtime's default) instead of the modules."""
    weights = lean_decode_weights(text_model) if fused else None
    assert (weights is not None) == fused
    ref_cache, lean_cache = _prefill(text_model, ids, attn), _prefill(text_model, ids, attn)
    g = torch.Generator().manual_seed(0)
    B, n = ids.shape
    for i in range(n_steps):
        tok = torch.randint(5, 200, (B, 1), generator=g)
        pos = torch.full((B, 1), n + i)
        if attn is not None:
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype)], dim=1)
        ref = _hf_step(text_model, tok, pos, ref_cache, attn)
        got = lean_decode_step(text_model, tok, pos, lean_cache, attn, weights)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=atol, rtol=1e-5)
    for a, b in zip(ref_cache.layers, lean_cache.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=atol, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def text_model(tiny_model):
    return tiny_model.model.eval()


@pytest.mark.parametrize("fused", [False, True], ids=["modules", "fused"])
@torch.inference_mode()
def test_equals_transformers_forward_one_row(text_model, fused):
    assert supports_lean_decode(text_model)
    ids = torch.randint(5, 200, (1, 37), generator=torch.Generator().manual_seed(1))
    _compare(text_model, ids, fused=fused)


@pytest.mark.parametrize("fused", [False, True], ids=["modules", "fused"])
@torch.inference_mode()
def test_equals_transformers_forward_with_masked_cache_slots(text_model, fused):
    """Rows of a batch with holes in the cache (left padding, slots of rows that waited)."""
    ids = torch.randint(5, 200, (3, 20), generator=torch.Generator().manual_seed(2))
    attn = torch.ones_like(ids)
    attn[1, :7] = 0
    attn[2, 4:9] = 0
    _compare(text_model, ids, attn=attn, fused=fused)


@torch.inference_mode()
def test_fused_step_in_bfloat16_matches_transformers(tiny_tokenizer):
    """Half precision keeps the norm modules (they upcast to float32), the rest is fused."""
    from echo_lite.model import build_tiny_thinker

    text_model = build_tiny_thinker(tiny_tokenizer).model.to(torch.bfloat16).eval()
    weights = lean_decode_weights(text_model)
    assert weights.layers[0][0] is text_model.layers[0].input_layernorm
    ids = torch.randint(5, 200, (2, 25), generator=torch.Generator().manual_seed(5))
    ref_cache, lean_cache = _prefill(text_model, ids), _prefill(text_model, ids)
    tok, pos = ids[:, -1:], torch.full((2, 1), 25)
    ref = _hf_step(text_model, tok, pos, ref_cache)
    got = lean_decode_step(text_model, tok, pos, lean_cache, None, weights)
    torch.testing.assert_close(got.float(), ref.float(), atol=0.05, rtol=0.02)


def test_rms_norm_as_layer_norm_over_x_and_minus_x():
    from echo_lite.decode_step import _rms_as_layer_norm

    x = torch.randn(4, 3, 128, generator=torch.Generator().manual_seed(6)) * 3
    w = torch.randn(128, generator=torch.Generator().manual_seed(7))
    want = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))  # Qwen2RMSNorm's formula
    torch.testing.assert_close(_rms_as_layer_norm(x, torch.cat((w, w)), 1e-6), want, atol=1e-6, rtol=1e-5)


@torch.inference_mode()
def test_equals_transformers_forward_under_lora(tiny_tokenizer):
    """LoRA layers (PEFT) are the model's own submodules: the step calls them as they are."""
    from peft import LoraConfig, get_peft_model

    from echo_lite.model import build_tiny_thinker

    thinker = build_tiny_thinker(tiny_tokenizer)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=r".*model\.layers\.\d+\.(self_attn\.q_proj|mlp\.up_proj)",
                     init_lora_weights=False)  # random B: the adapter really changes the output
    peft_model = get_peft_model(thinker, cfg).eval()
    text_model = peft_model.base_model.model.model
    ids = torch.randint(5, 200, (2, 15), generator=torch.Generator().manual_seed(3))
    _compare(text_model, ids)
    assert lean_decode_weights(text_model) is None  # LoRA layers are not plain Linear: the modules path
    plain = _prefill(text_model, ids)  # and the adapter matters: without it the step differs
    tok, pos = ids[:, -1:], torch.full((2, 1), 15)
    with_adapter = lean_decode_step(text_model, tok, pos, copy.deepcopy(plain))
    with peft_model.disable_adapter():
        without = lean_decode_step(text_model, tok, pos, plain)
    assert (with_adapter - without).abs().max() > 1e-3


def test_unsupported_models_fall_back(tiny_tokenizer):
    from echo_lite.model import build_tiny_thinker

    thinker = build_tiny_thinker(tiny_tokenizer)
    text_model = thinker.model
    text_model.config.use_sliding_window = True
    assert not supports_lean_decode(text_model)
    text_model.config.use_sliding_window = False
    text_model.config.rope_parameters = dict(text_model.config.rope_parameters, rope_type="yarn")
    assert not supports_lean_decode(text_model)


@torch.inference_mode()
def test_fused_layout_is_refused_where_qwen2_has_no_bias(tiny_tokenizer):
    """A bias on o_proj (none in Qwen2) would be dropped by the addmm residual: the modules path runs."""
    from echo_lite.model import build_tiny_thinker

    text_model = build_tiny_thinker(tiny_tokenizer).model.eval()
    assert lean_decode_weights(text_model) is not None
    attn = text_model.layers[1].self_attn
    biased = torch.nn.Linear(attn.o_proj.in_features, attn.o_proj.out_features, bias=True)
    biased.weight.copy_(attn.o_proj.weight)
    attn.o_proj = biased
    assert lean_decode_weights(text_model) is None
    ids = torch.randint(5, 200, (1, 12), generator=torch.Generator().manual_seed(8))
    _compare(text_model, ids)  # the modules path still equals transformers with the bias


def test_generator_tokens_and_logprobs_equal_with_and_without_the_lean_step(tiny_tokenizer):
    """The whole runtime, batched rows with re-listens, greedy and sampled: same tokens either way."""
    import numpy as np

    from echo_lite.config import get_preset
    from echo_lite.interleave import InterleavedGenerator, Query
    from echo_lite.model import LoadedModel, build_tiny_thinker
    from echo_lite.segments import format_segment
    from echo_lite.signals import tone_clip

    lm = LoadedModel(model=build_tiny_thinker(tiny_tokenizer), tokenizer=tiny_tokenizer, preset=get_preset("tiny"))
    queries = [Query(wav=tone_clip([262.0, 330.0, 392.0, 440.0][: 2 + i], seed=i), question=f"Tone at {i} s?",
                     id=f"q{i}") for i in range(3)]
    forced = ["<think>" + "".join(f" listen {format_segment(0.5 * j, 0.5 * j + 1.0)}," for j in range(i))
              for i in range(3)]
    for temperature in (0.0, 0.8):
        runs = [InterleavedGenerator(lm, temperature=temperature, batch_size=3, lean_decode=lean).generate(
            queries, seed=4, forced_prefix=forced) for lean in (True, False)]
        assert [t.n_relistens for t in runs[0]] == [0, 1, 2]
        for a, b in zip(*runs, strict=True):
            assert a.completion_ids == b.completion_ids
            assert np.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_growing_cache_holds_what_dynamic_cache_holds():
    """Chunks and single tokens appended past the buffer's capacity, rows re-selected by
    assignment (as copy_cache_row does): the same keys and values as transformers' cache."""
    from transformers import DynamicCache

    from echo_lite.decode_step import growing_cache

    g = torch.Generator().manual_seed(5)
    ref, grow = DynamicCache(), growing_cache()
    for step, width in enumerate([40, 1, 1, 30, *[1] * 70, 5]):
        if step == 50:  # keep rows 0 and 2 (new tensors assigned, then appended to)
            for cache in (ref, grow):
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[[0, 2]], layer.values[[0, 2]]
        rows = 3 if step < 50 else 2
        for li in range(2):
            k, v = torch.randn(rows, 2, width, 8, generator=g), torch.randn(rows, 2, width, 8, generator=g)
            got, want = grow.update(k, v, li), ref.update(k, v, li)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert grow.get_seq_length() == ref.get_seq_length() == 40 + 2 + 30 + 70 + 5


def test_growing_cache_repacks_rows_in_place():
    """`repack` (what compact_cache calls) keeps the chosen rows with their slots in the given
    order, the same values as selecting them into a new tensor, and keeps the buffer: the next
    appended token is written into it rather than into a new, larger copy."""
    from echo_lite.decode_step import growing_cache

    g = torch.Generator().manual_seed(7)
    cache = growing_cache()
    for width in (30, 1, 1):
        cache.update(torch.randn(4, 2, width, 8, generator=g), torch.randn(4, 2, width, 8, generator=g), 0)
    layer = cache.layers[0]
    before = layer.keys.clone(), layer.values.clone()
    orders = {0: torch.tensor([3, 4, 5, 6, 7]), 2: torch.tensor([0, 1, 2, 30, 31]), 3: torch.tensor([31, 0, 9, 8, 2])}
    buffer = layer.keys.data_ptr()
    layer.repack(list(orders.items()), 5)
    for got, was in zip((layer.keys, layer.values), before, strict=True):
        want = torch.stack([was[i].index_select(1, o) for i, o in orders.items()])
        assert got.shape == (3, 2, 5, 8) and torch.equal(got, want)
    k, v = torch.randn(3, 2, 1, 8, generator=g), torch.randn(3, 2, 1, 8, generator=g)
    keys, values = cache.update(k, v, 0)
    assert keys.data_ptr() == buffer and keys.shape == (3, 2, 6, 8)
    assert torch.equal(keys[:, :, 5:], k) and torch.equal(values[:, :, :5], want)
