"""The interleaved runtime: pause at `</seg>`, re-listen, resume from the kept KV cache.

While the model reasons, every closed `<seg>s, e</seg>` makes the runtime validate the
span, cut it from the raw waveform, encode ONLY that new clip, append
`<|audio_bos|>` + its audio tokens + `<|audio_eos|>` to the reasoning and go on from the
cache it kept (ECHO_METHOD.md section 2). The authors' runtime instead re-prefills the
whole context at every pause; `cache="reprefill"` does exactly that, as the baseline
that resume must equal token for token (tested) and beat in time (benchmarks/).

Many trajectories run at once: our own decode loop (model forward with a cache and HF
logits processors) rather than `generate()`, because rows pause at different times and
`generate()` cannot insert tokens and features into one row mid-run. Each step feeds
one token to decoding rows and a chunk (last token + the inserted clip) to resuming
rows, left-padding the shorter ones with masked positions; the KV cache is re-packed
when those holes pile up and finished rows leave the batch.

Modes (the paper's controls): `one_pass` (plain CoT, `<seg>` banned), `tags_only`
(tags written and judged, nothing inserted), `interleaved`, `random_segment` (a span of
the same length elsewhere, seeded), `oracle_segment` (the item's i-th annotated span
for its i-th valid tag). Everything ends in a `Trace` (trace.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from echo_lite.audio import AudioFeaturizer, audio_token_count, cut_span
from echo_lite.config import AUDIO_BOS, AUDIO_EOS, AUDIO_PAD, SAMPLE_RATE, SEG_CLOSE, SEG_OPEN, SegmentLimits
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

MODES = ("one_pass", "tags_only", "interleaved", "random_segment", "oracle_segment")
INSERTING_MODES = ("interleaved", "random_segment", "oracle_segment")
CACHE_MODES = ("resume", "reprefill")


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
            raise RuntimeInputError(f"{name}: wav must be a 1-D array of samples at {SAMPLE_RATE} Hz, got shape "
                                f"{wav.shape} of {wav.dtype}")
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


class InterleavedGenerator:
    """Generate answers with re-listening from a `LoadedModel` (transformers backend).

    temperature: None -> the preset's eval temperature; 0 -> greedy. Log-probs are
    recorded as log_softmax(logits / temperature) (raw logits for greedy).
    """

    def __init__(self, lm: LoadedModel, mode: str = "interleaved", temperature: float | None = None,
                 top_p: float | None = None, cache: str = "resume", batch_size: int | None = None,
                 limits: SegmentLimits | None = None):
        if mode not in MODES:
            raise RuntimeInputError(f"mode {mode!r} is not one of {MODES}")
        if cache not in CACHE_MODES:
            raise RuntimeInputError(f"cache {cache!r} is not one of {CACHE_MODES}")
        preset = lm.preset
        self.lm, self.mode, self.cache_mode = lm, mode, cache
        self.thinker = unwrap_thinker(lm.model)
        self.tok = lm.tokenizer
        self.limits = limits or preset.segments
        self.temperature = preset.sampling.eval_temperature if temperature is None else float(temperature)
        if self.temperature < 0:
            raise RuntimeInputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        self.top_p = preset.sampling.top_p if top_p is None else float(top_p)
        self.batch_size = batch_size or preset.runtime.batch_size
        self.compact_after = preset.runtime.compact_after_holes
        self.featurizer = AudioFeaturizer(self.thinker.config.audio_config.num_mel_bins)
        self.device = self.thinker.lm_head.weight.device
        ids = {t: self.tok.convert_tokens_to_ids(t) for t in (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS)}
        self.bos_id, self.pad_audio_id, self.eos_audio_id = ids[AUDIO_BOS], ids[AUDIO_PAD], ids[AUDIO_EOS]
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        eos = lm.model.generation_config.eos_token_id
        self.eos_ids = {self.tok.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.max_positions = self.thinker.config.text_config.max_position_embeddings
        self.processors, self.window = self._processors(lm.placeholder_ids())
        self._closes_cache: dict[int, bool] = {}

    # ---------------------------------------------------------------- sampling
    def _processors(self, placeholder_ids: list[int]):
        from transformers import (
            LogitsProcessorList,
            NoBadWordsLogitsProcessor,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        procs = LogitsProcessorList([SuppressTokensLogitsProcessor(placeholder_ids, device=self.device)])
        window = 1
        if self.mode == "one_pass":  # plain CoT: the model may not open a re-listen request
            bad = self.tok.encode(SEG_OPEN, add_special_tokens=False)
            procs.append(NoBadWordsLogitsProcessor([bad], eos_token_id=list(self.eos_ids)))
            window = len(bad)
        if self.temperature > 0:
            procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs, window

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> tuple[list[int], list[float]]:
        temp = self.temperature if self.temperature > 0 else 1.0
        lp_all = torch.log_softmax(logits / temp, dim=-1)
        recent = torch.full((len(rows), self.window), self.pad_id, dtype=torch.long)
        if self.window > 1:  # multi-token bad words: the processors see each row's latest sampled tokens
            for i, r in enumerate(rows):
                tail = [t for t, m in zip(r.completion, r.inserted, strict=True) if not m][-self.window:]
                if tail:
                    recent[i, self.window - len(tail):] = torch.tensor(tail)
        scores, recent = logits, recent.to(self.device)
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
        elif r.next_pos + len(r.pending_ids) + n_ins + 1 > self.max_positions:
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
        elif r.next_pos + len(r.pending_ids) >= self.max_positions:
            r.finish = "context"

    # ---------------------------------------------------------------- the loop
    def _new_row(self, q: Query, seed: int, forced: str | None) -> _Row:
        text = build_prompt(q.question, q.choices, [audio_token_count(len(q.wav))], instruction=q.instruction)
        prompt_ids = self.tok.encode(text, add_special_tokens=False)
        forced_ids = self.tok.encode(forced, add_special_tokens=False) if forced else []
        bad = set(forced_ids) & set(self.lm.placeholder_ids())
        if bad:
            raise RuntimeInputError(f"forced prefix of query {q.id!r} contains placeholder token(s) "
                                    f"{self.tok.convert_ids_to_tokens(sorted(bad))}: only the runtime inserts audio")
        gen = None
        if self.temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(seed))
        r = _Row(query=q, seed=int(seed), prompt_ids=prompt_ids, forced=forced_ids, gen=gen)
        r.pending_ids = list(prompt_ids)
        r.pending_clips = [q.wav]
        r.clips, r.spans = [q.wav], [full_clip_span(q.wav)]
        return r

    @torch.no_grad()
    def _run(self, rows: list[_Row]) -> dict[str, float]:
        """Decode `rows` together until each ends; returns the phase timings (seconds)."""
        from transformers import DynamicCache

        th, dev = self.thinker, self.device
        timings: dict[str, float] = defaultdict(float)
        t_begin = time.perf_counter()
        cache, attn = DynamicCache(), torch.zeros((len(rows), 0), dtype=torch.long, device=dev)
        active, phase = list(rows), "prefill"
        while active:
            if self.cache_mode == "reprefill" and phase != "prefill" and active[0].pending_clips:
                r = active[0]  # the authors' way: drop the cache and feed the whole context again
                cache, attn = DynamicCache(), torch.zeros((1, 0), dtype=torch.long, device=dev)
                r.pending_ids, r.pending_clips, r.next_pos = r.prompt_ids + r.completion, list(r.clips), 0
                phase = "reprefill"
            elif phase != "prefill":
                phase = "resume" if any(r.pending_clips for r in active) else "decode"
            t0 = time.perf_counter()
            L = max(len(r.pending_ids) for r in active)
            ids = torch.full((len(active), L), self.pad_id, dtype=torch.long)
            new = torch.zeros((len(active), L), dtype=torch.long)
            pos = torch.zeros((len(active), L), dtype=torch.long)
            for i, r in enumerate(active):  # left-pad: every row's next-token logits are at the end
                n = len(r.pending_ids)
                ids[i, L - n:] = torch.tensor(r.pending_ids)
                new[i, L - n:] = 1
                pos[i, L - n:] = torch.arange(r.next_pos, r.next_pos + n)
                r.next_pos += n
            clips = [c for r in active for c in r.pending_clips]
            audio = None
            if clips:
                feats = self.featurizer(clips)
                t1 = time.perf_counter()
                timings["featurize_s"] += t1 - t0
                audio = encode_audio(th, feats)
                t0 = time.perf_counter()
                timings["encode_s"] += t0 - t1
            ids, attn = ids.to(dev), torch.cat([attn, new.to(dev)], dim=1)
            emb = embed_with_audio(th, ids, audio)
            no_holes = attn.shape[1] == min(r.next_pos for r in active)  # every cache slot is a real token
            hidden = th.model(inputs_embeds=emb, attention_mask=None if no_holes else attn,
                              position_ids=mrope_positions(pos.to(dev)),
                              past_key_values=cache, use_cache=True, return_dict=True).last_hidden_state
            logits = th.lm_head(hidden[:, -1]).float()
            toks, lps = self._choose(logits, active)
            t1 = time.perf_counter()
            timings[f"{phase}_s"] += t1 - t0
            for r, tk, lp in zip(active, toks, lps, strict=True):
                r.pending_clips = []
                self._accept(r, tk, lp)
            keep = [i for i, r in enumerate(active) if r.finish is None]
            holes = attn.shape[1] - max(r.next_pos for r in active)  # next_pos = real tokens in the cache
            if keep and (len(keep) < len(active) or holes >= self.compact_after):
                attn = compact_cache(cache, attn, keep)
            active = [active[i] for i in keep]
            timings["runtime_s"] += time.perf_counter() - t1
            phase = "decode"
        timings["total_s"] = time.perf_counter() - t_begin
        return dict(timings)

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
        step = 1 if self.cache_mode == "reprefill" else self.batch_size
        was_training = self.lm.model.training
        self.lm.model.eval()
        try:
            traces = []
            for b in range(0, len(rows), step):
                batch = rows[b:b + step]
                timings = self._run(batch)
                timings["batch_size"] = len(batch)
                traces += [self._trace(r, timings) for r in batch]
        finally:
            self.lm.model.train(was_training)
        return traces

    def _trace(self, r: _Row, timings: dict[str, float]) -> Trace:
        return Trace(
            mode=self.mode, prompt_ids=r.prompt_ids, completion_ids=r.completion, inserted_mask=r.inserted,
            logprobs=r.logprobs, segments=r.segments, audio_spans=r.spans,
            temperature=self.temperature if self.temperature > 0 else 1.0, finish_reason=r.finish,
            text=self.tok.decode(r.completion, skip_special_tokens=False), seed=r.seed, query_id=r.query.id,
            timings=dict(timings), wav=r.query.wav,
        )


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


def compact_cache(cache, attn: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep rows `keep` of a KV cache and pack each row's real positions to the right.

    Keys already carry their rotary positions, so moving cache slots is exact; only the
    attention mask says which slots are real. Returns the new mask.
    """
    idx = torch.tensor(keep, device=attn.device)
    m = attn[idx]
    n = int(m.sum(1).max())
    order = torch.sort(m, dim=1, stable=True).indices[:, -n:]  # holes first, real slots in order
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            continue
        g = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layer.keys = layer.keys[idx].gather(2, g)
        layer.values = layer.values[idx].gather(2, g)
    return m.gather(1, order)


def generate_traces(lm: LoadedModel, queries: Sequence[Query], mode: str = "interleaved", **kwargs) -> list[Trace]:
    """Shortcut: `InterleavedGenerator(lm, mode, ...).generate(queries, seed=..., forced_prefix=...)`."""
    gen_keys = {"seed", "seeds", "forced_prefix"}
    gen_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in gen_keys}
    return InterleavedGenerator(lm, mode=mode, **kwargs).generate(queries, **gen_kwargs)
