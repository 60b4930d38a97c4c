"""The interleaved runtime: pause at `</seg>`, re-listen, resume from the kept KV cache.

While the model reasons, every closed `<seg>s, e</seg>` makes the runtime validate the
span, cut it from the raw waveform, encode ONLY that new clip, append
`<|audio_bos|>` + its audio tokens + `<|audio_eos|>` to the reasoning and go on from the
cache it kept (ECHO_METHOD.md section 2). The authors' runtime instead re-prefills the
whole context at every pause; `cache="reprefill"` does exactly that, as the baseline
that resume must equal token for token (tested) and beat in time (benchmarks/).

Many trajectories run at once: our own decode loop (model forward with a cache and HF
logits processors) rather than `generate()`, because rows pause at different times and
`generate()` cannot insert tokens and features into one row mid-run. A step either
decodes one token for every row, or feeds the rows that are resuming their chunk (last
token + the inserted clip, or the prompt; shorter chunks left-padded with masked positions;
at most `RuntimeSpec.chunk_rows` rows at once) while the other rows wait that step. The KV
cache is re-packed when the masked holes pile up and when finished rows leave the batch.
Rows with the same question about the same clip (a GRPO group) compute their prompt once:
the others copy its cache row, as vLLM's prefix caching would; rows with another question
about that clip copy the part through the clip and feed only their own question.

Modes (the paper's controls): `one_pass` (plain CoT, `<seg>` banned), `tags_only`
(tags written and judged, nothing inserted), `interleaved`, `random_segment` (a span of
the same length elsewhere, seeded), `oracle_segment` (the item's i-th annotated span
for its i-th valid tag). Everything ends in a `Trace` (trace.py); the vLLM backend
(interleave_vllm.py) shares `InterleaveRuntime` and gives the same Traces.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from echo_lite.audio import AudioFeaturizer, audio_token_count, cut_span
from echo_lite.config import (
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_PAD,
    PLACEHOLDER_TOKENS,
    RUNTIME_MODES,
    SAMPLE_RATE,
    SEG_CLOSE,
    SEG_OPEN,
    SegmentLimits,
)
from echo_lite.decode_step import growing_cache, lean_decode_step, lean_decode_weights, supports_lean_decode
from echo_lite.model import LoadedModel
from echo_lite.prompts import INSTRUCTION, build_prompt
from echo_lite.segments import SegmentReject, parse_segments, validate_segment
from echo_lite.trace import (
    RuntimeReject,
    SegmentRecord,
    Trace,
    embed_with_audio,
    encode_audio,
    full_clip_span,
    mrope_positions,
    unwrap_thinker,
)

MODES = RUNTIME_MODES
CACHE_MODES = ("resume", "reprefill")

# transformers' sdpa path repeats every K/V head for its query group whenever a padding mask
# is passed (only mask-free calls use torch's `enable_gqa`): a copy of the whole cache per
# layer and step. Batched decoding always has a mask (rows of different lengths), so on CPU
# the runtime hands grouped heads to torch as they are: at batch 16, 900 keys, 4 query / 2
# K/V heads, 0.86 ms a call instead of 3.6-4.0 ms, the same output (measured).
GQA_SDPA = "echo_sdpa_gqa"


def sdpa_grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is None or getattr(module, "num_key_value_groups", 1) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


@functools.cache  # once a process: registering is idempotent, but the lookups need not repeat
def _register_gqa_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(GQA_SDPA, sdpa_grouped_attention)
    AttentionMaskInterface.register(GQA_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextmanager
def grouped_kv_attention(thinker):
    """Run the text model with `sdpa_grouped_attention` inside the block (CPU, sdpa models only)."""
    cfg = thinker.model.config
    if cfg._attn_implementation != "sdpa" or thinker.lm_head.weight.device.type != "cpu":
        yield
        return
    _register_gqa_sdpa()
    cfg._attn_implementation = GQA_SDPA
    try:
        yield
    finally:
        cfg._attn_implementation = "sdpa"


class RuntimeInputError(ValueError):
    """Bad input to the runtime; the message names the input and what is wrong."""


@dataclass
class Query:
    """One question over one clip. `decisive_spans` (seconds) feed `oracle_segment`."""

    wav: np.ndarray
    question: str
    choices: Sequence[str] | None = None
    decisive_spans: Sequence[tuple[float, float]] = ()
    instruction: str | None = INSTRUCTION
    id: str | None = None

    def __post_init__(self):
        name = f"query {self.id!r}" if self.id is not None else "query"
        wav = np.asarray(self.wav)
        if wav.ndim != 1 or not np.issubdtype(wav.dtype, np.number):
            raise RuntimeInputError(f"{name}: wav must be a 1-D array of samples at {SAMPLE_RATE} Hz, "
                                    f"got shape {wav.shape} of {wav.dtype}")
        if not np.isfinite(wav).all():
            raise RuntimeInputError(f"{name}: wav has NaN or infinite samples")
        if audio_token_count(len(wav)) < 1:
            raise RuntimeInputError(f"{name}: wav of {len(wav)} samples is too short to yield an audio token")
        self.wav = wav.astype(np.float32, copy=False)
        for s in self.decisive_spans:
            if len(s) != 2:
                raise RuntimeInputError(f"{name}: decisive span {s!r} is not a (start, end) pair")


@dataclass
class _Row:
    """The state of one trajectory while it is being generated."""

    query: Query
    seed: int
    prompt_ids: list[int]
    forced: list[int]
    gen: torch.Generator | None
    completion: list[int] = field(default_factory=list)
    inserted: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    segments: list[SegmentRecord] = field(default_factory=list)
    clips: list[np.ndarray] = field(default_factory=list)  # every clip heard, the prompt clip first
    spans: list[tuple[float, float]] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)  # not yet fed to the model
    pending_clips: list[np.ndarray] = field(default_factory=list)
    next_pos: int = 0  # position of the next token fed (= real tokens in the cache)
    n_text: int = 0  # sampled tokens
    n_inserted: int = 0  # runtime-inserted tokens
    n_clips: int = 0  # valid tags that were (or in tags_only would have been) inserted
    seg_from: int = 0  # completion index after the last closed tag: where the next tag is looked for
    finish: str | None = None

    @property
    def dur(self) -> float:
        return len(self.query.wav) / SAMPLE_RATE


class InterleaveRuntime:
    """What every backend shares: prompts, `<seg>` detection, decisions per mode, insertion,
    budgets and Traces. A backend implements `_run(rows)` (decode until each row ends).

    temperature: None -> the preset's eval temperature; 0 -> greedy.
    """

    backend = "none"

    def __init__(self, tokenizer, preset, mode: str = "interleaved", temperature: float | None = None,
                 top_p: float | None = None, batch_size: int | None = None, limits: SegmentLimits | None = None,
                 eos_ids: Sequence[int] = (), max_positions: int = 32768):
        if mode not in MODES:
            raise RuntimeInputError(f"mode {mode!r} is not one of {MODES}")
        self.tok, self.preset, self.mode = tokenizer, preset, mode
        self.limits = limits or preset.segments
        self.temperature = preset.sampling.eval_temperature if temperature is None else float(temperature)
        if self.temperature < 0:
            raise RuntimeInputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        self.top_p = preset.sampling.top_p if top_p is None else float(top_p)
        self.batch_size = batch_size or preset.runtime.batch_size
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDER_TOKENS}
        self.placeholder_ids = list(ids.values())
        self.bos_id, self.pad_audio_id, self.eos_audio_id = ids[AUDIO_BOS], ids[AUDIO_PAD], ids[AUDIO_EOS]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} | set(eos_ids)
        self.max_positions = max_positions
        self._closes_cache: dict[int, bool] = {}

    # ---------------------------------------------------------------- segments
    def _may_close(self, tok: int) -> bool:
        """Cheap filter: only a token whose text has `>` can complete `</seg>`."""
        if tok not in self._closes_cache:
            self._closes_cache[tok] = SEG_CLOSE[-1] in self.tok.decode([tok])
        return self._closes_cache[tok]

    def _after_token(self, r: _Row) -> None:
        """Look for tags the last token closed; decide each; queue the clips to insert."""
        text = self.tok.decode(r.completion[r.seg_from:], skip_special_tokens=False)
        closed = [t for t in parse_segments(text) if t.error is not SegmentReject.UNCLOSED]
        if not closed:
            return
        r.seg_from = len(r.completion)
        for tag in closed:
            rec, clip, span = self._decide(r, tag)
            if clip is not None:
                self._insert(r, rec, clip, span)
            r.segments.append(rec)

    def _decide(self, r: _Row, tag):
        dec = validate_segment(tag, r.dur, r.n_clips, self.limits)
        rec = SegmentRecord(index=len(r.segments), raw=tag.raw, after_token=len(r.completion) - 1,
                            requested=tag.span, applied=None, source="model")
        if not dec.accepted:
            rec.reason = dec.reason.value
            return rec, None, None
        k = r.n_clips  # this is the k-th valid tag
        r.n_clips += 1
        span = dec.applied
        if self.mode == "tags_only":
            rec.applied, rec.reason = span, RuntimeReject.NOT_INSERTED.value
            return rec, None, None
        if self.mode == "random_segment":
            rng = np.random.default_rng([r.seed, 104729, k])
            span, rec.source = random_span(r.dur, span, rng), "random"
        elif self.mode == "oracle_segment":
            rec.source = "oracle"
            if k >= len(r.query.decisive_spans):
                rec.reason = RuntimeReject.NO_ORACLE_SPAN.value
                return rec, None, None
            od = validate_segment(tuple(r.query.decisive_spans[k]), r.dur, 0, self.limits)
            if not od.accepted:
                rec.reason = od.reason.value
                return rec, None, None
            span = od.applied
        clip = cut_span(r.query.wav, *span, min_s=self.limits.min_clip_s)
        rec.applied, rec.clip_samples, rec.audio_tokens = span, len(clip), audio_token_count(len(clip))
        n_ins = rec.audio_tokens + 2
        counted = n_ins if self.limits.inserted_audio_counts_against_budget else 0
        if self._budget_used(r) + counted + 1 > self.limits.max_new_tokens:
            rec.reason = RuntimeReject.OVER_BUDGET.value  # no room left for a single token after it
        elif len(r.prompt_ids) + len(r.completion) + n_ins + 1 > self.max_positions:
            rec.reason = RuntimeReject.CONTEXT_FULL.value
        return rec, (clip if rec.reason is None else None), span

    def _insert(self, r: _Row, rec: SegmentRecord, clip: np.ndarray, span: tuple[float, float]) -> None:
        ids = [self.bos_id] + [self.pad_audio_id] * rec.audio_tokens + [self.eos_audio_id]
        r.completion += ids
        r.inserted += [True] * len(ids)
        r.logprobs += [0.0] * len(ids)
        r.pending_ids += ids
        r.pending_clips.append(clip)
        r.clips.append(clip)
        r.spans.append(span)
        r.n_inserted += len(ids)
        r.seg_from = len(r.completion)

    def _budget_used(self, r: _Row) -> int:
        return r.n_text + (r.n_inserted if self.limits.inserted_audio_counts_against_budget else 0)

    def _accept(self, r: _Row, tok: int, lp: float) -> None:
        r.completion.append(tok)
        r.inserted.append(False)
        r.logprobs.append(lp)
        r.n_text += 1
        r.pending_ids = [tok]
        if tok in self.eos_ids:
            r.finish = "stop"
            return
        if self.mode != "one_pass" and self._may_close(tok):
            self._after_token(r)
        if self._budget_used(r) >= self.limits.max_new_tokens:
            r.finish = "length"
        elif len(r.prompt_ids) + len(r.completion) >= self.max_positions:
            r.finish = "context"

    # ---------------------------------------------------------------- rows and traces
    def _new_row(self, q: Query, seed: int, forced: str | None) -> _Row:
        text = build_prompt(q.question, q.choices, [audio_token_count(len(q.wav))], instruction=q.instruction)
        prompt_ids = self.tok.encode(text, add_special_tokens=False)
        forced_ids = self.tok.encode(forced, add_special_tokens=False) if forced else []
        bad = set(forced_ids) & set(self.placeholder_ids)
        if bad:
            raise RuntimeInputError(f"forced prefix of query {q.id!r} contains placeholder token(s) "
                                    f"{self.tok.convert_ids_to_tokens(sorted(bad))}: only the runtime inserts audio")
        r = _Row(query=q, seed=int(seed), prompt_ids=prompt_ids, forced=forced_ids, gen=self._row_generator(seed))
        r.pending_ids = list(prompt_ids)
        r.pending_clips = [q.wav]
        r.clips, r.spans = [q.wav], [full_clip_span(q.wav)]
        return r

    def _row_generator(self, seed: int):
        return None

    def _run(self, rows: list[_Row]) -> dict[str, float]:
        raise NotImplementedError

    def generate(self, queries: Sequence[Query], seed: int = 0, seeds: Sequence[int] | None = None,
                 forced_prefix: str | Sequence[str | None] | None = None) -> list[Trace]:
        """One Trace per query, in order; rows run `batch_size` at a time (resume) or one by one (reprefill).

        seeds: one per query (default `seed + i`); a row's sampling and its random
        segments depend only on its own seed, so batched and one-by-one runs agree.
        forced_prefix: text the model is made to write first, token by token, through
        the same loop (every forward, pause and insertion stays real). A teaching and
        testing utility: it yields traces with chosen `<seg>` tags from any model.
        """
        queries = list(queries)
        if not queries:
            raise RuntimeInputError("generate needs at least one query")
        seeds = [seed + i for i in range(len(queries))] if seeds is None else list(seeds)
        if len(seeds) != len(queries):
            raise RuntimeInputError(f"{len(seeds)} seeds for {len(queries)} queries")
        if forced_prefix is None or isinstance(forced_prefix, str):
            forced_prefix = [forced_prefix] * len(queries)
        if len(forced_prefix) != len(queries):
            raise RuntimeInputError(f"{len(forced_prefix)} forced prefixes for {len(queries)} queries")
        if self.mode == "oracle_segment" and not any(q.decisive_spans for q in queries):
            raise RuntimeInputError("mode 'oracle_segment' needs queries with decisive_spans")
        rows = [self._new_row(q, s, f) for q, s, f in zip(queries, seeds, forced_prefix, strict=True)]
        step = self._rows_per_run()
        traces = []
        for b in range(0, len(rows), step):
            batch = rows[b:b + step]
            timings = self._run(batch)
            timings["batch_size"] = len(batch)
            traces += [self._trace(r, timings) for r in batch]
        return traces

    def _rows_per_run(self) -> int:
        return self.batch_size

    def _trace(self, r: _Row, timings: dict[str, float]) -> Trace:
        return Trace(
            mode=self.mode, backend=self.backend, prompt_ids=r.prompt_ids, completion_ids=r.completion,
            inserted_mask=r.inserted, logprobs=r.logprobs, segments=r.segments, audio_spans=r.spans,
            temperature=self.temperature if self.temperature > 0 else 1.0, finish_reason=r.finish,
            text=self.tok.decode(r.completion, skip_special_tokens=False), seed=r.seed, query_id=r.query.id,
            timings=dict(timings), wav=r.query.wav,
        )


class InterleavedGenerator(InterleaveRuntime):
    """The transformers backend: our own batched decode loop over a kept KV cache.

    cache="resume" (default) keeps the cache across pauses and feeds only the new clip;
    cache="reprefill" rebuilds it from the whole context at every pause, one row at a
    time (the authors' runtime; the baseline for tests and benchmarks). Log-probs are
    recorded as log_softmax(logits / temperature) (raw logits for greedy). Plain decoding
    steps run `lean_decode_step` where the model allows it (lean_decode=None: decided at
    each `generate`; on `lean_decode_weights` when those can be built, else on the
    modules), transformers' forward otherwise and for every chunk with audio.
    """

    backend = "transformers"

    def __init__(self, lm: LoadedModel, mode: str = "interleaved", temperature: float | None = None,
                 top_p: float | None = None, cache: str = "resume", batch_size: int | None = None,
                 limits: SegmentLimits | None = None, lean_decode: bool | None = None):
        if cache not in CACHE_MODES:
            raise RuntimeInputError(f"cache {cache!r} is not one of {CACHE_MODES}")
        self.lm, self.cache_mode, self.lean_decode_option = lm, cache, lean_decode
        self.thinker = unwrap_thinker(lm.model)
        eos = lm.model.generation_config.eos_token_id
        super().__init__(lm.tokenizer, lm.preset, mode=mode, temperature=temperature, top_p=top_p,
                         batch_size=batch_size, limits=limits,
                         eos_ids=eos if isinstance(eos, list) else [eos] if eos is not None else [],
                         max_positions=self.thinker.config.text_config.max_position_embeddings)
        self.compact_after = lm.preset.runtime.compact_after_holes
        self.chunk_rows = lm.preset.runtime.chunk_rows
        self.featurizer = AudioFeaturizer(self.thinker.config.audio_config.num_mel_bins)
        self.device = self.thinker.lm_head.weight.device
        self.placeholder_index = torch.tensor(self.placeholder_ids, device=self.device)
        self.processors, self.window = self._processors()

    def generate(self, queries: Sequence[Query], seed: int = 0, seeds: Sequence[int] | None = None,
                 forced_prefix: str | Sequence[str | None] | None = None) -> list[Trace]:
        was_training = self.lm.model.training
        self.lm.model.eval()
        self.lean_decode = (supports_lean_decode(self.thinker.model) if self.lean_decode_option is None
                            else self.lean_decode_option)
        self.lean_weights = lean_decode_weights(self.thinker.model) if self.lean_decode else None
        try:
            return super().generate(queries, seed=seed, seeds=seeds, forced_prefix=forced_prefix)
        finally:
            self.lm.model.train(was_training)

    def _rows_per_run(self) -> int:
        return 1 if self.cache_mode == "reprefill" else self.batch_size

    def _row_generator(self, seed: int):
        if self.temperature <= 0:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        return gen

    # ---------------------------------------------------------------- the loop
    def _step_inputs(self, active: list[_Row]):
        """(ids, new-slot mask, positions) for one step: left-padded so that every row's
        next-token logits are at the last column."""
        if all(len(r.pending_ids) == 1 for r in active):  # plain decoding: one token a row
            ids = torch.tensor([r.pending_ids for r in active])
            pos = torch.tensor([[r.next_pos] for r in active])
            for r in active:
                r.next_pos += 1
            return ids, torch.ones_like(ids), pos
        L = max(len(r.pending_ids) for r in active)
        ids = torch.full((len(active), L), self.pad_id, dtype=torch.long)
        new = torch.zeros((len(active), L), dtype=torch.long)
        pos = torch.zeros((len(active), L), dtype=torch.long)
        for i, r in enumerate(active):
            n = len(r.pending_ids)
            ids[i, L - n:] = torch.tensor(r.pending_ids)
            new[i, L - n:] = 1
            pos[i, L - n:] = torch.arange(r.next_pos, r.next_pos + n)
            r.next_pos += n
        return ids, new, pos

    # ---------------------------------------------------------------- sampling
    def _processors(self):
        """HF logits processors beyond the placeholder ban (`_choose` does that one itself:
        `SuppressTokensLogitsProcessor` rebuilds its vocabulary mask on every call)."""
        from transformers import NoBadWordsLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

        procs, window = [], 1
        if self.mode == "one_pass":  # plain CoT: the tokenizer's own spelling of `<seg>` is banned
            bad = self.tok.encode(SEG_OPEN, add_special_tokens=False)
            procs.append(NoBadWordsLogitsProcessor([bad], eos_token_id=list(self.eos_ids)))
            window = len(bad)
        if self.temperature > 0:
            procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs, window

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[list[int], list[float]]:
        # the policy's log-probs: before any ban (no division at temperature 1: one op less a step)
        scaled = logits if self.temperature in (0.0, 1.0) else logits / self.temperature
        lp_all = torch.log_softmax(scaled, dim=-1)
        scores = logits.index_fill(1, self.placeholder_index, -float("inf"))
        if self.processors:
            recent = torch.full((len(rows), self.window), self.pad_id, dtype=torch.long)
            if self.window > 1:  # multi-token bad words: the processors see each row's latest sampled tokens
                for i, r in enumerate(rows):
                    tail = [t for t, m in zip(r.completion, r.inserted, strict=True) if not m][-self.window:]
                    if tail:
                        recent[i, self.window - len(tail):] = torch.tensor(tail)
            recent = recent.to(self.device)
            for proc in self.processors:  # called directly: LogitsProcessorList inspects signatures every call
                scores = proc(recent, scores)
        if self.temperature > 0:
            probs = torch.softmax(scores, dim=-1)
            toks = [int(torch.multinomial(probs[i], 1, generator=r.gen)) for i, r in enumerate(rows)]
        else:
            toks = scores.argmax(dim=-1).tolist()
        for i, r in enumerate(rows):  # forced prefix: a teaching/testing utility (see generate)
            if r.n_text < len(r.forced):
                toks[i] = r.forced[r.n_text]
        lps = lp_all.gather(1, torch.tensor(toks, device=self.device)[:, None])[:, 0].tolist()
        return toks, lps

    # ---------------------------------------------------------------- decoding
    def _run(self, rows: list[_Row]) -> dict[str, float]:
        """Decode `rows` together until each ends; returns the phase timings (seconds)."""
        with grouped_kv_attention(self.thinker):
            return self._decode(rows)

    @torch.inference_mode()  # nothing here is differentiated: trace_logprobs redoes it with grad
    def _decode(self, rows: list[_Row]) -> dict[str, float]:
        from transformers import DynamicCache

        th, dev = self.thinker, self.device
        timings: dict[str, float] = defaultdict(float)
        t_begin = time.perf_counter()
        # Rows asking the same question about the same clip object (a GRPO group repeats its item)
        # share one prompt: the first computes it, the others copy its cache row and sample their
        # first token from its logits (`_share_prompt`). Rows asking another question about a clip
        # already asked about (the eval split asks two a clip) share the prompt up to the end of the
        # clip: they copy that part of the first asker's cache row and feed only the rest of their
        # own prompt (`_share_clip`). Re-prefill runs one row at a time.
        active, followers, leaders = [], defaultdict(list), {}
        clip_askers, clip_followers, shared_len = {}, defaultdict(list), {}
        for r in rows:
            key = (id(r.query.wav), tuple(r.prompt_ids))
            if self.cache_mode != "resume":
                active.append(r)
            elif key in leaders:
                followers[id(leaders[key])].append(r)
            else:
                leaders[key] = r
                first = clip_askers.setdefault(id(r.query.wav), r)
                n = self._shared_clip_prefix(first.prompt_ids, r.prompt_ids) if first is not r else 0
                if n:
                    clip_followers[id(first)].append(r)
                    shared_len[id(r)] = n
                else:
                    active.append(r)
        cache, attn = growing_cache(), torch.zeros((len(active), 0), dtype=torch.long, device=dev)
        phase = "prefill"
        while active:
            if self.cache_mode == "reprefill" and phase != "prefill" and active[0].pending_clips:
                r = active[0]  # the authors' way: drop the cache and feed the whole context again
                cache, attn = growing_cache(), torch.zeros((1, 0), dtype=torch.long, device=dev)
                r.pending_ids, r.pending_clips, r.next_pos = r.prompt_ids + r.completion, list(r.clips), 0
                phase = "reprefill"
            elif phase != "prefill":
                phase = "resume" if any(r.pending_clips for r in active) else "decode"
            t0 = time.perf_counter()
            # Rows with a chunk (a prompt or a clip to insert) step alone while the decoding rows
            # wait one step: padding every decoding row to the chunk's width would compute those
            # pads. At most `chunk_rows` of them at once (see RuntimeSpec.chunk_rows).
            chunky = [i for i, r in enumerate(active) if len(r.pending_ids) > 1][:self.chunk_rows or None]
            sub = chunky if chunky and len(chunky) < len(active) else None
            step_rows = list(active) if sub is None else [active[i] for i in sub]  # a copy: sharing adds to active
            if phase == "resume" and not any(r.completion for r in step_rows):
                phase = "prefill"  # prompts fed after the first `chunk_rows` of them are prefill too
            ids, new, pos = self._step_inputs(step_rows)
            clips = [c for r in step_rows for c in r.pending_clips]
            audio = None
            if clips:
                feats = self.featurizer(clips)
                t1 = time.perf_counter()
                timings["featurize_s"] += t1 - t0
                audio = encode_audio(th, feats)
                t0 = time.perf_counter()
                timings["encode_s"] += t0 - t1
            ids, new = ids.to(dev), new.to(dev)
            if sub is None:
                step_cache = cache
                attn = step_attn = torch.cat([attn, new], dim=1)
            else:
                idx = torch.tensor(sub, device=dev)
                # Only the columns some stepping row uses: a prompt fed after other rows' prompts
                # then does not attend over their slots (keys carry their positions: exact).
                sub_attn = attn[idx]
                cols = sub_attn.any(0).nonzero()[:, 0]
                if len(cols) < sub_attn.shape[1]:  # select columns only when some are unused (a copy)
                    sub_attn = sub_attn[:, cols]
                else:
                    cols = None
                step_cache = DynamicCache()
                if sub_attn.shape[1]:
                    for li, layer in enumerate(cache.layers):
                        k, v = layer.keys[idx], layer.values[idx]
                        step_cache.update(k if cols is None else k[:, :, cols], v if cols is None else v[:, :, cols], li)
                step_attn = torch.cat([sub_attn, new], dim=1)
            no_holes = step_attn.shape[1] == min(r.next_pos for r in step_rows)  # every cache slot is a real token
            key_mask = None if no_holes else step_attn
            if self.lean_decode and ids.shape[1] == 1 and audio is None:  # plain decoding: our lean step
                hidden = lean_decode_step(th.model, ids, pos.to(dev), step_cache, key_mask, self.lean_weights)
            else:
                hidden = th.model(inputs_embeds=embed_with_audio(th, ids, audio), attention_mask=key_mask,
                                  position_ids=mrope_positions(pos.to(dev)),
                                  past_key_values=step_cache, use_cache=True, return_dict=True).last_hidden_state
            if sub is not None:  # the waiting rows get holes where the chunk went in
                attn = torch.cat([attn, new.new_zeros((len(active), new.shape[1])).index_copy(0, idx, new)], dim=1)
                merge_rows(cache, step_cache, idx, len(active), new.shape[1])
            logits = th.lm_head(hidden[:, -1]).float()
            toks, lps = self._choose(logits, step_rows)
            t1 = time.perf_counter()
            timings[f"{phase}_s"] += t1 - t0
            for r, tk, lp in zip(step_rows, toks, lps, strict=True):
                r.pending_clips = []
                self._accept(r, tk, lp)
            for j, r in enumerate(step_rows):
                if id(r) in followers:  # r's prompt is in the cache now
                    shared = followers.pop(id(r))
                    attn = self._share_prompt(cache, attn, active, r, shared, logits[j])
                    timings["shared_prompt_rows"] += len(shared)
                if id(r) in clip_followers:
                    asking = clip_followers.pop(id(r))
                    attn = self._share_clip(cache, attn, active, r, asking, [shared_len[id(a)] for a in asking])
                    timings["shared_clip_rows"] += len(asking)
            keep = [i for i, r in enumerate(active) if r.finish is None]
            holes = attn.shape[1] - max(r.next_pos for r in active)  # next_pos = real tokens in the cache
            if keep and (len(keep) < len(active) or holes >= self.compact_after):
                attn = compact_cache(cache, attn, keep)
            active = [active[i] for i in keep]
            timings["runtime_s"] += time.perf_counter() - t1
            phase = "decode"
        timings["total_s"] = time.perf_counter() - t_begin
        return dict(timings)

    def _share_prompt(self, cache, attn: torch.Tensor, active: list[_Row], leader: _Row, rows: list[_Row],
                      logits: torch.Tensor) -> torch.Tensor:
        """Give `rows` the prompt `leader` has just computed: its cache row and mask copied, their
        first tokens sampled (each with its own generator) from its logits. Returns the new mask."""
        _, idx = copy_cache_row(cache, active, leader, len(rows), attn.device)
        for r in rows:
            r.next_pos, r.pending_ids, r.pending_clips = leader.next_pos, [], []
        toks, lps = self._choose(logits.expand(len(rows), -1), rows)
        for r, tk, lp in zip(rows, toks, lps, strict=True):
            self._accept(r, tk, lp)
        active += rows
        return torch.cat([attn, attn[idx]])

    def _shared_clip_prefix(self, first: list[int], other: list[int]) -> int:
        """How many leading prompt tokens `other` can take from `first`'s cache: their common
        prefix when it holds the whole clip (through `<|audio_eos|>`) and `other` has more of its
        own to feed; else 0."""
        n = 0
        for a, b in zip(first, other):
            if a != b:
                break
            n += 1
        audio_end = max((i for i, t in enumerate(other) if t == self.eos_audio_id), default=-1) + 1
        return n if 0 < audio_end <= n < len(other) else 0

    def _share_clip(self, cache, attn: torch.Tensor, active: list[_Row], first: _Row, rows: list[_Row],
                    lengths: list[int]) -> torch.Tensor:
        """Give each of `rows` the first `lengths[i]` prompt slots `first` has just computed (the
        clip and what precedes it; the keys carry their positions, so a copied row is exact) and
        queue the rest of its own prompt. Returns the new mask."""
        row, idx = copy_cache_row(cache, active, first, len(rows), attn.device)
        slots = attn[row].nonzero()[:, 0]  # first's prompt, in order (nothing else of it is cached yet)
        masks = attn[idx].clone()
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            masks[i, slots[n:]] = 0  # first's own question: not r's
            r.next_pos, r.pending_ids, r.pending_clips = n, r.prompt_ids[n:], []
        active += rows
        return torch.cat([attn, masks])


def copy_cache_row(cache, active: list[_Row], row_of: _Row, n: int, device) -> tuple[int, torch.Tensor]:
    """Append `n` copies of `row_of`'s cache row to every layer; returns its row and the copies' index."""
    row = next(i for i, a in enumerate(active) if a is row_of)  # by identity: rows compare as dataclasses
    idx = torch.full((n,), row, device=device)
    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys, layer.keys[idx]])
        layer.values = torch.cat([layer.values, layer.values[idx]])
    return row, idx


def random_span(dur: float, span: tuple[float, float], rng: np.random.Generator) -> tuple[float, float]:
    """A span as long as `span`, placed uniformly where it does not overlap `span`
    (anywhere in the clip when no such place exists)."""
    a, b = span
    length = b - a
    if length >= dur:
        return (0.0, dur)
    free = [(lo, hi) for lo, hi in ((0.0, a - length), (b, dur - length)) if hi >= lo]
    if not free:
        free = [(0.0, dur - length)]
    widths = np.array([hi - lo for lo, hi in free])
    pick = rng.choice(len(free), p=widths / widths.sum()) if widths.sum() > 0 else rng.integers(len(free))
    lo, hi = free[int(pick)]
    start = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    return (start, min(dur, start + length))


def merge_rows(cache, step_cache, idx: torch.Tensor, n_rows: int, width: int) -> None:
    """Append the last `width` slots of a sub-batch cache (rows `idx`) to the full cache;
    the other rows get zeros there (masked holes)."""
    for li, sl in enumerate(step_cache.layers):
        pads = {}
        for name in ("keys", "values"):
            part = getattr(sl, name)[:, :, -width:]
            pads[name] = part.new_zeros((n_rows, *part.shape[1:])).index_copy(0, idx, part)
        # the first rows ever fed start the layer; later ones are appended in place (growing_cache):
        # a concatenation would copy every row's whole cache
        cache.update(pads["keys"], pads["values"], li)


def compact_cache(cache, attn: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep rows `keep` of a `growing_cache` and pack each row's real positions to the right.

    Keys already carry their rotary positions, so moving cache slots is exact; only the
    attention mask says which slots are real. Returns the new mask. (DynamicCache can
    drop rows, `batch_select_indices`, but not re-pack each row's slots: hence our own.)
    """
    idx = torch.tensor(keep, device=attn.device)
    m = attn[idx]
    n = int(m.sum(1).max())
    order = torch.sort(m, dim=1, stable=True).indices[:, -n:]  # holes first, real slots in order
    rows = list(zip(keep, order, strict=True))
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            continue
        layer.repack(rows, n)
    return m.gather(1, order)


def answer_audio_file(audio: str, question: str, choices: Sequence[str] | None = None, preset: str = "tiny",
                      checkpoint: str | None = None, mode: str = "interleaved", temperature: float | None = None,
                      seed: int = 0, forced_prefix: str | None = None) -> Trace:
    """One answer about an audio file (what `echo-lite listen` runs)."""
    from echo_lite.audio import load_audio
    from echo_lite.model import load_preset_model

    lm = load_preset_model(preset, checkpoint)
    q = Query(wav=load_audio(audio), question=question, choices=list(choices) if choices else None, id=str(audio))
    return InterleavedGenerator(lm, mode=mode, temperature=temperature).generate([q], seed=seed,
                                                                                 forced_prefix=forced_prefix)[0]


def generate_traces(lm: LoadedModel, queries: Sequence[Query], mode: str = "interleaved", **kwargs) -> list[Trace]:
    """Shortcut: `InterleavedGenerator(lm, mode, ...).generate(queries, seed=..., forced_prefix=...)`."""
    gen_keys = {"seed", "seeds", "forced_prefix"}
    gen_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in gen_keys}
    return InterleavedGenerator(lm, mode=mode, **kwargs).generate(queries, **gen_kwargs)
