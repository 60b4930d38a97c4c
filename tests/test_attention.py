"""The audio-attention share: constructed weights, and a real thinker made to attend uniformly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echo_lite.attention import AttentionError, audio_share, audio_token_id, eager_attention, response_audio_share
from echo_lite.audio import AudioFeaturizer
from echo_lite.config import get_preset
from echo_lite.model import build_tiny_thinker
from echo_lite.perception import reasoning_item


def test_share_of_constructed_weights():
    mask = torch.tensor([[False, True, True, False]])
    layer1 = torch.tensor([[[[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0]],
                            [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]])  # (1, 2, 3, 4)
    layer2 = torch.full((1, 2, 3, 4), 0.25)
    share = audio_share([layer1, layer2], mask)
    # layer 1: head means (0+0)/2, (0.5+1)/2, (0.8+0)/2; layer 2: 0.5 everywhere
    expected = torch.tensor([[(0.0 + 0.5) / 2, (0.75 + 0.5) / 2, (0.4 + 0.5) / 2]])
    assert torch.allclose(share, expected)


def test_share_errors_name_the_problem():
    with pytest.raises(AttentionError, match="output_attentions"):
        audio_share([], torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(AttentionError, match="eager"):
        audio_share([None], torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(AttentionError, match="does not match"):
        audio_share([torch.ones(1, 1, 2, 5)], torch.zeros(1, 3, dtype=torch.bool))


def test_uniform_attention_gives_the_audio_fraction_of_the_prefix(tiny_tokenizer):
    """With query and key projections zeroed, every position attends uniformly to its prefix,
    so the share at position p is (audio tokens among 0..p) / (p + 1): a known answer."""
    model = build_tiny_thinker(tiny_tokenizer, get_preset("tiny").model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "audio_tower" not in name and ("q_proj" in name or "k_proj" in name):
                p.zero_()
    item = reasoning_item(5, np.random.default_rng(5), "order", (8.0, 12.0), get_preset("tiny").data, insert=True)
    assert item.meta["inserted"] >= 1
    ids, start = item.prompt_ids(tiny_tokenizer)
    input_ids = torch.tensor([ids])
    feats = AudioFeaturizer(model.config.audio_config.num_mel_bins)(list(item.clips))
    aid = audio_token_id(tiny_tokenizer)
    share = response_audio_share(model, input_ids, start, aid, **feats)
    assert share.shape == (len(ids) - start,)
    is_audio = (input_ids[0] == aid).double()
    expected = (is_audio.cumsum(0) / torch.arange(1, len(ids) + 1))[start - 1: len(ids) - 1]
    assert torch.allclose(share.double(), expected, atol=1e-5)
    # the first inserted clip raises the share: re-listening puts audio back in view
    pos = [i for i in range(start, len(ids)) if ids[i] == aid]
    first = pos[0]
    last = next(i for i in pos if i + 1 not in pos)
    assert share[last - start + 1] > share[first - start] + 0.01
    assert model.config._attn_implementation != "eager"  # restored after the measurement


def test_eager_attention_is_restored(tiny_tokenizer):
    model = build_tiny_thinker(tiny_tokenizer, get_preset("tiny").model)
    before = model.config._attn_implementation
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == before


def test_response_start_is_checked(tiny_model):
    with pytest.raises(AttentionError, match="response_start"):
        response_audio_share(tiny_model, torch.ones(1, 5, dtype=torch.long), 9, 3)


def test_text_steps_skip_inserted_clips_and_fraction_is_the_uniform_share(tiny_tokenizer):
    from echo_lite.attention import audio_fraction, text_steps
    from echo_lite.config import AUDIO_BOS, AUDIO_EOS, AUDIO_PAD

    ids_ = [tiny_tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS)]
    bos, pad, eos = ids_
    seq = torch.tensor([[5, bos, pad, pad, eos, 7, 8, bos, pad, eos, 9]])
    steps = text_steps(seq, 5, ids_)  # response = [7, 8, bos, pad, eos, 9]
    assert steps.tolist() == [True, True, False, False, False, True]
    frac = audio_fraction(seq, 5, pad)  # queries at positions 4..9: pads seen / tokens seen
    assert torch.allclose(frac, torch.tensor([2 / 5, 2 / 6, 2 / 7, 2 / 8, 3 / 9, 3 / 10]))
