"""Rewards on hand-made answers, cases taken from the method's definitions (ECHO_METHOD.md section 5)."""

import pytest

from echo_lite.config import RewardSpec, get_preset
from echo_lite.rewards import (
    accuracy_reward,
    consistency_reward,
    format_reward,
    grounding_reward,
    grounding_score,
    opens_new_sentence,
    score_response,
    segment_reward,
)

SPEC = get_preset("tiny").rewards
CHOICES = ["C5 tone", "rising chirp", "noise burst", "3 knocks"]
GOOD = "<think>The question asks about 3.4 s, listen to <seg>3.0, 4.0</seg>, this is a C5 tone.</think><answer>C5 tone</answer>"


def test_format():
    assert format_reward(GOOD, SPEC) == 0.5
    assert format_reward("  " + GOOD + "\n", SPEC) == 0.5
    assert format_reward("<answer>C5 tone</answer>", SPEC) == 0.0
    assert format_reward("<think>a</think><think>b</think><answer>x</answer>", SPEC) == 0.0
    assert format_reward("<answer>x</answer><think>a</think>", SPEC) == 0.0  # wrong order
    assert format_reward(GOOD + " trailing words", SPEC) == 0.0


def test_consistency_char_rule_as_released():
    ok = "listen <seg>1.0, 2.0</seg>, this suggests a tone"
    assert consistency_reward(ok, SPEC) == 0.0
    assert consistency_reward("listen <seg>1.0, 2.0</seg>This is a tone", SPEC) == pytest.approx(-0.1)
    assert consistency_reward("listen <seg>1.0, 2.0</seg><seg>3.0, 4.0</seg>, so", SPEC) == pytest.approx(-0.1)
    # the released rule checks the next character, so a space first escapes the penalty
    assert consistency_reward("listen <seg>1.0, 2.0</seg> The tone", SPEC) == 0.0
    many = "".join(f"<seg>{i}.0, {i}.5</seg>Then " for i in range(8))
    assert consistency_reward(many, SPEC) == pytest.approx(-0.5)  # floored


def test_consistency_token_rule_closes_the_loophole():
    spec = RewardSpec(consistency_rule="token")
    assert consistency_reward("listen <seg>1.0, 2.0</seg> The tone", spec) == pytest.approx(-0.1)
    assert consistency_reward("listen <seg>1.0, 2.0</seg>. it is", spec) == pytest.approx(-0.1)
    assert consistency_reward("listen <seg>1.0, 2.0</seg>, it is", spec) == 0.0
    assert not opens_new_sentence("", "token")
    with pytest.raises(ValueError, match="unknown consistency rule"):
        opens_new_sentence("x", "word")


def test_accuracy_binary_and_confidence_shaped():
    assert accuracy_reward(True, SPEC) == 0.5 and accuracy_reward(False, SPEC) == 0.0
    conf = RewardSpec(accuracy_variant="confidence")
    assert accuracy_reward(True, conf, 1.0) == pytest.approx(0.5)
    assert accuracy_reward(True, conf, 0.5) == pytest.approx(0.5 * (1 - 0.25))
    assert accuracy_reward(False, conf, 0.5) == pytest.approx(-0.5 * 0.25)
    assert accuracy_reward(False, conf, 0.0) == 0.0
    with pytest.raises(ValueError, match="probability"):
        accuracy_reward(True, conf, None)


def test_segment_bonus_variants():
    spans = [(1.0, 2.0), (1.5, 2.5)]
    assert segment_reward(True, spans, SPEC) == 0.5
    assert segment_reward(False, spans, SPEC) == 0.0
    assert segment_reward(True, [], SPEC) == 0.0
    assert segment_reward(True, spans, RewardSpec(segment_variant="count")) == pytest.approx(0.5 * 2 / 3)
    # union 1.5 s over 2.0 s cited
    assert segment_reward(True, spans, RewardSpec(segment_variant="non_overlap")) == pytest.approx(0.5 * 0.75)
    assert segment_reward(True, [(0, 1), (2, 3)], RewardSpec(segment_variant="non_overlap")) == pytest.approx(0.5)


def test_grounding_against_annotated_spans():
    decisive = [(3.0, 4.0), (8.0, 9.0)]
    assert grounding_score([(3.1, 4.0)], decisive, 0.3) == 0.5
    assert grounding_score([(3.1, 4.0), (8.0, 8.9)], decisive, 0.3) == 1.0
    assert grounding_score([(5.0, 6.0)], decisive, 0.3) == 0.0
    assert grounding_reward([(3.0, 4.0)], decisive, RewardSpec(grounding=0.5)) == pytest.approx(0.25)
    assert grounding_reward([(3.0, 4.0)], decisive, RewardSpec()) == 0.0  # the paper has none


def test_total_of_a_perfect_answer_is_the_papers_maximum():
    r = score_response(GOOD, CHOICES, "C5 tone", [(3.0, 4.0)], [(3.0, 4.0)], RewardSpec())
    assert r.correct and r.total == pytest.approx(1.5)
    wrong = score_response(GOOD.replace("<answer>C5 tone", "<answer>3 knocks"), CHOICES, "C5 tone", [(3.0, 4.0)])
    assert not wrong.correct and wrong.total == pytest.approx(0.5)
    no_seg = score_response("<think>It is a tone.</think><answer>C5 tone</answer>", CHOICES, "C5 tone", [])
    assert no_seg.total == pytest.approx(1.0)
