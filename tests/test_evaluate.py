"""The synthetic benchmark: measures computed from records by hand, and a real run of the tiny
model over a split written by the synth stage."""

import json

import numpy as np
import pytest

from echo_lite.data.formats import Item, read_manifest
from echo_lite.evaluate import (
    SPAN_OUTCOMES,
    evaluate_split,
    named_citations,
    named_iou,
    span_outcome,
    span_outcomes,
    summarize,
    text_only_span,
)
from echo_lite.model import load_preset_model
from echo_lite.segments import segment_iou


def _rec(correct, cited, ious, late=False, relistens=None, hit=None, qtype="tone_at_time", text_only=None):
    return {"id": "x", "qtype": qtype, "mode": "interleaved", "late_cue": late, "answer": "a", "predicted": "a",
            "text_only_iou": text_only,
            "correct": correct, "matched": True, "well_formed": True, "n_cited": len(cited),
            "n_relistens": len(cited) if relistens is None else relistens, "cited": cited, "applied": cited,
            "span_iou": ious, "any_event_iou": ious, "decisive_hit": hit, "positions": [c[0] / 20 for c in cited], "overlap": 0.0,
            "tokens": 10, "seconds": 0.5, "text": ""}


def test_summary_figures_by_hand():
    recs = [_rec(True, [(1, 2)], [1.0], hit=1.0), _rec(False, [(12, 13), (14, 15)], [0.5, 0.0], late=True, hit=0.5),
            _rec(True, [], [], late=True, hit=None, qtype="order")]
    s = summarize(recs)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["late_cue_accuracy"] == pytest.approx(0.5) and s["late_cue_n"] == 2
    assert s["segment_iou"] == pytest.approx(0.5)  # (1.0 + 0.5 + 0.0) / 3 cited spans
    assert s["decisive_hit_rate"] == pytest.approx(0.75)  # answers that cite something
    assert s["with_segment"] == pytest.approx(2 / 3)
    assert s["segments_per_answer"] == pytest.approx(1.0)
    assert s["relisten_count_histogram"]["0"] == pytest.approx(1 / 3)
    assert s["accuracy_per_qtype"] == {"order": 1.0, "tone_at_time": 0.5}
    assert all(s[k] != s[k] for k in ("time_given_segment_iou", "text_only_segment_iou"))  # NaN: no time given
    with pytest.raises(ValueError):
        summarize([])


def test_time_given_spans_are_measured_beside_the_text_only_rule():
    recs = [_rec(True, [(1, 2)], [0.8], text_only=0.5), _rec(False, [(3, 4), (5, 6)], [0.2, 0.0], text_only=0.3),
            _rec(True, [(7, 8)], [1.0], qtype="order")]  # no time in its question: in neither figure
    s = summarize(recs)
    assert s["time_given_segment_iou"] == pytest.approx((0.8 + 0.2 + 0.0) / 3)
    assert s["text_only_segment_iou"] == pytest.approx(0.4)
    assert s["segment_iou"] == pytest.approx(2.0 / 4)


def _item(events, duration=10.0):
    return Item(id="i", audio="a.wav", duration=duration, question="q?", choices=[], answer="a", response="",
                qtype="order", events=[{"onset": a, "offset": b, "label": lab} for a, b, lab in events],
                decisive_spans=[], cited_spans=[], split="eval", seed=0)


def test_cited_spans_are_scored_against_the_events_they_name():
    item = _item([(1.0, 2.0, "C4 tone"), (3.0, 4.0, "falling chirp"), (6.0, 7.0, "C4 tone"), (8.0, 9.0, "spoken two")])
    text = ("<think>I check <seg>1.0, 2.0</seg>, the falling chirp; right after it <seg>3.0, 4.0</seg>, there is "
            "the falling chirp. The tone <seg>6.5, 7.0</seg>. Then <seg>8.0, 12.0</seg>, the rising chirp."
            "</think><answer>spoken two</answer>")
    named = named_citations(text, item)
    # the names of each span's own clause; the answer after </think> names none; the last end is clamped
    assert named == [((1.0, 2.0), ("falling chirp",)), ((3.0, 4.0), ("falling chirp",)), ((6.5, 7.0), ()),
                     ((8.0, 10.0), ("rising chirp",))]
    ious = [named_iou(span, names, item.events) for span, names in named]
    # a span on the C4 tone that names the chirp scores 0 (against any event it would score 1); a span
    # that names nothing scores 0; a sound the clip lacks scores 0
    assert ious == [0.0, 1.0, 0.0, 0.0]
    assert named_iou((6.5, 7.0), ["c4 TONE"], item.events) == pytest.approx(0.5)  # the better of the two C4 tones
    assert named_citations("<think>At <seg>11.0, 12.0</seg>, the C4 tone.</think>", item) == []  # starts past the end


def test_span_outcomes_tell_a_span_off_the_sound_from_a_sound_misnamed():
    item = _item([(1.0, 2.0, "C4 tone"), (3.0, 4.0, "falling chirp"), (6.0, 7.0, "C4 tone"), (8.0, 9.0, "spoken two")])
    ev = item.events
    assert span_outcome((1.2, 2.5), ["c4 tone"], ev) == "names the sound it overlaps most"
    assert span_outcome((1.8, 3.9), ["C4 tone"], ev) == "names a sound it overlaps less"  # mostly the chirp
    assert span_outcome((3.0, 4.0), ["spoken two"], ev) == "overlaps a sound, names one heard elsewhere"
    assert span_outcome((3.0, 4.0), ["6 knocks"], ev) == "overlaps a sound, names one the clip lacks"
    assert span_outcome((4.5, 5.5), ["falling chirp"], ev) == "lies on silence"
    assert span_outcome((2.0, 3.0), ["C4 tone"], ev) == "lies on silence"  # touching edges overlap nothing
    assert span_outcome((1.0, 2.0), [], ev) == "names nothing"
    assert SPAN_OUTCOMES[0] == "names the sound it overlaps most" and len(set(SPAN_OUTCOMES)) == 6

    recs = [{"id": "i", "cited": [[1.2, 2.5], [3.0, 4.0], [4.5, 5.5]], "span_names": [["C4 tone"], ["6 knocks"], []],
             "span_iou": [0.5, 0.0, 0.0]},
            {"id": "i", "cited": [[6.0, 7.0]], "span_names": [["C4 tone"]], "span_iou": [1.0]}]
    out = span_outcomes(recs, [item])
    assert list(out) == list(SPAN_OUTCOMES)
    assert out["names the sound it overlaps most"] == {"share": 0.5, "n": 2, "mean_iou": 0.75}
    assert out["overlaps a sound, names one the clip lacks"]["n"] == 1 and out["names nothing"]["share"] == 0.25
    assert np.isnan(out["lies on silence"]["mean_iou"]) and sum(o["n"] for o in out.values()) == 4
    with pytest.raises(ValueError, match="no item to read their events from, e.g. 'other'"):
        span_outcomes([{**recs[0], "id": "other"}], [item])


def test_text_only_span_reads_the_question():
    assert text_only_span("Which tone is heard at 7.1 s?", 20.0) == pytest.approx((6.35, 7.85))
    assert text_only_span("What is heard at 0.2 s?", 20.0) == pytest.approx((0.0, 1.5))  # kept inside the clip
    assert text_only_span("What is heard at 19.9 s?", 20.0) == pytest.approx((18.5, 20.0))
    assert text_only_span("How many knocks are heard between 3.0 s and 7.5 s?", 20.0) == (3.0, 7.5)
    assert text_only_span("From the tone at 4.0 s to the next tone, does the pitch go up or down?", 9.0,
                          width=1.0) == pytest.approx((3.5, 4.5))
    assert text_only_span("Which of these sounds is heard first?", 20.0) is None
    assert text_only_span("How long is the silence between the 3 knocks and the C4 tone?", 20.0) is None


@pytest.fixture(scope="module")
def eval_split(small_synth):
    return small_synth / "eval"


def test_real_run_on_a_synth_split(eval_split, tmp_path):
    lm = load_preset_model("tiny")
    lm.preset = lm.preset.with_overrides(segments={"max_new_tokens": 24})
    res = evaluate_split(lm, eval_split, mode="oracle_segment", limit=4)
    items = {it.id: it for it in read_manifest(eval_split / "manifest.jsonl")}
    assert res.metrics["n"] == len(res.records) == 4
    for r in res.records:
        assert r["mode"] == "oracle_segment" and r["tokens"] <= 24
        item = items[r["id"]]
        prior = text_only_span(item.question, item.duration)
        assert (r["text_only_iou"] is None) == (prior is None)
        if prior is not None:  # the rule's span against the events the question is about
            asked = [tuple(d) for d in item.decisive_spans] or [(e["onset"], e["offset"]) for e in item.events]
            assert r["text_only_iou"] == max(segment_iou(prior, d) for d in asked)
        assert r["span_iou"] == [named_iou(tuple(c), n, item.events) for c, n in zip(r["cited"], r["span_names"])]
        assert r["correct"] in (True, False) and isinstance(r["text"], str)
    assert 0 < sum(r["text_only_iou"] is not None for r in res.records) < 4  # both kinds of question ran
    path = res.save(tmp_path, "oracle")
    assert json.loads(path.read_text())["n"] == 4
    assert len((tmp_path / "oracle.jsonl").read_text().splitlines()) == 4
