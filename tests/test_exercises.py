"""Each exercise checker accepts the reference, rejects a wrong answer with a useful message,
and reports an exercise not attempted yet without failing."""

import re

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


def test_audio_share_checker():
    import torch

    from echo_lite.attention import audio_share

    assert ex.check_audio_share(audio_share) is True
    assert ex.check_audio_share(_todo) == ex.NOT_ATTEMPTED

    def no_division(attentions, mask):  # assumes every row sums to 1
        return torch.stack([(a * mask[:, None, None, :]).sum(-1) for a in attentions]).mean(dim=(0, 2))

    with pytest.raises(ex.ExerciseError, match=r"audio share: case 3 .*rows not summing to 1\): expected "
                                               r"\[\[1.0, 1.0, 1.0, 0.86833, 0.608831\]\], got \[\[0.99.*Hint: .*row's total"):
        ex.check_audio_share(no_division)

    def over_keys(attentions, mask):  # averages over the keys instead of the heads: wrong shape
        return torch.stack([(a * mask[:, None, None, :]).sum(-1) for a in attentions]).mean(dim=(0, 3))

    with pytest.raises(ex.ExerciseError, match=r"case 0 \(1 layer\(s\) of shape \(B=1, H=1, Q=4, K=4\).*expected "
                                               r"\[\[1.0, 1.0, 0.5.*got \[\[0.77"):
        ex.check_audio_share(over_keys)


def _tone_at(scene, t):
    return next(e for e in scene.events if e.kind == "tone" and e.onset <= t < e.offset)


def test_oracle_span_checker():
    assert ex.check_oracle_span(lambda scene, t: _tone_at(scene, t).span) is True
    assert ex.check_oracle_span(_todo) == ex.NOT_ATTEMPTED
    with pytest.raises(ex.ExerciseError, match=r"oracle span: case 0 \(scene-00000105, .*heard at 16.5 s\?'\): "
                                               r"expected \(16.4, 16.7\), got \(16.0, 17.0\)"):
        ex.check_oracle_span(lambda scene, t: (t - 0.5, t + 0.5))  # a window around t, not the event
    with pytest.raises(ex.ExerciseError, match=r"case 0 .*expected \(16.4, 16.7\), got \(8.1, 9.6\)"):
        ex.check_oracle_span(lambda scene, t: next(e.span for e in scene.events if e.kind == "tone"))


def test_tone_think_checker():
    def teacher(scene, t, sep=", this"):
        e = _tone_at(scene, t)
        return f"The question is about {t} seconds, so I listen to <seg>{e.onset:.1f}, {e.offset:.1f}</seg>{sep} is the {e.label}."

    assert ex.check_tone_think(teacher) is True
    assert ex.check_tone_think(_todo) == ex.NOT_ATTEMPTED
    with pytest.raises(ex.ExerciseError, match=r"teacher think: case 0 .*to rl \(cot:seg_starts_new_sentence\); "
                                               r"expected sft\. The reference writes"):
        ex.check_tone_think(lambda scene, t: teacher(scene, t, sep=". This"))
    with pytest.raises(ex.ExerciseError, match=r"cites \[\(16.4, 16.6\)\], expected the tone's exact span \(16.4, 16.7\)"):
        ex.check_tone_think(lambda scene, t: f"I listen to <seg>{t - 0.1:.1f}, {t + 0.1:.1f}</seg>, this is the "
                                             f"{_tone_at(scene, t).label}.")
    with pytest.raises(ex.ExerciseError, match="expected a str, got tuple"):
        ex.check_tone_think(lambda scene, t: _tone_at(scene, t).span)


def test_cited_span_checker():
    assert ex.check_cited_span(ex.reference_cited_span) is True
    assert ex.check_cited_span(_todo) == ex.NOT_ATTEMPTED

    def first_event_only(scene, span, label):  # ignores a second event with the same label
        events = [e for e in scene.events if e.label.lower() == label.lower()]
        if not events:
            return "cites_absent_event"
        return "ok" if segment_iou(span, events[0].span) >= 0.3 else "seg_misplaced"

    with pytest.raises(ex.ExerciseError, match=r"cited span: case 6 \(scene-00000099: <seg>9.7, 12.4</seg> cited as "
                                               r"'C6 tone'\): expected 'ok', got 'seg_misplaced'"):
        ex.check_cited_span(first_event_only)
    with pytest.raises(ex.ExerciseError, match=r"case 2 .*<seg>20.0, 21.0</seg>.*expected 'seg_misplaced', got 'ok'"):
        ex.check_cited_span(lambda scene, span, label: "ok")

    def case_sensitive(scene, span, label):
        events = [e for e in scene.events if e.label == label]
        if not events:
            return "cites_absent_event"
        return "ok" if max(segment_iou(span, e.span) for e in events) >= 0.3 else "seg_misplaced"

    with pytest.raises(ex.ExerciseError, match=r"case 7 .*'c6 tone'\): expected 'ok', got 'cites_absent_event'"):
        ex.check_cited_span(case_sensitive)


def test_string_match_checker():
    from echo_lite.scoring import string_match

    assert ex.check_string_match(string_match) is True
    assert ex.check_string_match(_todo) == ex.NOT_ATTEMPTED

    def first_option_fallback(answer, prediction, choices):  # the Echo authors' matcher
        if any(string_match(c, prediction, choices) for c in choices):
            return string_match(answer, prediction, choices)
        return answer == choices[0]

    with pytest.raises(ex.ExerciseError, match=r"string match: case 2 \('rain', 'rain or thunder', .*\): expected "
                                               r"False, got True\. Hint: .*no fallback to the first option"):
        ex.check_string_match(first_option_fallback)
    with pytest.raises(ex.ExerciseError, match=r"case 3 \('rain', 'I cannot tell'.*expected False, got True"):
        ex.check_string_match(lambda a, p, c: not any(o.lower() in p.lower() for o in c if o != a))  # no answer check
    def any_answer_word(answer, prediction, choices):  # one answer word is enough: 'a tone' passes for 'C4 tone'
        words = lambda t: set(re.findall(r"\w+", t.lower()))  # noqa: E731
        wrong = set().union(*(words(c) for c in choices if c != answer)) - words(answer)
        return bool(words(answer) & words(prediction)) and words(prediction).isdisjoint(wrong)

    with pytest.raises(ex.ExerciseError, match=r"case 6 \('C4 tone', 'a tone'.*expected False, got True"):
        ex.check_string_match(any_answer_word)


def test_mmar_macro_checker():
    def macro(results):
        groups = sorted({g for g, _ in results})
        return sum(100 * np.mean([ok for h, ok in results if h == g]) for g in groups) / len(groups)

    assert ex.check_mmar_macro(macro) is True
    assert ex.check_mmar_macro(_todo) == ex.NOT_ATTEMPTED
    with pytest.raises(ex.ExerciseError, match=r"MMAR macro average: case 0 \(29 items; correct per group: sound 3/8, "
                                               r".*\): expected 43.214.*, got 37.93.*Hint: .*micro average"):
        ex.check_mmar_macro(lambda results: 100 * np.mean([ok for _, ok in results]))  # the micro average

    def over_all_seven(results):  # divides by 7 even when a group has no items
        return sum(100 * np.mean([ok for h, ok in results if h == g]) for g in {g for g, _ in results}) / 7

    with pytest.raises(ex.ExerciseError, match=r"case 1 \(14 items; correct per group: sound 7/10, music 0/1, "
                                               r"speech 2/3\): expected 45.55.*, got 19.52"):
        ex.check_mmar_macro(over_all_seven)


def test_training_memory_checker():
    from echo_lite.model import estimate_training_memory_gib

    assert ex.check_training_memory(estimate_training_memory_gib) is True
    assert ex.check_training_memory(_todo) == ex.NOT_ATTEMPTED

    def in_gb(total, trainable, wb, sb, mb):  # 1e9 bytes, not 2**30
        return (total * wb + trainable * (wb + 2 * sb + mb)) / 1e9

    with pytest.raises(ex.ExerciseError, match=r"training memory: case 0 \(omni-3b full FT, bf16 weights and AdamW "
                                               r"states: 4,700,000,000 weights, 3,397,000,000 trainable.*\): expected "
                                               r"27.73.*, got 29.78.*Hint: .*2\*\*30 bytes"):
        ex.check_training_memory(in_gb)

    def one_moment(total, trainable, wb, sb, mb):  # forgets AdamW's second moment
        return (total * wb + trainable * (wb + sb + mb)) / 2**30

    with pytest.raises(ex.ExerciseError, match=r"case 0 .*expected 27.73.*, got 21.40"):
        ex.check_training_memory(one_moment)


def test_context_audio_tokens_checker():
    assert ex.check_context_audio_tokens(ex.reference_context_audio_tokens) is True
    assert ex.check_context_audio_tokens(_todo) == ex.NOT_ATTEMPTED

    def every_span(seconds, spans):  # inserts every span as written: no validation, no clamping
        return audio_token_count(int(seconds * 16000)) + sum(audio_token_count(int((b - a) * 16000)) for a, b in spans)

    with pytest.raises(ex.ExerciseError, match=r"context audio tokens: case 3 \(10.0, \[\(8.0, 12.0\)\]\): expected "
                                               r"300, got 350\. Hint: .*clamped"):
        ex.check_context_audio_tokens(every_span)

    def no_cap(seconds, spans):  # validates each span but forgets the 8-clip cap
        total = audio_token_count(round(seconds * 16000))
        for a, b in spans:
            b = min(b, seconds)
            if a < seconds and b - a >= 0.2 - 1e-9:
                total += audio_token_count(round(b * 16000) - round(a * 16000))
        return total

    with pytest.raises(ex.ExerciseError, match=r"case 6 \(20.0, .*\): expected 596, got 620"):
        ex.check_context_audio_tokens(no_cap)
