"""Consensus decoding: the choice by hand on written answers, and a real run of the tiny model
whose chosen answers are the very samples the runtime drew."""

import pytest

from echo_lite.audio import load_audio
from echo_lite.consensus import consensus_generate, consensus_index, consensus_scores, span_agreement
from echo_lite.data.formats import read_manifest, resolve_audio
from echo_lite.evaluate import evaluate_items
from echo_lite.interleave import InterleavedGenerator, Query
from echo_lite.model import load_preset_model
from echo_lite.trace import policy_text

CHOICES = ["C4 tone", "E4 tone", "G4 tone"]


def _answer(spans, option):
    cited = " ".join(f"<seg>{a:.1f}, {b:.1f}</seg>, this is it;" for a, b in spans)
    return f"<think>I listen to {cited} so.</think><answer>{option}</answer>"


def test_span_agreement_by_hand():
    assert span_agreement([(1.0, 3.0)], [(2.0, 4.0)]) == pytest.approx(1 / 3)
    # the first answer's spans: (1.0 + 0.0) / 2 ((1, 3) only touches (0, 1)); the second's: 1.0
    assert span_agreement([(0.0, 1.0), (1.0, 3.0)], [(0.0, 1.0)]) == pytest.approx(0.5 * (0.5 + 1.0))
    assert span_agreement([], []) == 1.0 and span_agreement([(0.0, 1.0)], []) == 0.0


def test_the_answer_the_others_agree_with_is_kept():
    texts = [_answer([(5.0, 7.0)], "G4 tone"),  # an outlier: another option, another place
             _answer([(1.0, 2.0)], "E4 tone"),
             _answer([(1.1, 2.0)], "E4 tone"),
             _answer([(1.0, 2.2)], "the E4 tone.")]  # the same option, written otherwise
    scores = consensus_scores(texts, CHOICES)
    assert scores[0] == pytest.approx(0.0)  # agrees with nobody on the option or the place
    assert scores[1] == pytest.approx(2 + 0.9 + 1 / 1.2)  # two options alike, then the spans' IoUs
    assert consensus_index(texts, CHOICES) == 1
    # without the choices the answers' own words are compared: "the e4 tone" differs from "e4 tone"
    assert consensus_scores(texts)[3] == pytest.approx(0 + 1 / 1.2 + 0.9 / 1.2)


def test_malformed_answers_are_kept_only_when_all_are():
    good = _answer([(4.0, 5.0)], "C4 tone")
    broken = "<think>I listen to <seg>1.0, 2.0</seg>, so</think> E4 tone"  # no <answer>
    texts = [broken, broken, broken, good]
    assert consensus_index(texts, CHOICES) == 3  # the only well-formed one, though it agrees least
    assert consensus_index([broken, broken]) == 0  # all malformed: ties go to the first sample
    with pytest.raises(ValueError, match="at least one"):
        consensus_index([])


@pytest.fixture(scope="module")
def split(small_synth):
    return small_synth / "eval"


@pytest.fixture(scope="module")
def lm():
    lm = load_preset_model("tiny")
    lm.preset = lm.preset.with_overrides(segments={"max_new_tokens": 24})
    return lm


def test_consensus_keeps_one_of_the_samples_the_runtime_drew(lm, split):
    items = read_manifest(split / "manifest.jsonl")[:2]
    queries = [Query(wav=load_audio(resolve_audio(split, it.audio, it.id)), question=it.question,
                     choices=it.choices, id=it.id) for it in items]
    gen = InterleavedGenerator(lm, temperature=1.0)
    chosen = consensus_generate(gen, queries, samples=3, seed=7)
    # the same samples drawn directly: seeds 7, 8, 9 for the first question, 10, 11, 12 for the second
    drawn = gen.generate([q for q in queries for _ in range(3)], seeds=range(7, 13))
    for i, (q, t) in enumerate(zip(queries, chosen)):
        group = drawn[3 * i:3 * i + 3]
        k = consensus_index([policy_text(s, lm.tokenizer) for s in group], q.choices)
        assert t.timings["consensus_chosen"] == k and t.timings["consensus_samples"] == 3
        assert t.completion_ids == group[k].completion_ids
    assert len({tuple(s.completion_ids) for s in drawn}) > 1  # the samples differ: there was a choice
    again = consensus_generate(gen, queries, samples=3, seed=7)
    assert [t.completion_ids for t in again] == [t.completion_ids for t in chosen]
    with pytest.raises(ValueError, match="temperature"):
        consensus_generate(InterleavedGenerator(lm, temperature=0.0), queries, samples=3)


def test_evaluation_with_consensus(lm, split):
    items = read_manifest(split / "manifest.jsonl")[:2]
    res = evaluate_items(lm, items, split, temperature=1.0, samples=2, seed=3)
    assert res.metrics["samples"] == 2 and len(res.records) == 2
    queries = [Query(wav=load_audio(resolve_audio(split, it.audio, it.id)), question=it.question,
                     choices=it.choices, decisive_spans=[tuple(s) for s in it.decisive_spans], id=it.id)
               for it in items]
    chosen = consensus_generate(InterleavedGenerator(lm, temperature=1.0), queries, samples=2, seed=3)
    assert [r["text"] for r in res.records] == [policy_text(t, lm.tokenizer) for t in chosen]
    one = evaluate_items(lm, items, split, temperature=1.0, samples=1, seed=3)
    assert one.metrics["samples"] == 1
