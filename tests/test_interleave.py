"""The interleaved runtime on the real tiny thinker: pause, cut, encode, insert, resume.

Trajectories with `<seg>` tags come from two real sources: `forced_prefix` (the model is
made to write a given text through the same loop; every forward, pause and insertion is
real) and a tiny thinker trained here for a few seconds to write tags on its own.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from echo_lite.audio import audio_token_count, cut_span
from echo_lite.config import AUDIO_PAD, IM_END, SAMPLE_RATE, SEG_OPEN
from echo_lite.interleave import (
    InterleavedGenerator,
    Query,
    RuntimeInputError,
    compact_cache,
    random_span,
)
from echo_lite.model import LoadedModel
from echo_lite.segments import SegmentReject, format_segment, segment_iou
from echo_lite.signals import tone_clip
from echo_lite.trace import RuntimeReject, Trace, trace_logprobs

PITCHES = [262.0, 330.0, 392.0, 440.0, 523.0, 349.0, 294.0]


def _query(i: int, n_tones: int = 7, **kw) -> Query:
    rng = np.random.default_rng(i)
    wav = tone_clip([float(p) for p in rng.choice(PITCHES, size=n_tones)], seed=i)
    return Query(wav=wav, question=f"Which tone is heard at {i % 7} s?" + " Listen." * (i % 3),
                 choices=["C4", "E4", "G4"], id=f"q{i}", **kw)


def _tags(k: int, offset: float = 0.0) -> str:
    """A reasoning text with k valid re-listen requests (0.6-1.5 s spans inside a 10.5 s clip)."""
    return "<think>" + "".join(
        f" listen {format_segment(offset + 1.1 * j, offset + 1.1 * j + 0.6 + 0.1 * j)}, high" for j in range(k))




def untrained_tiny():
    """A freshly initialised tiny thinker: it babbles to the token budget, which several tests
    rely on (the shipped pretrained base stops early)."""
    from echo_lite.config import get_preset
    from echo_lite.model import LoadedModel, build_tiny_thinker, load_tokenizer

    tok = load_tokenizer("tiny")
    return LoadedModel(model=build_tiny_thinker(tok), tokenizer=tok, preset=get_preset("tiny"))


@pytest.fixture(scope="module")
def lm():
    return untrained_tiny()


@functools.lru_cache(maxsize=1)
def train_tagger(max_steps: int = 150):
    """A tiny thinker trained here (seconds of AdamW through `trace_logprobs`) to answer three
    questions with 1, 2 and 3 re-listens of its own; the runtime's forced traces are the data.
    Returns (LoadedModel, queries, the target traces); trained once per test session."""
    from echo_lite.model import freeze_audio_tower

    lm = untrained_tiny()
    questions = ["Which tone comes first?", "How many tones are high?", "Is the melody rising or falling?"]
    queries = [Query(wav=tone_clip(PITCHES[i:i + 6], tone_s=0.6, gap_s=0.2, seed=i), question=questions[i],
                     choices=["C4", "E4"], id=f"t{i}") for i in range(3)]
    answers = ["<think>" + "".join(f" listen {format_segment(0.5 * j + i, 0.5 * j + i + 1.0)}, high"
                                   for j in range(i + 1)) + "</think><answer>E4</answer>" + IM_END for i in range(3)]
    gen = InterleavedGenerator(lm, temperature=0)
    data = gen.generate(queries, forced_prefix=answers)
    assert [d.n_relistens for d in data] == [1, 2, 3]
    torch.manual_seed(0)
    freeze_audio_tower(lm.model)
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(1, max_steps + 1):
        lm.model.train()
        out = trace_logprobs(lm.model, data)
        loss = -out.logprobs[out.sampled_mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0:  # stop once greedy generation writes all three answers by itself
            lm.model.eval()
            if [t.completion_ids for t in gen.generate(queries)] == [d.completion_ids for d in data]:
                break
    lm.model.eval()
    return lm, queries, data


@pytest.fixture(scope="module")
def tagger():
    return train_tagger()


# ------------------------------------------------------------------ the done-when contracts
def test_cache_resume_equals_full_reprefill_token_for_token(lm):
    """0..8 re-listens, then free greedy generation that depends on the inserted audio."""
    q = _query(0)
    limits = lm.preset.segments
    resume = InterleavedGenerator(lm, temperature=0, cache="resume")
    reprefill = InterleavedGenerator(lm, temperature=0, cache="reprefill")
    for k in (0, 1, 2, 4, 8):
        a = resume.generate([q], forced_prefix=_tags(k))[0]
        b = reprefill.generate([q], forced_prefix=_tags(k))[0]
        assert a.n_relistens == b.n_relistens == k
        assert a.completion_ids == b.completion_ids, f"{k} re-listens: resume and re-prefill diverge"
        assert a.inserted_mask == b.inserted_mask
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-4)
        assert a.n_generated == limits.max_new_tokens and a.finish_reason == "length"
        assert "reprefill_s" in b.timings if k else "reprefill_s" not in b.timings
    # the continuation really depends on the inserted clips: without them it is different
    plain = InterleavedGenerator(lm, temperature=0, mode="tags_only").generate([q], forced_prefix=_tags(8))[0]
    assert plain.completion_ids != [t for t, m in zip(a.completion_ids, a.inserted_mask, strict=True) if not m]


def test_model_that_writes_tags_resume_equals_reprefill(tagger):
    lm, queries, data = tagger
    a = InterleavedGenerator(lm, temperature=0).generate(queries)
    b = InterleavedGenerator(lm, temperature=0, cache="reprefill").generate(queries)
    assert [t.n_relistens for t in a] == [1, 2, 3]  # written by the model itself, not forced
    assert [t.completion_ids for t in a] == [t.completion_ids for t in b]
    assert [t.completion_ids for t in a] == [d.completion_ids for d in data]
    assert all(t.finish_reason == "stop" for t in a)


@pytest.mark.parametrize("chunk_rows", [0, 1, 4])
def test_batched_equals_one_by_one(lm, chunk_rows):
    """Rows with different clips, prompts and tag counts pause at different steps; some end early.
    Prompts and clips fed all together (0), one row at a time, or four rows at a time."""
    queries = [_query(i, n_tones=4 + i % 4) for i in range(6)]
    forced = [_tags(i % 4, offset=0.1 * i) + (" done</think>" + IM_END if i % 3 == 0 else "") for i in range(6)]
    grouped = LoadedModel(model=lm.model, tokenizer=lm.tokenizer,
                          preset=lm.preset.with_overrides(runtime={"chunk_rows": chunk_rows}))
    batched = InterleavedGenerator(grouped, temperature=0, batch_size=6).generate(queries, forced_prefix=forced)
    single = InterleavedGenerator(lm, temperature=0, batch_size=1).generate(queries, forced_prefix=forced)
    assert [t.n_relistens for t in batched] == [i % 4 for i in range(6)]
    assert {t.finish_reason for t in batched} == {"stop", "length"}
    for a, b in zip(batched, single, strict=True):
        assert a.completion_ids == b.completion_ids, a.query_id
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert batched[0].timings["batch_size"] == 6 and single[0].timings["batch_size"] == 1


def test_prompts_fed_in_several_chunks_are_timed_as_prefill(lm):
    """Prompts fed a row at a time (chunk_rows=1) count as prefill, not as resume: with no
    re-listen in the batch there is no resume time at all, and with one there is."""
    queries = [_query(i, n_tones=4) for i in range(3)]
    one_row = LoadedModel(model=lm.model, tokenizer=lm.tokenizer,
                          preset=lm.preset.with_overrides(runtime={"chunk_rows": 1}))
    gen = InterleavedGenerator(one_row, temperature=0, batch_size=3)
    plain = gen.generate(queries, forced_prefix=_tags(0) + " done</think>" + IM_END)[0].timings
    assert plain["prefill_s"] > 0 and "resume_s" not in plain
    relisten = gen.generate(queries, forced_prefix=[_tags(0), _tags(1), _tags(0)])[0].timings
    assert relisten["prefill_s"] > 0 and relisten["resume_s"] > 0


@pytest.mark.parametrize("chunk_rows", [0, 4])
def test_questions_about_one_clip_share_the_clip_and_equal_one_by_one(lm, chunk_rows):
    """Other questions about a clip already asked about take the prompt up to the end of the
    clip from the first asker's cache (the eval split asks two questions a clip): the clip is
    featurized, encoded and prefilled once, and every answer is what it is one by one."""
    clips = [_query(i, n_tones=4 + i).wav for i in range(3)]
    asks = [(0, "Which tone is first?"), (1, "Which tone is heard at 2 s?"), (0, "Which tone is last?"),
            (1, "How many tones?"), (2, "Which tone is first?"), (1, "Which tone is heard at 2 s?"),
            (0, "Which tone is last?")]
    queries = [Query(wav=clips[c], question=q, choices=["C4", "E4", "G4"], id=f"a{i}") for i, (c, q) in enumerate(asks)]
    forced = [_tags(i % 3, offset=0.2 * i) for i in range(len(asks))]
    grouped = LoadedModel(model=lm.model, tokenizer=lm.tokenizer,
                          preset=lm.preset.with_overrides(runtime={"chunk_rows": chunk_rows}))
    for temperature in (0.0, 1.0):
        together = InterleavedGenerator(grouped, temperature=temperature, batch_size=len(asks)).generate(
            queries, seed=3, forced_prefix=forced)
        alone = InterleavedGenerator(lm, temperature=temperature, batch_size=1).generate(
            queries, seed=3, forced_prefix=forced)
        assert together[0].timings["shared_clip_rows"] == 2  # a2 from a0, a3 from a1
        assert together[0].timings["shared_prompt_rows"] == 2  # a5 is a1 again, a6 is a2 (itself sharing a clip)
        assert [t.n_relistens for t in together] == [i % 3 for i in range(len(asks))]
        for a, b in zip(together, alone, strict=True):
            assert a.prompt_ids == b.prompt_ids and a.completion_ids == b.completion_ids, a.query_id
            assert np.allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_only_a_prefix_through_the_whole_clip_is_shared(lm):
    gen = InterleavedGenerator(lm, temperature=0)
    eos = gen.eos_audio_id
    assert gen._shared_clip_prefix([1, 2, eos, 5, 6], [1, 2, eos, 5, 7, 8]) == 4
    assert gen._shared_clip_prefix([1, 2, eos, 5], [1, 2, eos]) == 0  # nothing of its own left to feed
    assert gen._shared_clip_prefix([1, 3, eos, 5], [1, 2, eos, 5]) == 0  # they part before the clip ends
    assert gen._shared_clip_prefix([1, 2, 5], [1, 2, 6]) == 0  # no clip


def test_batched_sampling_equals_one_by_one_with_the_same_seeds(tagger):
    lm, queries, _ = tagger
    gen = InterleavedGenerator(lm, temperature=1.0)
    seeds = [11, 12, 13]
    together = gen.generate(queries, seeds=seeds)
    alone = [gen.generate([q], seeds=[s])[0] for q, s in zip(queries, seeds, strict=True)]
    assert [t.completion_ids for t in together] == [t.completion_ids for t in alone]
    again = gen.generate(queries, seeds=seeds)
    assert [t.completion_ids for t in again] == [t.completion_ids for t in together]
    other = gen.generate(queries, seeds=[21, 22, 23])
    assert [t.completion_ids for t in other] != [t.completion_ids for t in together]


@pytest.mark.parametrize("chunk_rows", [0, 4])
def test_group_rows_share_their_prompt_and_equal_rows_run_alone(tagger, chunk_rows):
    """A GRPO group (one item repeated, here two groups interleaved with a third question):
    the repeats copy the first row's prompt cache instead of featurizing, encoding and
    prefilling it again, and sample as they would alone."""
    lm, queries, _ = tagger
    lm = LoadedModel(model=lm.model, tokenizer=lm.tokenizer,
                     preset=lm.preset.with_overrides(runtime={"chunk_rows": chunk_rows}))
    group = [queries[0]] * 4 + [queries[1]] * 3 + [queries[2]] + [queries[0]]
    seeds = list(range(30, 30 + len(group)))
    gen = InterleavedGenerator(lm, temperature=1.0, batch_size=len(group))
    together = gen.generate(group, seeds=seeds)
    assert together[0].timings["shared_prompt_rows"] == 3 + 2 + 1
    alone = [gen.generate([q], seeds=[s])[0] for q, s in zip(group, seeds, strict=True)]
    assert "shared_prompt_rows" not in alone[0].timings
    for a, b in zip(together, alone, strict=True):
        assert a.completion_ids == b.completion_ids
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert len({tuple(t.completion_ids) for t in together[:4]}) > 1  # the repeats really sample apart


def test_trace_logprobs_reproduce_the_sampled_ones(lm):
    """ONE teacher-forced forward over prompt + completion (with every clip) gives the
    log-probs recorded while sampling (temperature 0.7, rows of 0-3 re-listens)."""
    queries = [_query(i) for i in range(4)]
    traces = InterleavedGenerator(lm, temperature=0.7).generate(
        queries, seed=3, forced_prefix=[_tags(i) for i in range(4)])
    assert [t.n_relistens for t in traces] == [0, 1, 2, 3]
    with torch.no_grad():
        out = trace_logprobs(lm.model, traces)
    for i, t in enumerate(traces):
        n = len(t.completion_ids)
        sampled = out.sampled_mask[i, :n]
        assert sampled.tolist() == [not m for m in t.inserted_mask]
        assert out.inserted_mask[i, :n].sum() == sum(s.audio_tokens + 2 for s in t.segments if s.inserted)
        diff = (out.logprobs[i, :n][sampled] - torch.tensor(t.logprobs)[sampled]).abs().max()
        assert diff < 1e-4, f"trace {i}: teacher-forced log-probs differ by {diff:.2e}"
        assert (out.logprobs[i, :n][~sampled] == 0).all()
    with torch.no_grad():  # the temperature matters: at 1.0 they differ
        hot = trace_logprobs(lm.model, traces, temperature=1.0)
    assert (hot.logprobs - out.logprobs)[out.sampled_mask].abs().max() > 1e-3


def test_shared_prompt_forward_equals_one_forward_with_gradients(lm):
    """GRPO's groups: rollouts of one prompt share its forward (and its cache) - the log-probs
    and the gradients equal one forward over every full sequence."""
    queries = [_query(i) for i in (0, 0, 0, 4, 4, 5)]  # three groups, prompts of three lengths
    fps = [_tags(k) for k in (0, 2, 3, 1, 0, 2)]
    traces = InterleavedGenerator(lm, temperature=0.7).generate(queries, seed=5, forced_prefix=fps)
    assert len({len(t.prompt_ids) for t in traces}) == 3 and sum(t.n_relistens for t in traces) == 8
    params = [p for n, p in lm.model.named_parameters() if "layers.1." in n or "embed_tokens" in n]
    results = []
    for share in (True, False):
        lm.model.zero_grad()
        out = trace_logprobs(lm.model, traces, share_prompts=share)
        (out.logprobs.sum() / out.sampled_mask.sum()).backward()
        results.append((out, [p.grad.clone() for p in params]))
    lm.model.zero_grad()
    (a, ga), (b, gb) = results
    assert torch.equal(a.sampled_mask, b.sampled_mask) and torch.equal(a.inserted_mask, b.inserted_mask)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-5
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-4 * max(1.0, y.abs().max().item())
    assert any(x.abs().max() > 0 for x in ga)


def test_grouped_kv_attention_equals_transformers_sdpa(lm):
    """The runtime's CPU attention (grouped K/V heads given to torch as they are) gives the
    same hidden states as transformers' sdpa under a padding mask, and is undone after."""
    from echo_lite.interleave import GQA_SDPA, grouped_kv_attention
    from echo_lite.trace import mrope_positions

    th = lm.model
    assert th.config.text_config.num_attention_heads > th.config.text_config.num_key_value_heads
    ids = torch.randint(20, 900, (3, 40))
    attn = torch.ones_like(ids)
    attn[0, :7], attn[2, :19] = 0, 0  # left padding: rows of three lengths
    pos = mrope_positions((attn.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        ref = th.model(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
        with grouped_kv_attention(th):
            assert th.model.config._attn_implementation == GQA_SDPA
            ours = th.model(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
    assert th.model.config._attn_implementation == "sdpa"
    real = attn.bool()
    assert (ref[real] - ours[real]).abs().max() < 1e-6


def test_teacher_forcing_a_trace_without_its_waveform_names_it(lm):
    t = InterleavedGenerator(lm, temperature=0).generate([_query(2)], forced_prefix=_tags(1))[0]
    bare = Trace.from_dict(t.to_dict())  # saved traces drop the audio
    for share in (True, False):
        with pytest.raises(ValueError, match="trace 'q2' carries no waveform"):
            trace_logprobs(lm.model, [bare], share_prompts=share)


def test_trace_forward_matches_the_thinkers_own_forward(lm):
    """Our embedding scatter and sequential positions equal the thinker's own forward
    (its get_rope_index and masked_scatter) on a trace with two inserted clips."""
    t = InterleavedGenerator(lm, temperature=0).generate([_query(1)], forced_prefix=_tags(2))[0]
    from echo_lite.audio import AudioFeaturizer

    feats = AudioFeaturizer(lm.n_mels)(t.clips())
    ids = torch.tensor([t.prompt_ids + t.completion_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **feats).logits[0].float()
        ours = trace_logprobs(lm.model, [t]).logprobs[0]
    p = len(t.prompt_ids)
    ref = torch.log_softmax(logits[p - 1:-1], -1).gather(-1, torch.tensor(t.completion_ids)[:, None])[:, 0]
    mask = ~torch.tensor(t.inserted_mask)
    assert (ref[mask] - ours[mask]).abs().max() < 1e-4


def test_gradients_flow_through_trace_logprobs(tagger):
    lm, _, data = tagger
    lm.model.zero_grad()
    out = trace_logprobs(lm.model, data[:1])
    (-out.logprobs[out.sampled_mask].sum()).backward()
    grads = [p.grad for n, p in lm.model.named_parameters() if "layers" in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    lm.model.zero_grad()


# ------------------------------------------------------------------ segments and limits
def test_inserted_clip_is_the_requested_span(lm):
    q = _query(2)
    t = InterleavedGenerator(lm, temperature=0).generate([q], forced_prefix=_tags(2))[0]
    assert [s.requested for s in t.segments] == [(0.0, 0.6), (1.1, 1.8)]
    assert [s.applied for s in t.segments] == [s.requested for s in t.segments]
    assert t.audio_spans[0] == (0.0, len(q.wav) / SAMPLE_RATE) and t.audio_spans[1:] == [(0.0, 0.6), (1.1, 1.8)]
    audio_id = lm.tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    assert t.completion_ids.count(audio_id) == audio_token_count(int(0.6 * SAMPLE_RATE)) + audio_token_count(
        int(0.7 * SAMPLE_RATE))
    for s in t.segments:  # the clip is inserted right after the token that closed the tag
        assert t.inserted_mask[s.after_token + 1] and not t.inserted_mask[s.after_token]
        assert s.clip_samples == len(cut_span(q.wav, *s.applied))
    assert all(m for tok, m in zip(t.completion_ids, t.inserted_mask, strict=True) if tok == audio_id)


def test_invalid_tags_stay_text_and_are_recorded(lm):
    q = _query(3)  # 10.5 s
    bad = ("<think><seg>a, b</seg> then <seg>5.0, 2.0</seg> then <seg>3.0, 3.1</seg> then <seg>50.0, 60.0</seg>"
           " then <seg>1.0</seg> then <seg>9.5, 99.0</seg> ok")
    t = InterleavedGenerator(lm, temperature=0).generate([q], forced_prefix=bad)[0]
    reasons = [s.reason for s in t.segments]
    assert reasons == [SegmentReject.NOT_NUMERIC.value, SegmentReject.REVERSED.value, SegmentReject.TOO_SHORT.value,
                       SegmentReject.OUT_OF_RANGE.value, SegmentReject.MALFORMED.value, None]
    assert t.segments[-1].applied == (9.5, 10.5)  # clamped to the clip's end, then inserted
    assert t.n_relistens == 1
    assert t.text.startswith(bad.split(" ok")[0])  # every bad tag is still in the text, verbatim
    assert t.finish_reason == "length"


def test_clip_limit_and_typed_reasons(lm):
    limits = lm.preset.segments.__class__(max_clips=2, max_new_tokens=80)
    t = InterleavedGenerator(lm, temperature=0, limits=limits).generate([_query(4)], forced_prefix=_tags(3))[0]
    assert [s.reason for s in t.segments] == [None, None, SegmentReject.TOO_MANY.value]
    assert t.n_relistens == 2 and len(t.audio_spans) == 3


def test_token_budget_counts_text_or_audio_as_the_preset_says(lm):
    q = _query(5)
    base = lm.preset.segments
    text_only = base.__class__(max_new_tokens=40)
    t = InterleavedGenerator(lm, temperature=0, limits=text_only).generate([q], forced_prefix=_tags(2))[0]
    assert t.n_generated == 40 and t.n_relistens == 2 and len(t.completion_ids) > 40
    with_audio = base.__class__(max_new_tokens=60, inserted_audio_counts_against_budget=True)
    t = InterleavedGenerator(lm, temperature=0, limits=with_audio).generate([q], forced_prefix=_tags(2))[0]
    assert len(t.completion_ids) == 60
    assert [s.reason for s in t.segments] == [None, RuntimeReject.OVER_BUDGET.value]  # 19 + 2 tokens left no room


def test_placeholders_are_never_sampled(lm):
    """Even a model that prefers the placeholders (a hook adds +50 to their logits) never samples them."""
    ph = lm.placeholder_ids()

    def push(module, args, out):
        out = out.clone()
        out[..., ph] += 50.0
        return out

    handle = lm.model.lm_head.register_forward_hook(push)
    try:
        t = InterleavedGenerator(lm, temperature=1.0).generate([_query(6)], forced_prefix=_tags(1))[0]
    finally:
        handle.remove()
    sampled = [tok for tok, m in zip(t.completion_ids, t.inserted_mask, strict=True) if not m]
    assert not set(sampled) & set(ph)
    assert t.n_relistens == 1


# ------------------------------------------------------------------ modes
def test_one_pass_bans_tags_that_the_model_would_write(tagger):
    lm, queries, _ = tagger
    t = InterleavedGenerator(lm, temperature=0, mode="one_pass").generate(queries)
    seg_id = lm.tokenizer.convert_tokens_to_ids(SEG_OPEN)
    assert all(seg_id not in x.completion_ids and not x.segments and x.n_relistens == 0 for x in t)
    assert not any(any(x.inserted_mask) for x in t)


def test_tags_only_judges_but_inserts_nothing(tagger):
    lm, queries, _ = tagger
    t = InterleavedGenerator(lm, temperature=0, mode="tags_only").generate(queries[1:2])[0]
    assert len(t.segments) >= 1 and not any(t.inserted_mask) and len(t.audio_spans) == 1
    assert t.segments[0].applied == (1.0, 2.0) and t.segments[0].reason == RuntimeReject.NOT_INSERTED.value


def test_random_segment_same_length_elsewhere_and_seeded(lm):
    q = _query(7)
    gen = InterleavedGenerator(lm, temperature=0, mode="random_segment")
    a = gen.generate([q], seeds=[1], forced_prefix=_tags(3))[0]
    b = gen.generate([q], seeds=[1], forced_prefix=_tags(3))[0]
    c = gen.generate([q], seeds=[2], forced_prefix=_tags(3))[0]
    assert a.n_relistens == 3 and [s.source for s in a.segments] == ["random"] * 3
    for s in a.segments:
        assert s.applied[1] - s.applied[0] == pytest.approx(s.requested[1] - s.requested[0])
        assert segment_iou(s.applied, s.requested) == 0.0
    assert [s.applied for s in a.segments] == [s.applied for s in b.segments]
    assert [s.applied for s in a.segments] != [s.applied for s in c.segments]
    interleaved = InterleavedGenerator(lm, temperature=0).generate([q], forced_prefix=_tags(3))[0]
    assert a.completion_ids != interleaved.completion_ids  # other audio, other continuation


def test_random_span_edge_cases():
    rng = np.random.default_rng(0)
    assert random_span(5.0, (0.0, 6.0), rng) == (0.0, 5.0)
    for _ in range(50):
        s = random_span(4.0, (1.0, 3.0), rng)  # no room elsewhere: anywhere in the clip
        assert 0.0 <= s[0] and s[1] <= 4.0 and s[1] - s[0] == pytest.approx(2.0)
        s = random_span(10.0, (4.0, 5.0), rng)
        assert segment_iou(s, (4.0, 5.0)) == 0.0 and 0.0 <= s[0] and s[1] <= 10.0


def test_oracle_segment_inserts_the_annotated_spans(lm):
    q = _query(8, decisive_spans=[(6.0, 7.0), (2.0, 2.5)])
    t = InterleavedGenerator(lm, temperature=0, mode="oracle_segment").generate([q], forced_prefix=_tags(3))[0]
    assert [s.applied for s in t.segments[:2]] == [(6.0, 7.0), (2.0, 2.5)]
    assert [s.source for s in t.segments] == ["oracle"] * 3
    assert t.segments[2].reason == RuntimeReject.NO_ORACLE_SPAN.value and t.n_relistens == 2
    assert t.audio_spans[1:] == [(6.0, 7.0), (2.0, 2.5)]


# ------------------------------------------------------------------ pieces and plumbing
def test_compact_cache_is_exact(lm):
    """Re-packing a cache with holes gives the same next-token logits as the holey one."""
    from echo_lite.decode_step import growing_cache
    from echo_lite.trace import mrope_positions

    th = lm.model
    torch.manual_seed(0)
    ids = torch.randint(10, 300, (2, 12))
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # left padding
    attn[1, 5:9] = 0  # a hole in the middle, as a resumed neighbour leaves behind
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = growing_cache()
        th.model(input_ids=ids, attention_mask=attn, position_ids=mrope_positions(pos), past_key_values=cache,
                 use_cache=True)
        step = torch.tensor([[7], [8]])
        nxt = torch.cat([attn, torch.ones(2, 1, dtype=torch.long)], 1)
        step_pos = mrope_positions(attn.sum(1, keepdim=True))
        import copy

        holey = th.model(input_ids=step, attention_mask=nxt, position_ids=step_pos,
                         past_key_values=copy.deepcopy(cache), use_cache=True).last_hidden_state
        packed_mask = compact_cache(cache, attn, [0, 1])
        assert packed_mask.shape[1] == 9 and packed_mask.sum().item() == attn.sum().item()
        packed = th.model(input_ids=step, attention_mask=torch.cat([packed_mask, torch.ones(2, 1, dtype=torch.long)], 1),
                          position_ids=step_pos, past_key_values=cache, use_cache=True).last_hidden_state
        assert torch.allclose(holey, packed, atol=1e-5)
        kept = compact_cache(cache, torch.cat([packed_mask, torch.ones(2, 1, dtype=torch.long)], 1), [1])
        assert kept.shape == (1, 9) and cache.layers[0].keys.shape[0] == 1


def test_trace_round_trips_through_json(lm):
    q = _query(9)
    t = InterleavedGenerator(lm, temperature=0).generate([q], forced_prefix=_tags(2))[0]
    again = Trace.from_dict(json.loads(json.dumps(t.to_dict())), wav=q.wav)
    assert again.to_dict() == t.to_dict()
    assert all(np.array_equal(a, b) for a, b in zip(again.clips(), t.clips(), strict=True))
    with pytest.raises(ValueError, match="waveform"):
        Trace.from_dict(t.to_dict()).clips()
    with torch.no_grad():
        assert torch.equal(trace_logprobs(lm.model, [again]).logprobs, trace_logprobs(lm.model, [t]).logprobs)


def test_bad_inputs_get_clear_errors(lm):
    q = _query(0)
    with pytest.raises(RuntimeInputError, match="mode 'two_pass'"):
        InterleavedGenerator(lm, mode="two_pass")
    with pytest.raises(RuntimeInputError, match="cache"):
        InterleavedGenerator(lm, cache="maybe")
    gen = InterleavedGenerator(lm, temperature=0)
    with pytest.raises(RuntimeInputError, match="at least one query"):
        gen.generate([])
    with pytest.raises(RuntimeInputError, match="2 seeds for 1 queries"):
        gen.generate([q], seeds=[1, 2])
    with pytest.raises(RuntimeInputError, match="placeholder"):
        gen.generate([q], forced_prefix="<think><|AUDIO|>")
    with pytest.raises(RuntimeInputError, match="decisive_spans"):
        InterleavedGenerator(lm, mode="oracle_segment").generate([q])
    with pytest.raises(RuntimeInputError, match="'bad'.*1-D"):
        Query(wav=np.zeros((2, 16000)), question="q", id="bad")
    with pytest.raises(RuntimeInputError, match="NaN"):
        Query(wav=np.full(16000, np.nan), question="q")
    with pytest.raises(RuntimeInputError, match="too short"):
        Query(wav=np.zeros(100), question="q")


def test_cli_listen_writes_the_trace(tmp_path, capsys):
    from echo_lite.audio import write_audio
    from echo_lite.cli import main

    wav = tmp_path / "tones.wav"
    write_audio(wav, tone_clip([262.0, 330.0, 392.0, 440.0]))
    out = tmp_path / "trace.json"
    rc = main(["listen", "--audio", str(wav), "--question", "Which tone is second?", "--choices", "C4", "E4",
               "--temperature", "0", "--forced-prefix", "<think>listen <seg>1.5, 2.5</seg>, then <seg>9.0, 9.5</seg>",
               "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    # the two forced tags (what the base writes after them is its own: the shipped base walks on)
    assert [s["reason"] for s in d["segments"][:2]] == [None, SegmentReject.OUT_OF_RANGE.value]
    assert d["audio_spans"][:2] == [[0.0, 6.0], [1.5, 2.5]]
    assert len(d["audio_spans"]) == 1 + sum(s["reason"] is None for s in d["segments"])  # the clip + each accepted span
    printed = capsys.readouterr().out
    assert "inserted" in printed and "out_of_range" in printed
    with pytest.raises(SystemExit):
        main(["listen", "--audio", str(wav), "--question", "q", "--mode", "two_pass"])


def test_batched_logprobs_match_teacher_forcing_on_the_trained_base():
    """Rows of different clip lengths (not whole hops) decoded together, on the shipped base
    whose audio matters: the recorded log-probs equal ONE teacher-forced forward (GRPO's
    contract), which also batches the clips differently."""
    from echo_lite.model import load_preset_model

    base = load_preset_model("tiny")
    queries = []
    for i, n_tones in enumerate((3, 5, 7, 4)):
        q = _query(i, n_tones=n_tones)
        q.wav = q.wav[: len(q.wav) - 37 * (i + 1)]  # odd lengths: a partial last mel frame
        queries.append(q)
    traces = InterleavedGenerator(base, temperature=0.7).generate(
        queries, seed=5, forced_prefix=[_tags(k) for k in (0, 1, 2, 1)])
    assert sum(t.n_relistens for t in traces) >= 3
    with torch.no_grad():
        out = trace_logprobs(base.model, traces)
    for i, t in enumerate(traces):
        n = len(t.completion_ids)
        sampled = out.sampled_mask[i, :n]
        diff = (out.logprobs[i, :n][sampled] - torch.tensor(t.logprobs)[sampled]).abs().max()
        assert diff < 1e-4, f"trace {i}: teacher-forced log-probs differ by {diff:.2e}"
