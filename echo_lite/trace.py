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
                   temperature: float | None = None, pad_id: int = 0) -> TraceLogprobs:
    """ONE teacher-forced forward over prompt + completion (with every clip's features)
    of all `traces`; returns the sampled tokens' log-probs and the masks.

    Gradients flow when enabled (GRPO's policy forward); `temperature` defaults to each
    trace's own. Rows are right-padded; positions are counted per row.
    """
    if not traces:
        raise ValueError("trace_logprobs needs at least one trace")
    thinker = unwrap_thinker(model)
    dev = thinker.lm_head.weight.device
    seqs = [t.prompt_ids + t.completion_ids for t in traces]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
    ids, attn = ids.to(dev), attn.to(dev)
    featurizer = featurizer or AudioFeaturizer(thinker.config.audio_config.num_mel_bins)
    clips = [c for t in traces for c in t.clips()]
    audio = encode_audio(thinker, featurizer(clips)) if clips else None
    emb = embed_with_audio(thinker, ids, audio)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    hidden = thinker.model(inputs_embeds=emb, attention_mask=attn, position_ids=mrope_positions(pos),
                           use_cache=False, return_dict=True).last_hidden_state
    T = max(len(t.completion_ids) for t in traces)
    inserted = torch.zeros((len(traces), T), dtype=torch.bool, device=dev)
    complete = torch.zeros((len(traces), T), dtype=torch.bool, device=dev)
    rows = []
    for i, t in enumerate(traces):  # one row at a time: (T, vocab) logits stay small for real vocabularies
        p, c = len(t.prompt_ids), len(t.completion_ids)
        temp = temperature if temperature is not None else t.temperature
        logits = thinker.lm_head(hidden[i, p - 1:p + c - 1]).float() / temp
        tok = torch.tensor(t.completion_ids, device=dev)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, tok[:, None])[:, 0]
        mask = torch.tensor(t.inserted_mask, dtype=torch.bool, device=dev)
        rows.append(torch.nn.functional.pad(lp.masked_fill(mask, 0.0), (0, T - c)))
        inserted[i, :c] = mask
        complete[i, :c] = True
    out = torch.stack(rows)
    return TraceLogprobs(logprobs=out, sampled_mask=complete & ~inserted, inserted_mask=inserted,
                         completion_mask=complete)


def policy_text(trace: Trace, tokenizer) -> str:
    """What the policy wrote: the completion without the runtime's inserted audio and the end token."""
    ids = [i for i, inserted in zip(trace.completion_ids, trace.inserted_mask) if not inserted]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return text[: -len(IM_END)] if text.endswith(IM_END) else text
