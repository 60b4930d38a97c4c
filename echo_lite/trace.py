"""The Trace of one interleaved answer, and the teacher-forced forward over Traces.

A Trace holds everything an answer was made of: the prompt and completion token ids
(sampled ids are the truth, text is never re-tokenized), a mask of the tokens the
runtime inserted (`<|audio_bos|>` + audio pads + `<|audio_eos|>`, not the policy's
actions), the log-prob of every sampled token as recorded while sampling, each
`<seg>` request with what the runtime did with it, the spans of every clip the model
heard (enough to rebuild the clips' features from the waveform), and timings.

`trace_logprobs` runs ONE forward over prompt + completion with every clip's features
and returns the sampled tokens' log-probs: they equal the recorded ones (the contract
GRPO relies on; tested).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from echo_lite.audio import AudioFeaturizer, cut_span
from echo_lite.config import IM_END, SAMPLE_RATE


class RuntimeReject(str, enum.Enum):
    """Why a valid `<seg>` request was still not turned into inserted audio."""

    NOT_INSERTED = "not_inserted"  # mode `tags_only`: valid, left as text by design
    NO_ORACLE_SPAN = "no_oracle_span"  # mode `oracle_segment`: the item has fewer annotated spans
    OVER_BUDGET = "over_budget"  # the clip would use up the token budget (when audio counts)
    CONTEXT_FULL = "context_full"  # the clip would not fit in the model's context


@dataclass
class SegmentRecord:
    """One closed `<seg>` tag and the runtime's decision about it."""

    index: int  # order among the answer's closed tags
    raw: str  # the tag as written
    after_token: int  # completion index of the token that closed the tag
    requested: tuple[float, float] | None  # the times the model wrote (None if unparseable)
    applied: tuple[float, float] | None  # the span whose audio was (or, tags_only, would be) inserted
    source: str  # "model", "random" or "oracle": where `applied` came from
    reason: str | None = None  # a SegmentReject / RuntimeReject value; None when inserted
    clip_samples: int = 0
    audio_tokens: int = 0

    @property
    def inserted(self) -> bool:
        return self.reason is None


@dataclass
class Trace:
    """One answer: ids, the inserted-token mask, log-probs, segments, clips, timings."""

    mode: str
    prompt_ids: list[int]
    completion_ids: list[int]
    inserted_mask: list[bool]  # True = inserted by the runtime (no log-prob, no advantage)
    logprobs: list[float]  # log p(sampled token) at `temperature`; 0.0 at inserted positions
    segments: list[SegmentRecord]
    audio_spans: list[tuple[float, float]]  # every clip heard, in order: the prompt clip, then inserts
    temperature: float  # log-probs are log_softmax(logits / temperature); 1.0 for greedy
    finish_reason: str  # "stop" (end token), "length" (budget) or "context" (model's context)
    text: str = ""  # decoded completion, special tokens kept
    backend: str = "transformers"  # which runtime produced it ("transformers" or "vllm")
    seed: int = 0
    query_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # phase seconds of the run (batch) it was part of
    wav: np.ndarray | None = field(default=None, repr=False, compare=False)  # raw waveform, not serialised

    def __post_init__(self):
        n = len(self.completion_ids)
        if len(self.inserted_mask) != n or len(self.logprobs) != n:
            raise ValueError(f"trace {self.query_id!r}: completion has {n} ids but {len(self.inserted_mask)} "
                             f"mask entries and {len(self.logprobs)} log-probs")

    @property
    def n_relistens(self) -> int:
        return sum(s.inserted for s in self.segments)

    @property
    def n_generated(self) -> int:
        return sum(not m for m in self.inserted_mask)

    def clips(self) -> list[np.ndarray]:
        """The waveforms of every clip the model heard, rebuilt from the raw audio."""
        if self.wav is None:
            raise ValueError(f"trace {self.query_id!r} carries no waveform: pass wav= to Trace.from_dict")
        return [cut_span(self.wav, a, b) for a, b in self.audio_spans]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("wav")
        return d

    @classmethod
    def from_dict(cls, d: dict, wav: np.ndarray | None = None) -> "Trace":
        d = dict(d)
        d["segments"] = [SegmentRecord(**{**s, "requested": _span(s["requested"]), "applied": _span(s["applied"])})
                         for s in d["segments"]]
        d["audio_spans"] = [tuple(s) for s in d["audio_spans"]]
        return cls(**d, wav=wav)


def format_trace(trace: Trace) -> str:
    """A plain-text report: the answer, one row per `<seg>` request, and the timings."""
    def span(s):
        return "-" if s is None else f"{s[0]:.2f}-{s[1]:.2f} s"

    lines = [f"mode {trace.mode} ({trace.backend}), finish: {trace.finish_reason}, "
             f"{trace.n_generated} generated + {len(trace.completion_ids) - trace.n_generated} inserted tokens, "
             f"{trace.n_relistens} re-listen(s)", "", trace.text, ""]
    if trace.segments:
        lines.append(f"{'#':>2}  {'requested':<14}{'applied':<14}{'source':<8}{'audio tok':>9}  outcome")
        for s in trace.segments:
            outcome = "inserted" if s.inserted else s.reason
            lines.append(f"{s.index:>2}  {span(s.requested):<14}{span(s.applied):<14}{s.source:<8}"
                         f"{s.audio_tokens:>9}  {outcome}")
        lines.append("")
    lines.append("timings: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in trace.timings.items()))
    return "\n".join(lines)


def _span(s):
    return None if s is None else (float(s[0]), float(s[1]))


def full_clip_span(wav: np.ndarray) -> tuple[float, float]:
    return (0.0, len(wav) / SAMPLE_RATE)


# --------------------------------------------------------------------------------------
# Model plumbing shared by the runtime and the teacher-forced forward.
# --------------------------------------------------------------------------------------
def unwrap_thinker(model):
    """The thinker under a PEFT wrapper (LoRA layers are injected in place, so they apply)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def encode_audio(thinker, feats: dict) -> torch.Tensor:
    """Audio-tower outputs for a batch of clips, concatenated in order: (sum of tokens, hidden)."""
    tower_dtype = next(thinker.audio_tower.parameters()).dtype
    dev = thinker.lm_head.weight.device
    return thinker.get_audio_features(
        feats["input_features"].to(dev, tower_dtype), feats["feature_attention_mask"].to(dev), return_dict=True,
    ).last_hidden_state


def embed_with_audio(thinker, input_ids: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings with the audio outputs scattered into the `<|AUDIO|>` positions.

    The same scatter the thinker's forward does (row-major order), done here so that the
    runtime can time the audio tower and feed `inputs_embeds` with its own cache.
    """
    emb = thinker.get_input_embeddings()(input_ids)
    slots = input_ids == thinker.config.audio_token_id
    n_slots = int(slots.sum())
    n_audio = 0 if audio is None else audio.shape[0]
    if n_slots != n_audio:
        raise ValueError(f"{n_slots} audio placeholder(s) in the input but {n_audio} audio token(s) encoded")
    if n_audio:
        emb = emb.masked_scatter(slots[..., None], audio.to(emb.dtype))
    return emb


def mrope_positions(positions: torch.Tensor) -> torch.Tensor:
    """(B, L) positions -> the thinker's (3, B, L) TMRoPE ids: audio and text get plain
    sequential positions, so the three rows are equal (STACK_NOTES.md)."""
    return positions.unsqueeze(0).expand(3, -1, -1)


@dataclass
class TraceLogprobs:
    """Per-completion-token tensors, (B, T) right-padded to the longest completion."""

    logprobs: torch.Tensor  # log p(token) at the trace's temperature; 0 where not sampled
    sampled_mask: torch.Tensor  # True at tokens the policy sampled (loss positions)
    inserted_mask: torch.Tensor  # True at tokens the runtime inserted
    completion_mask: torch.Tensor  # True at every real completion position


def trace_logprobs(model, traces: list[Trace], featurizer: AudioFeaturizer | None = None,
                   temperature: float | None = None, pad_id: int = 0,
                   share_prompts: bool = True) -> TraceLogprobs:
    """The teacher-forced forward over prompt + completion (with every clip's features) of
    all `traces`; returns the sampled tokens' log-probs and the masks.

    Gradients flow when enabled (GRPO's policy forward); `temperature` defaults to each
    trace's own. With `share_prompts`, traces of one prompt (GRPO's G rollouts) run that
    prompt once and their completions attend to its KV cache, gradients flowing back
    through it: the same log-probs as one forward over every full sequence, at a fraction
    of the work (the prompt's audio is most of each sequence). Gradient checkpointing
    cannot keep a cache, so it takes the one-forward path.
    """
    if not traces:
        raise ValueError("trace_logprobs needs at least one trace")
    thinker = unwrap_thinker(model)
    dev = thinker.lm_head.weight.device
    featurizer = featurizer or AudioFeaturizer(thinker.config.audio_config.num_mel_bins)
    checkpointing = getattr(thinker.model, "gradient_checkpointing", False) and torch.is_grad_enabled()
    if share_prompts and not checkpointing:
        states = _shared_prompt_states(thinker, traces, featurizer, dev)
    else:
        states = _full_sequence_states(thinker, traces, featurizer, dev, pad_id)
    T = max(len(t.completion_ids) for t in traces)
    inserted = torch.zeros((len(traces), T), dtype=torch.bool, device=dev)
    complete = torch.zeros((len(traces), T), dtype=torch.bool, device=dev)
    rows = []
    for i, (t, h) in enumerate(zip(traces, states, strict=True)):  # one row at a time: (T, vocab) logits stay small
        c = len(t.completion_ids)
        temp = temperature if temperature is not None else t.temperature
        logits = thinker.lm_head(h).float() / temp
        tok = torch.tensor(t.completion_ids, device=dev)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, tok[:, None])[:, 0]
        mask = torch.tensor(t.inserted_mask, dtype=torch.bool, device=dev)
        rows.append(torch.nn.functional.pad(lp.masked_fill(mask, 0.0), (0, T - c)))
        inserted[i, :c] = mask
        complete[i, :c] = True
    out = torch.stack(rows)
    return TraceLogprobs(logprobs=out, sampled_mask=complete & ~inserted, inserted_mask=inserted,
                         completion_mask=complete)


def _full_sequence_states(thinker, traces: list[Trace], featurizer, dev, pad_id: int) -> list[torch.Tensor]:
    """One forward over every right-padded prompt + completion; per trace, the hidden states
    that predict its completion tokens (positions p-1 .. p+c-2)."""
    seqs = [t.prompt_ids + t.completion_ids for t in traces]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
    ids, attn = ids.to(dev), attn.to(dev)
    clips = [c for t in traces for c in t.clips()]
    audio = encode_audio(thinker, featurizer(clips)) if clips else None
    emb = embed_with_audio(thinker, ids, audio)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    hidden = thinker.model(inputs_embeds=emb, attention_mask=attn, position_ids=mrope_positions(pos),
                           use_cache=False, return_dict=True).last_hidden_state
    return [hidden[i, len(t.prompt_ids) - 1:len(s) - 1] for i, (t, s) in enumerate(zip(traces, seqs, strict=True))]


def _prompt_key(t: Trace, n_clips: int) -> tuple:
    """Traces with equal keys have the same prompt: same ids, same clips cut from the same audio."""
    audio = None  # a trace without its waveform: Trace.clips() names the problem if a clip is needed
    if t.wav is not None:
        wav = np.ascontiguousarray(t.wav)
        audio = (wav.shape, hashlib.blake2b(wav.tobytes(), digest_size=16).digest())
    return (tuple(t.prompt_ids), tuple(map(tuple, t.audio_spans[:n_clips])), audio)


def _shared_prompt_states(thinker, traces: list[Trace], featurizer, dev) -> list[torch.Tensor]:
    """Each distinct prompt runs once (batch 1, no padding); every completion then runs on a
    copy of its prompt's cache, left-padded to the longest prompt (keys carry their rotary
    positions, so where a slot sits does not matter; the mask hides the padding)."""
    from transformers import DynamicCache

    bos = thinker.config.audio_start_token_id
    n_prompt_clips = [t.prompt_ids.count(bos) for t in traces]
    keys = [_prompt_key(t, n) for t, n in zip(traces, n_prompt_clips, strict=True)]
    first: dict = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    caches, last_states = {}, {}
    for k, i in first.items():
        t, n = traces[i], n_prompt_clips[i]
        ids = torch.tensor([t.prompt_ids], device=dev)
        audio = encode_audio(thinker, featurizer(t.clips()[:n])) if n else None
        cache = DynamicCache()
        out = thinker.model(inputs_embeds=embed_with_audio(thinker, ids, audio),
                            position_ids=mrope_positions(torch.arange(ids.shape[1], device=dev)[None]),
                            past_key_values=cache, use_cache=True, return_dict=True)
        caches[k] = [(layer.keys, layer.values) for layer in cache.layers]
        last_states[k] = out.last_hidden_state[0, -1:]
    P = max(len(t.prompt_ids) for t in traces)
    C = max(len(t.completion_ids) for t in traces) - 1  # the last completion token predicts nothing
    if C <= 0:
        return [last_states[k][:len(t.completion_ids)] for t, k in zip(traces, keys, strict=True)]
    n_layers = len(next(iter(caches.values())))
    layer_kv = [([], []) for _ in range(n_layers)]
    ids = torch.zeros((len(traces), C), dtype=torch.long, device=dev)
    attn = torch.zeros((len(traces), P + C), dtype=torch.long, device=dev)
    pos = torch.zeros((len(traces), C), dtype=torch.long, device=dev)
    clips = []
    for i, (t, k, n) in enumerate(zip(traces, keys, n_prompt_clips, strict=True)):
        p, c = len(t.prompt_ids), len(t.completion_ids) - 1
        for li, (kk, vv) in enumerate(caches[k]):
            layer_kv[li][0].append(torch.nn.functional.pad(kk, (0, 0, P - p, 0)))
            layer_kv[li][1].append(torch.nn.functional.pad(vv, (0, 0, P - p, 0)))
        ids[i, :c] = torch.tensor(t.completion_ids[:c], device=dev)
        attn[i, P - p:P + c] = 1
        pos[i, :c] = torch.arange(p, p + c, device=dev)
        clips += t.clips()[n:]  # every inserted clip: a completion ends in text, never mid-clip
    cache = DynamicCache()
    for li, (kk, vv) in enumerate(layer_kv):
        cache.update(torch.cat(kk), torch.cat(vv), li)
    audio = encode_audio(thinker, featurizer(clips)) if clips else None
    hidden = thinker.model(inputs_embeds=embed_with_audio(thinker, ids, audio), attention_mask=attn,
                           position_ids=mrope_positions(pos), past_key_values=cache, use_cache=True,
                           return_dict=True).last_hidden_state
    return [torch.cat([last_states[k], hidden[i, :len(t.completion_ids) - 1]])
            for i, (t, k) in enumerate(zip(traces, keys, strict=True))]


def policy_text(trace: Trace, tokenizer) -> str:
    """What the policy wrote: the completion without the runtime's inserted audio and the end token."""
    ids = [i for i, inserted in zip(trace.completion_ids, trace.inserted_mask) if not inserted]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return text[: -len(IM_END)] if text.endswith(IM_END) else text
