"""The synthetic benchmark: measures computed from records by hand, and a real run of the tiny
model over a split written by the synth stage."""

import json

import pytest

from echo_lite.data.synth import synthesize
from echo_lite.evaluate import evaluate_split, summarize
from echo_lite.model import load_preset_model


def _rec(correct, cited, ious, late=False, relistens=None, hit=None, qtype="tone_at_time"):
    return {"id": "x", "qtype": qtype, "mode": "interleaved", "late_cue": late, "answer": "a", "predicted": "a",
            "correct": correct, "matched": True, "well_formed": True, "n_cited": len(cited),
            "n_relistens": len(cited) if relistens is None else relistens, "cited": cited, "applied": cited,
            "span_iou": ious, "decisive_hit": hit, "positions": [c[0] / 20 for c in cited], "overlap": 0.0,
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
    with pytest.raises(ValueError):
        summarize([])


@pytest.fixture(scope="module")
def eval_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, preset="tiny", n=24, seed=5, write_hf=False, progress=False)
    return out / "eval"


def test_real_run_on_a_synth_split(eval_split, tmp_path):
    lm = load_preset_model("tiny")
    lm.preset = lm.preset.with_overrides(segments={"max_new_tokens": 24})
    res = evaluate_split(lm, eval_split, mode="oracle_segment", limit=4)
    assert res.metrics["n"] == len(res.records) == 4
    for r in res.records:
        assert r["mode"] == "oracle_segment" and r["tokens"] <= 24
        assert r["correct"] in (True, False) and isinstance(r["text"], str)
    path = res.save(tmp_path, "oracle")
    assert json.loads(path.read_text())["n"] == 4
    assert len((tmp_path / "oracle.jsonl").read_text().splitlines()) == 4
