"""SFT's second round on the model's own consensus answers: targets that resume exactly and read no
label, and a real (short) round from the shipped SFT model."""

import json

import pytest
from safetensors.torch import load_file

from echo_lite.config import DATA_DIR, get_preset
from echo_lite.model import load_preset_model
from echo_lite.rewards import format_reward
from echo_lite.self_improve import SelfImproveError, consensus_targets, run_self_improve, self_improve_items
from echo_lite.sft import sft_items

SHIPPED_SFT = DATA_DIR / "tiny_sft_round1"  # the first round: where the second starts


@pytest.fixture(scope="module")
def split(small_synth):
    return small_synth / "sft"


@pytest.fixture(scope="module")
def preset():
    return get_preset("tiny").with_overrides(segments={"max_new_tokens": 40},
                                             self_improve={"questions": 4, "samples": 2, "chunk": 2, "steps": 2})


def test_targets_resume_exactly_and_read_no_label(split, preset, tmp_path):
    lm = load_preset_model(preset, SHIPPED_SFT)
    items = sft_items(split)[:4]
    whole = consensus_targets(lm, items, split, tmp_path / "whole", preset)
    assert [t["id"] for t in whole] == [it["id"] for it in items]
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["chunk-00000.jsonl", "chunk-00001.jsonl"]
    # stopped after the first file: the second is answered again, the first read back
    (tmp_path / "whole" / "chunk-00001.jsonl").unlink()
    assert consensus_targets(lm, items, split, tmp_path / "whole", preset) == whole
    # the teacher's responses and the gold answers are not read
    blind = [{**it, "response": "<think>x</think><answer>y</answer>", "answer": "nothing"} for it in items]
    assert consensus_targets(lm, blind, split, tmp_path / "blind", preset) == whole
    # targets on disk for other questions are refused, not mixed in
    with pytest.raises(SelfImproveError, match="other questions"):
        consensus_targets(lm, items[::-1], split, tmp_path / "whole", preset)


def test_only_well_formed_answers_become_targets():
    items = [{"id": "a", "response": "teacher a"}, {"id": "b", "response": "teacher b"}, {"id": "c", "response": "t"}]
    good = "<think>I listen to <seg>1.0, 2.0</seg>, the tone.</think><answer>C4 tone</answer>"
    targets = [{"id": "a", "text": good}, {"id": "b", "text": "<think>cut short"}]
    assert self_improve_items(items, targets) == [{"id": "a", "response": good}]
    assert format_reward(good) > 0


def test_a_short_round_from_the_shipped_sft_model(split, preset, tmp_path):
    items = sft_items(split)
    final = run_self_improve(SHIPPED_SFT, items, split, tmp_path / "round2", preset, disable_tqdm=True)
    log = json.loads((tmp_path / "round2" / "self_improve.json").read_text())
    assert log["questions"] == 4 and 0 < log["well_formed_targets"] <= 4 and log["started_from"] == str(SHIPPED_SFT)
    before, after = load_file(SHIPPED_SFT / "model.safetensors"), load_file(final / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)  # the round trained the model
    untrained = load_preset_model("tiny")  # the base writes no well-formed answer: nothing to learn from
    untrained.model.save_pretrained(tmp_path / "base")
    untrained.tokenizer.save_pretrained(tmp_path / "base")
    with pytest.raises(SelfImproveError, match="none of its 4 consensus answers is well formed"):
        run_self_improve(tmp_path / "base", items, split, tmp_path / "from_base", preset)
    off = preset.with_overrides(self_improve={"questions": 0})
    with pytest.raises(SelfImproveError, match="nothing to do"):
        run_self_improve(SHIPPED_SFT, items, split, tmp_path / "off", off)
