import dataclasses

import pytest

from echo_lite.config import DataSpec, get_preset
from echo_lite.data.filters import DROPPED, RL, SFT, check_cot, check_qa, citations, judge_item
from echo_lite.data.questions import Draft
from echo_lite.data.world import Event, Scene, label_vocabulary

SPEC = DataSpec()
LIMITS = get_preset("tiny").segments
C5 = Event("tone", "C5 tone", 2.0, 3.5, {"pitch": "C5", "hz": 523.25})
KN = Event("knocks", "3 knocks", 6.0, 6.9, {"count": 3, "interval": 0.3})
E4 = Event("tone", "E4 tone", 14.0, 15.0, {"pitch": "E4", "hz": 329.63})
SCENE = Scene("s", 20.0, (C5, KN, E4), 0)
CHOICES = ("C5 tone", "E4 tone", "G4 tone", "C6 tone")


def _draft(think="The question is about 2.5 seconds, so I listen to <seg>2.0, 3.5</seg>, this is the C5 tone.",
           **kw):
    base = dict(qtype="tone_at_time", question="Which tone is heard at 2.5 s?", choices=CHOICES, answer="C5 tone",
                think=think, decisive_spans=((2.0, 3.5),), query={"t": 2.5})
    base.update(kw)
    return Draft(**base)


def test_a_good_item_goes_to_sft():
    verdict, cites = judge_item(SCENE, _draft(), SPEC, LIMITS)
    assert verdict.route() == (SFT, None)
    assert [c.span for c in cites] == [(2.0, 3.5)] and cites[0].names == ("C5 tone",)


@pytest.mark.parametrize("change,reason", [
    (dict(answer="B5 tone"), "answer_not_in_choices"),
    (dict(choices=("C5 tone", "c5 tone", "E4 tone")), "duplicate_or_empty_choices"),
    (dict(choices=("C5 tone",)), "too_few_choices"),
    (dict(answer="E4 tone"), "answer_wrong"),
    (dict(query={"t": 25.0}), "answer_wrong"),
    (dict(question="Which tone is heard at 22.5 s?"), "question_time_outside_clip"),
    (dict(decisive_spans=((18.0, 21.0),)), "decisive_span_outside_clip"),
])
def test_qa_failures_drop_the_item_with_a_reason(change, reason):
    draft = _draft(**change)
    assert reason in check_qa(SCENE, draft)
    verdict, _ = judge_item(SCENE, draft, SPEC, LIMITS)
    assert verdict.route()[0] == DROPPED


def test_two_true_options_are_not_unique():
    overlapped = Scene("o", 20.0, (C5, Event("tone", "E4 tone", 2.4, 3.0, {"pitch": "E4", "hz": 329.63})), 0)
    assert check_qa(overlapped, _draft()) == ["answer_not_unique"]


@pytest.mark.parametrize("think,reason", [
    ("I listen to <seg>4.0, 5.5</seg>, this is the C5 tone.", "seg_misplaced"),  # IoU 0 with the C5 tone
    ("I listen to <seg>2.0, 3.5</seg>, this is the G4 tone.", "cites_absent_event"),
    ("I listen to <seg>2.0, 3.5</seg>, this is it.", "seg_names_nothing"),
    ("I listen to <seg>2.0, 3.5</seg>. This is the C5 tone.", "seg_starts_new_sentence"),
    ("I listen to <seg>19.0, 24.0</seg>, this is the C5 tone.", "seg_out_of_range"),
    ("I listen to <seg>2.0 to 3.5</seg>, this is the C5 tone.", "seg_malformed"),
    ("I listen to <seg>3.0, 2.0</seg>, this is the C5 tone.", "seg_reversed"),
    ("I listen to <seg>2.0, 2.1</seg>, this is the C5 tone.", "seg_too_short"),
    ("It is the C5 tone.", "no_segment"),
    ("I listen to <seg>2.0, 3.5</seg>, this is the C5 tone.</think><think>", "bad_format"),
])
def test_cot_failures_route_to_rl_with_a_reason(think, reason):
    draft = _draft(think=think)
    reasons, _ = check_cot(SCENE, draft, SPEC, LIMITS)
    assert reason in reasons, reasons
    verdict, _ = judge_item(SCENE, draft, SPEC, LIMITS)
    assert verdict.route() == (RL, "cot:" + verdict.cot_reasons[0])


def test_iou_threshold_is_the_presets():
    loose = _draft(think="I listen to <seg>2.8, 4.2</seg>, this is the C5 tone.")  # IoU 0.7/2.2 = 0.32
    assert check_cot(SCENE, loose, SPEC, LIMITS)[0] == []
    assert check_cot(SCENE, loose, dataclasses.replace(SPEC, cite_iou=0.5), LIMITS)[0] == ["seg_misplaced"]


def test_each_span_is_checked_against_the_event_its_clause_names():
    vocab = label_vocabulary()
    think = ("I check which starts first: <seg>2.0, 3.5</seg>, the C5 tone; then <seg>6.0, 6.9</seg>, the 3 knocks; "
             "then <seg>14.0, 15.0</seg>, the E4 tone. So the C5 tone is first.")
    cites = citations(think, vocab, 20.0, LIMITS)
    assert [c.names for c in cites] == [("C5 tone",), ("3 knocks",), ("E4 tone",)]
    swapped = think.replace("the 3 knocks", "the E4 tone").replace("the E4 tone. So", "the 3 knocks. So")
    reasons, _ = check_cot(SCENE, _draft(think=swapped), SPEC, LIMITS)
    assert reasons == ["seg_misplaced"]


def test_cot_longer_than_the_budget_is_caught(tiny_tokenizer):
    long = _draft(think="I listen to <seg>2.0, 3.5</seg>, this is the C5 tone" + ", again" * 200 + ".")
    assert "cot_too_long" in check_cot(SCENE, long, SPEC, LIMITS, tiny_tokenizer, 160)[0]
    assert check_cot(SCENE, _draft(), SPEC, LIMITS, tiny_tokenizer, 160)[0] == []


def test_a_judge_can_only_tighten_the_rules():
    calls = []

    def judge(scene, simulation, draft):
        calls.append(draft.answer)
        return {"qa_valid": True, "cot_valid": False}

    verdict, _ = judge_item(SCENE, _draft(), SPEC, LIMITS, "sim", judge)
    assert verdict.route() == (RL, "cot:judge_cot_invalid") and calls == ["C5 tone"]
    verdict, _ = judge_item(SCENE, _draft(), SPEC, LIMITS, "sim", lambda *a: {"qa_valid": False, "cot_valid": True})
    assert verdict.route() == (DROPPED, "judge_qa_invalid")
    verdict, _ = judge_item(SCENE, _draft(), SPEC, LIMITS, "sim", lambda *a: {"error": "timeout"})
    assert verdict.route() == (DROPPED, "judge_failed")
    verdict, _ = judge_item(SCENE, _draft(answer="G4 tone"), SPEC, LIMITS, "sim", judge)
    assert verdict.route()[0] == DROPPED and len(calls) == 1  # rule failures are not sent to the judge
