"""One decoding step of the thinker's text model, written out: a token a row against the kept cache.

Why our own: at decode time transformers' text-model forward spends part of every step on
generic work around the maths (rotary tables for three M-RoPE rows, mask building,
attention dispatch, keyword plumbing through every layer), and the runtime decodes one
token at a time for every answer. On the tiny preset a step took 1.40 ms through
transformers and 1.06 ms here (CPU, one thread, side by side). This step does the same
maths in the same order with the model's own submodules (so LoRA layers, dtypes and
devices work unchanged) and appends to the same cache (`growing_cache`), so prefill,
clip insertion and teacher forcing stay transformers' (tests/test_decode_step.py checks
the hidden states equal transformers' forward, with and without masked cache slots and LoRA).
The runtime runs it on `lean_decode_weights` (the same weights laid out for fewer, larger
ops) whenever the projections are plain `nn.Linear`: 0.29 ms against 0.48 ms a step on
the modules (tiny base, 600 cached tokens).

Scope, checked by `supports_lean_decode`: Qwen2.5-Omni text blocks without sliding
windows and with default rotary embeddings. The runtime's positions are sequential
for audio and text alike, so the three M-RoPE rows are equal and M-RoPE reduces to
plain RoPE (STACK_NOTES.md). Anything else (or weights sharded by DeepSpeed ZeRO-3)
falls back to transformers' forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def supports_lean_decode(text_model) -> bool:
    """True when `lean_decode_step` computes exactly what `text_model.forward` does."""
    cfg = text_model.config
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default" or getattr(cfg, "use_sliding_window", False):
        return False
    if any(hasattr(p, "ds_id") for p in text_model.parameters()):  # ZeRO-3 shards: let its hooks gather
        return False
    needed = ("q_proj", "k_proj", "v_proj", "o_proj")
    return all(all(hasattr(layer.self_attn, n) for n in needed) and hasattr(layer, "mlp")
               for layer in text_model.layers)


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op; in half precision the module's own float32 upcast is kept
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
    return norm(x)


@functools.cache
def _half_swap(head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """P with x @ P == rotate_half(x) = cat(-x2, x1) (a signed permutation, built once).

    Built outside inference mode: the runtime's first call is inside it, and an inference
    tensor kept in the cache could not be used later where autograd records the product."""
    h = head_dim // 2
    with torch.inference_mode(False):
        p = torch.zeros((head_dim, head_dim), dtype=dtype, device=device)
        idx = torch.arange(h, device=device)
        p[idx + h, idx] = -1.0
        p[idx, idx + h] = 1.0
    return p


def _rotate_half_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows (or bias entries) whose output is rotate_half of `w`'s output, head by head."""
    h = head_dim // 2
    per_head = w.reshape(-1, head_dim, *w.shape[1:])
    return torch.cat((-per_head[:, h:], per_head[:, :h]), dim=1).reshape(w.shape)


def _bias(linear: torch.nn.Linear) -> torch.Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _rms_as_layer_norm(x: torch.Tensor, doubled_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) as LayerNorm over [x, -x]: its mean is 0 and its variance mean(x^2).

    Why: one fused kernel. `F.rms_norm` runs as several small ops on CPU (10.7 us against
    6.4 us for a 128-wide row, one thread)."""
    d = x.shape[-1]
    return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), doubled_weight, None, eps)[..., :d]


@dataclass
class LeanWeights:
    """The text model's weights laid out for `lean_decode_step` (see `lean_decode_weights`).

    layers: per layer (input norm, q|k|rotate_half(q|k)|v weight and bias, o_proj weight
    transposed, post-attention norm, gate, up, down_proj weight transposed); norms are
    callables; rope: (max positions, 2, head_dim), cos and sin of every position.
    """

    layers: list[tuple]
    final_norm: Callable
    embed: torch.Tensor
    rope: torch.Tensor
    n_heads: int
    n_kv: int
    head_dim: int
    scaling: float


@torch.no_grad()
def lean_decode_weights(text_model) -> LeanWeights | None:
    """The weights of `text_model` arranged so that a decoding step is a few large ops.

    Why: on tiny every op of a step costs microseconds whatever its size. RoPE needs q, k
    and rotate_half(q, k): one product with [q; k; rotate_half rows; v] gives all of them
    (the rotated rows are the same weights negated and reordered), replacing four
    projections, a concatenation and a permutation product per layer; residual adds ride
    on the o/down products (addmm); cos and sin come from a table. A step took 0.29 ms
    against 0.48 ms through the modules (tiny base, 600 cached tokens, CPU, one thread,
    side by side; 0.58 against 0.95 ms with the 4 blocks of the SFT/GRPO models).
    Built again at every `generate` (training changes the weights); the extra memory is
    one [q; k; rotated q; rotated k; v] weight per layer and the rope table (about 0.7 GB
    on omni-3b in bf16: 36 layers of 4,864 x 2,048).
    None when a projection is not a plain `nn.Linear` (LoRA layers stay modules: the step
    then calls them), a bias sits where Qwen2 has none, or the MLP is not SiLU-gated.
    """
    cfg = text_model.config
    if cfg.hidden_act not in ("silu", "swish"):
        return None
    attn0 = text_model.layers[0].self_attn
    dtype = text_model.embed_tokens.weight.dtype

    def norm(module):  # float32: the one-kernel form; half precision: the module (it upcasts)
        if dtype != torch.float32:
            return module
        return functools.partial(_rms_as_layer_norm, doubled_weight=torch.cat((module.weight, module.weight)),
                                 eps=module.variance_epsilon)

    layers = []
    for layer in text_model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        projs = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in projs) or any(m.bias is not None for m in projs[3:]):
            return None
        qk_w = torch.cat((attn.q_proj.weight, attn.k_proj.weight))
        qk_b = torch.cat((_bias(attn.q_proj), _bias(attn.k_proj)))
        qkv_w = torch.cat((qk_w, _rotate_half_rows(qk_w, attn.head_dim), attn.v_proj.weight))
        qkv_b = torch.cat((qk_b, _rotate_half_rows(qk_b, attn.head_dim), _bias(attn.v_proj)))
        layers.append((norm(layer.input_layernorm), qkv_w, qkv_b, attn.o_proj.weight.t(),
                       norm(layer.post_attention_layernorm), mlp.gate_proj.weight, mlp.up_proj.weight,
                       mlp.down_proj.weight.t()))
    rot = text_model.rotary_emb
    freqs = torch.arange(cfg.max_position_embeddings, device=rot.inv_freq.device, dtype=rot.inv_freq.dtype)
    freqs = freqs[:, None] * rot.inv_freq
    ang = torch.cat((freqs, freqs), dim=-1)
    rope = torch.stack((ang.cos(), ang.sin()), dim=1) * rot.attention_scaling
    return LeanWeights(layers=layers, final_norm=norm(text_model.norm), embed=text_model.embed_tokens.weight,
                       rope=rope.to(dtype), n_heads=cfg.num_attention_heads, n_kv=cfg.num_key_value_heads,
                       head_dim=attn0.head_dim, scaling=attn0.scaling)


def _fused_step(w: LeanWeights, input_ids: torch.Tensor, positions: torch.Tensor, cache,
                key_mask: torch.Tensor | None) -> torch.Tensor:
    """`lean_decode_step` on `LeanWeights`: a Qwen2 block as plain tensor ops."""
    B, nh, nkv, hd = input_ids.shape[0], w.n_heads, w.n_kv, w.head_dim
    width = (nh + nkv) * hd  # q and k side by side
    x = F.embedding(input_ids, w.embed)  # (B, 1, hidden)
    cs = w.rope[positions]  # (B, 1, 2, head_dim); axis 1 broadcasts over heads
    cos, sin = cs[:, :, :1], cs[:, :, 1:]
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    for layer_idx, (in_norm, qkv_w, qkv_b, o_t, post_norm, gate, up, down_t) in enumerate(w.layers):
        qkv = F.linear(in_norm(x), qkv_w, qkv_b)
        # RoPE on q and k side by side, (B, heads, 1, head_dim): x * cos + rotate_half(x) * sin
        qk = torch.addcmul(qkv[..., :width].view(B, nh + nkv, 1, hd) * cos,
                           qkv[..., width:2 * width].view(B, nh + nkv, 1, hd), sin)
        keys, values = cache.update(qk[:, nh:], qkv[..., 2 * width:].view(B, 1, nkv, hd).transpose(1, 2), layer_idx)
        # One query token: the query heads sharing a key/value head become its rows (GQA without
        # expanding keys and values; heads grouped consecutively, as repeat_kv does)
        o = F.scaled_dot_product_attention(qk[:, :nh].reshape(B, nkv, nh // nkv, hd), keys, values,
                                           attn_mask=mask, scale=w.scaling)
        x = torch.addmm(x.view(B, -1), o.reshape(B, nh * hd), o_t).view(B, 1, -1)
        h = post_norm(x)
        x = torch.addmm(x.view(B, -1), (F.silu(F.linear(h, gate)) * F.linear(h, up)).view(B, -1), down_t)
        x = x.view(B, 1, -1)
    return w.final_norm(x)


def lean_decode_step(text_model, input_ids: torch.Tensor, positions: torch.Tensor, cache,
                     key_mask: torch.Tensor | None = None, weights: LeanWeights | None = None) -> torch.Tensor:
    """Hidden states (B, 1, hidden) after the final norm for one new token per row.

    input_ids, positions: (B, 1); cache: a `DynamicCache` holding every earlier token (it
    gets this token's keys and values); key_mask: (B, cached + 1), 1 at real slots, or
    None when every slot is real; weights: `lean_decode_weights(text_model)` for the fused
    form, or None to call the model's modules (LoRA layers, any model the fused form
    does not cover).
    """
    if weights is not None:
        return _fused_step(weights, input_ids, positions, cache, key_mask)
    cfg = text_model.config
    B = input_ids.shape[0]
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    rot = text_model.rotary_emb
    freqs = positions.to(rot.inv_freq.dtype)[:, :, None] * rot.inv_freq  # (B, 1, head_dim / 2)
    ang = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1 head axis, 1, head_dim)
    x = text_model.embed_tokens(input_ids)
    cos = (ang.cos() * rot.attention_scaling).to(x.dtype)
    sin = (ang.sin() * rot.attention_scaling).to(x.dtype)
    swap = _half_swap(head_dim, x.dtype, x.device)
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    for layer_idx, layer in enumerate(text_model.layers):
        attn = layer.self_attn
        h = _rms_norm(layer.input_layernorm, x)
        # RoPE on q and k side by side: (B, heads, 1, head_dim); rotate_half as one product with a
        # fixed signed permutation (exact), instead of chunk, neg and cat on each tensor
        qk = torch.cat((attn.q_proj(h), attn.k_proj(h)), dim=-1).view(B, n_heads + n_kv, 1, head_dim)
        qk = qk * cos + (qk @ swap) * sin
        q, k = qk[:, :n_heads], qk[:, n_heads:]
        v = attn.v_proj(h).view(B, 1, n_kv, head_dim).transpose(1, 2)
        keys, values = cache.update(k, v, layer_idx)
        # One query token: the query heads that share a key/value head become that head's rows
        # of queries, so attention runs without expanding keys and values (GQA; 20 % faster
        # than enable_gqa at 16 rows on CPU). Heads are grouped consecutively, as repeat_kv does.
        o = F.scaled_dot_product_attention(q.reshape(B, n_kv, n_heads // n_kv, head_dim), keys, values,
                                           attn_mask=mask, scale=attn.scaling)
        x = x + attn.o_proj(o.reshape(B, 1, n_heads * head_dim))
        h = _rms_norm(layer.post_attention_layernorm, x)
        x = x + layer.mlp(h)
    return _rms_norm(text_model.norm, x)


def growing_cache():
    """A `DynamicCache` whose layers append into buffers that double when full.

    Why: `DynamicLayer.update` concatenates, copying the whole cache at every decoding step.
    With 16 rows of ~900 slots that was 15 % of a batched answer on tiny (CPU profile); here
    a step writes its own slots only. `keys`/`values` read as plain tensors (views of the
    filled part); assigning them (as `copy_cache_row` does) replaces the buffer, `update`
    (as `merge_rows` uses it for a sub-batch's chunk) appends in place, and `repack` (what
    `compact_cache` calls) moves rows and slots within it.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer_class()
    return cache


@functools.cache  # one class per process (transformers is imported only when a cache is made)
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self):
            self._buf = {"keys": None, "values": None}
            self._len = {"keys": 0, "values": 0}  # each its own: copy_cache_row assigns one, then reads the other
            super().__init__()

        def _get(self, name):
            t = self._buf[name]
            return t if t is None or t.dim() != 4 else t[:, :, : self._len[name]]

        def _set(self, name, value):
            self._buf[name] = value
            self._len[name] = value.shape[-2] if value is not None and value.dim() == 4 else 0

        keys = property(lambda self: self._get("keys"), lambda self, v: self._set("keys", v))
        values = property(lambda self: self._get("values"), lambda self, v: self._set("values", v))

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            filled = []
            for name, new in (("keys", key_states), ("values", value_states)):
                buf, n, add = self._buf[name], self._len[name], new.shape[-2]
                if buf.dim() != 4 or n + add > buf.shape[-2]:
                    grown = new.new_empty((*new.shape[:2], max(64, 2 * (n + add)), new.shape[-1]))
                    if n:
                        grown[:, :, :n] = buf[:, :, :n]
                    self._buf[name] = buf = grown
                buf[:, :, n:n + add] = new
                self._len[name] = n + add
                filled.append(buf[:, :, :n + add])  # what self.keys / self.values read, without the property
            return filled[0], filled[1]

        def repack(self, rows: list[tuple[int, torch.Tensor]], n: int) -> None:
            """Keep only `rows` (old row, slot order), each row's `n` slots `order` moved to the front,
            in the buffers themselves: a new tensor would fill exactly and the next `update` would
            copy it into a buffer twice its size. Rows only move up (old row >= new row), and each
            is read whole before it is written, so nothing is overwritten before it is read. The
            dropped rows' memory is given back at the next growth."""
            for name in ("keys", "values"):
                buf = self._buf[name]
                # A row at a time: 3x faster than one gather with an index expanded over heads and dims (CPU).
                for j, (i, order) in enumerate(rows):
                    buf[j, :, :n] = buf[i].index_select(1, order)
                self._buf[name], self._len[name] = buf[: len(rows)], n

    return GrowingLayer
