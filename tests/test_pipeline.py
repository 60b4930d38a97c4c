"""The demo's check against the shipped table (`compare_tables`), on the real shipped file."""

import copy
import json
import math

from echo_lite.pipeline import SHIPPED_RESULTS, TABLE_KEYS, compare_tables


def _shipped() -> list[dict]:
    return json.loads(SHIPPED_RESULTS.read_text())


def test_the_shipped_table_equals_itself_nan_included():
    rows = _shipped()
    assert len(rows) == 11 and any(math.isnan(r["segment_iou"]) for r in rows)  # the base row cites nothing
    assert set(TABLE_KEYS) <= set(rows[0])
    assert compare_tables(copy.deepcopy(rows), rows) == []


def test_timings_are_not_compared_but_every_metric_is():
    ref = _shipped()
    rows = copy.deepcopy(ref)
    for r in rows:
        r["seconds_per_answer"] *= 3.0  # another machine
    assert compare_tables(rows, ref) == []
    rows[3]["accuracy"] += 1 / 300  # one answer more right
    rows[5]["segment_iou"] = 0.5
    diffs = compare_tables(rows, ref)
    assert len(diffs) == 2
    assert diffs[0].startswith(f"{ref[3]['name']}: accuracy {ref[3]['accuracy'] + 1 / 300:.4f}")
    assert diffs[1].startswith(f"{ref[5]['name']}: segment_iou 0.5000")


def test_missing_and_extra_rows_are_named():
    ref = _shipped()
    rows = copy.deepcopy(ref[:-1]) + [{**ref[0], "name": "a new row"}]
    assert compare_tables(rows, ref) == [f"{ref[-1]['name']}: not in this run", "a new row: not in the reference"]


def test_a_grpo_run_from_another_sft_model_is_not_reused(tmp_path):
    from pathlib import Path

    import pytest

    from echo_lite.config import get_preset
    from echo_lite.pipeline import PipelineError, run_grpo_stage

    preset = get_preset("tiny")
    legacy = tmp_path / "grpo"  # written by a version without the marker: it started from round 1's SFT
    (legacy / "final").mkdir(parents=True)
    (legacy / "final" / "model.safetensors").write_bytes(b"")
    second_round = tmp_path / "sft_self" / "final"
    with pytest.raises(PipelineError, match="a GRPO run from .*sft/final, not from .*sft_self/final"):
        run_grpo_stage(tmp_path, "grpo", tmp_path / "data", preset, second_round)
    # from the model it did start from, the finished run is reused (nothing is trained here)
    assert run_grpo_stage(tmp_path, "grpo", tmp_path / "data", preset, tmp_path / "sft" / "final") == legacy / "final"
    assert (legacy / "started_from.txt").read_text() == str(Path(tmp_path / "sft" / "final"))
