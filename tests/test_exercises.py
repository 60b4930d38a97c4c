"""Each exercise checker accepts the reference, rejects a wrong answer with a useful message,
and reports an exercise not attempted yet without failing."""

import numpy as np
import pytest

from echo_lite import exercises as ex
from echo_lite.audio import audio_token_count
from echo_lite.rewards import consistency_reward, format_reward
from echo_lite.segments import segment_iou


def _todo(*a):
    raise NotImplementedError


def test_consistency_reward_checker():
    assert ex.check_consistency_reward(consistency_reward) is True
    assert ex.check_consistency_reward(_todo) == ex.NOT_ATTEMPTED

    def no_floor(text):  # forgets the -0.5 floor
        return -0.1 * sum(1 for t in parse(text) if t and (t[0].isupper() or t[0] == "<"))

    def parse(text):
        return [part for part in text.split("</seg>")[1:]]

    with pytest.raises(ex.ExerciseError, match=r"case 4 .*expected -0.5, got -0.8"):
        ex.check_consistency_reward(no_floor)

    def strips_space(text):  # the token rule: not the released one
        from echo_lite.config import RewardSpec
        return consistency_reward(text, RewardSpec(consistency_rule="token"))

    with pytest.raises(ex.ExerciseError, match=r"case 2 .*The tone.*expected 0.0, got -0.1"):
        ex.check_consistency_reward(strips_space)


def test_format_and_token_checkers():
    assert ex.check_format_reward(lambda t: format_reward(t)) is True
    with pytest.raises(ex.ExerciseError, match="format reward: case 1"):
        ex.check_format_reward(lambda t: 0.5 if "<answer>" in t else 0.0)
    assert ex.check_audio_token_count(audio_token_count) is True
    with pytest.raises(ex.ExerciseError, match="audio token count: .*Hint: frames = n // 160"):
        ex.check_audio_token_count(lambda n: n * 25 // 16000)
    with pytest.raises(ex.ExerciseError, match="raised ZeroDivisionError"):
        ex.check_audio_token_count(lambda n: 1 // 0)


def test_iou_advantages_and_parse_checkers():
    assert ex.check_segment_iou(segment_iou) is True
    with pytest.raises(ex.ExerciseError, match="segment IoU"):
        ex.check_segment_iou(lambda a, b: max(0.0, min(a[1], b[1]) - max(a[0], b[0])))  # intersection only
    def adv(rewards, g):
        r = np.asarray(rewards).reshape(-1, g)
        return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1).tolist()
    assert ex.check_group_advantages(adv) is True
    with pytest.raises(ex.ExerciseError, match="group advantages: case 0"):
        ex.check_group_advantages(lambda r, g: [x - np.mean(r) for x in r])  # no std, whole batch
    from echo_lite.segments import parse_segments
    assert ex.check_parse_spans(lambda t: [x.span for x in parse_segments(t) if x.ok]) is True
    with pytest.raises(ex.ExerciseError, match="parse spans: case 1"):
        ex.check_parse_spans(lambda t: [x.span for x in parse_segments(t) if x.span])  # keeps reversed spans


def test_span_choice_checker():
    decisive = [(12.0, 13.5)]
    assert ex.check_span_choice((12.0, 13.4), decisive, 20.0) is True
    assert ex.check_span_choice(None, decisive, 20.0) == ex.NOT_ATTEMPTED
    with pytest.raises(ex.ExerciseError, match="IoU 0.00 < 0.5; move later"):
        ex.check_span_choice((2.0, 3.0), decisive, 20.0)
    with pytest.raises(ex.ExerciseError, match="inserts nothing under 0.2 s"):
        ex.check_span_choice((12.0, 12.1), decisive, 20.0)
    with pytest.raises(ex.ExerciseError, match="the clip"):
        ex.check_span_choice((19.0, 25.0), decisive, 20.0)
