"""How much a thinker still looks at the audio while it writes: the audio-attention share.

The paper's motivating measurement (ECHO_METHOD.md section 1): at each decoding step,
the share of attention mass that falls on audio tokens, averaged over layers and heads;
with one-pass encoding it drops below 5 % after about 25 steps. Decoding is causal, so
one teacher-forced forward over prompt + response gives the attention of every step at
once: step i (the i-th response token) is predicted by the query at position
`response_start + i - 1`. The softmax weights need `attn_implementation="eager"`
(SDPA does not return them).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from echo_lite.config import AUDIO_PAD


class AttentionError(ValueError):
    """Attention weights that cannot be read as asked; the message says why."""


def audio_share(attentions: Sequence[torch.Tensor], audio_mask: torch.Tensor) -> torch.Tensor:
    """(B, Q) share of each query's attention on audio keys, averaged over layers and heads.

    attentions: one (B, H, Q, K) tensor per layer (softmax weights; rows sum to 1 over the
    visible keys). audio_mask: (B, K) bool, True on audio-token keys.
    """
    if not attentions:
        raise AttentionError("no attention tensors: run the model with output_attentions=True and eager attention")
    shares = []
    for i, a in enumerate(attentions):
        if a is None:
            raise AttentionError(f"layer {i} returned no attention weights (use attn_implementation='eager')")
        if a.dim() != 4 or a.shape[0] != audio_mask.shape[0] or a.shape[-1] != audio_mask.shape[-1]:
            raise AttentionError(f"layer {i}: attention of shape {tuple(a.shape)} does not match the audio mask "
                                 f"{tuple(audio_mask.shape)} (want (B, H, Q, K) with the same B and K)")
        a = a.float()
        on_audio = (a * audio_mask[:, None, None, :].to(a.dtype)).sum(-1)
        shares.append(on_audio / a.sum(-1).clamp_min(1e-12))  # (B, H, Q)
    return torch.stack(shares).mean(dim=(0, 2))


@contextmanager
def eager_attention(model):
    """Switch a model to eager attention (weights returned) for the duration of a block."""
    before = getattr(model.config, "_attn_implementation", None)
    if before == "eager":
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(before or "sdpa")


@torch.no_grad()
def response_audio_share(model, input_ids: torch.Tensor, response_start: int, audio_token_id: int,
                         **model_inputs) -> torch.Tensor:
    """Audio share at each decoding step of one response, shape (n_steps,).

    input_ids: (1, T) prompt + response; response_start: index of the first response token.
    Extra inputs (input_features, feature_attention_mask, attention_mask) go to the model.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise AttentionError(f"input_ids must be (1, T), got {tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    if not 0 < response_start < T:
        raise AttentionError(f"response_start {response_start} must lie inside the sequence (1..{T - 1})")
    was_training = model.training
    model.eval()
    with eager_attention(model):
        out = model(input_ids=input_ids, output_attentions=True, **model_inputs)
    model.train(was_training)
    attn = [a for a in out.attentions if a is not None and a.shape[-1] == T]  # the language model's layers
    share = audio_share(attn, input_ids == audio_token_id)[0]
    return share[response_start - 1: T - 1]


def audio_token_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(AUDIO_PAD)


def text_steps(input_ids: torch.Tensor, response_start: int, audio_ids: Sequence[int]) -> torch.Tensor:
    """(n_steps,) bool: the response steps that generate text. Inserted clips (their bos, pads and
    eos) are written by the runtime, not decoded, so a per-step curve skips them."""
    nxt = input_ids[0, response_start:]
    return ~torch.isin(nxt, torch.tensor(list(audio_ids), device=nxt.device))


def audio_fraction(input_ids: torch.Tensor, response_start: int, audio_token_id: int) -> torch.Tensor:
    """(n_steps,) the share that uniform attention would put on audio at each step: the audio
    tokens' fraction of the visible context (a reference for `response_audio_share`)."""
    is_audio = (input_ids[0] == audio_token_id).double()
    frac = is_audio.cumsum(0) / torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    return frac[response_start - 1: input_ids.shape[1] - 1].float()
