"""Checkers for the notebooks' exercises: each runs the student's function (or value) against the
reference implementation on cases taken from the method, and says exactly what differs.

In a notebook: `check_consistency_reward(my_consistency_reward)`. An exercise not attempted yet
(its function raises NotImplementedError) is reported as such without failing the notebook; a
wrong answer raises `ExerciseError` with the first case that differs, the expected value and the
student's; a right one prints a line and returns True.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from echo_lite.audio import audio_token_count
from echo_lite.config import SAMPLE_RATE, RewardSpec, SegmentLimits
from echo_lite.rewards import consistency_reward, format_reward
from echo_lite.segments import parse_segments, segment_iou


class ExerciseError(AssertionError):
    """A wrong answer; the message names the case, what was expected and what came back."""


NOT_ATTEMPTED = "not attempted yet"


def _same(a, b, tol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    return a == b


def check_function(name: str, student: Callable, reference: Callable, cases: Sequence[tuple], tol: float = 1e-6,
                   hint: str = "") -> bool | str:
    """Compare `student(*case)` with `reference(*case)` on every case; raise on the first difference."""
    for i, case in enumerate(cases):
        expected = reference(*case)
        try:
            got = student(*case)
        except NotImplementedError:
            print(f"{name}: {NOT_ATTEMPTED}")
            return NOT_ATTEMPTED
        except Exception as err:  # the student's bug: report it with the case that triggered it
            raise ExerciseError(f"{name}: case {i} {case!r} raised {type(err).__name__}: {err}") from err
        if not _same(got, expected, tol):
            raise ExerciseError(f"{name}: case {i} {case!r}: expected {expected!r}, got {got!r}."
                                + (f" Hint: {hint}" if hint else ""))
    print(f"{name}: all {len(cases)} cases agree with the reference")
    return True


CONSISTENCY_CASES = [
    ("listen <seg>1.0, 2.0</seg>, this suggests a tone",),
    ("listen <seg>1.0, 2.0</seg>This is a tone",),
    ("listen <seg>1.0, 2.0</seg> The tone",),  # a space first: the released rule lets it pass
    ("<seg>0.0, 1.0</seg><seg>3.0, 4.0</seg>, so",),  # '<' counts as a new start
    ("".join(f"<seg>{i}.0, {i}.5</seg>Then " for i in range(8)),),  # floored at -0.5
    ("no segments at all.",),
    ("ends right after <seg>1.0, 2.0</seg>",),
]


def check_consistency_reward(student: Callable[[str], float]) -> bool | str:
    """Exercise (notebook 04): write the paper's consistency reward (character-level rule)."""
    return check_function("consistency reward", student, lambda t: consistency_reward(t, RewardSpec()),
                          CONSISTENCY_CASES, hint="-0.1 per </seg> whose next character is uppercase or '<', "
                                              "never below -0.5")


FORMAT_CASES = [
    ("<think>a</think><answer>b</answer>",), ("<answer>b</answer>",), ("<think>a</think><think>c</think><answer>b</answer>",),
    ("<answer>b</answer><think>a</think>",), ("  <think>a</think>\n<answer>b</answer> ",),
    ("<think>a</think><answer>b</answer> trailing",),
]


def check_format_reward(student: Callable[[str], float]) -> bool | str:
    """Exercise: 0.5 for exactly one <think>...</think> followed by one <answer>...</answer>."""
    return check_function("format reward", student, lambda t: format_reward(t, RewardSpec()), FORMAT_CASES)


TOKEN_CASES = [(n,) for n in (SAMPLE_RATE * 10, SAMPLE_RATE, 3200, 16000 * 3 + 17, 159, 161, 320, 1120, 17760, 16000 * 30)]


def check_audio_token_count(student: Callable[[int], int]) -> bool | str:
    """Exercise (notebook 01/05): audio tokens for a clip of n samples (frames = n // 160, two
    stride-2 stages)."""
    return check_function("audio token count", student, audio_token_count, TOKEN_CASES,
                          hint="frames = n // 160; tokens = ((frames - 1) // 2 + 1 - 2) // 2 + 1, at least 0")


IOU_CASES = [((0.0, 2.0), (1.0, 3.0)), ((0.0, 1.0), (2.0, 3.0)), ((1.0, 2.0), (1.0, 2.0)), ((0.0, 4.0), (1.0, 2.0))]


def check_segment_iou(student: Callable) -> bool | str:
    """Exercise: temporal IoU of two spans."""
    return check_function("segment IoU", student, segment_iou, IOU_CASES)


def _ref_advantages(rewards: Sequence[float], group: int) -> list[float]:
    import torch

    from echo_lite.grpo import group_advantages

    return group_advantages(torch.tensor(rewards, dtype=torch.float32), group).tolist()


ADVANTAGE_CASES = [([1.0, 0.0, 0.5, 0.5], 4), ([1.5, 1.5, 1.5, 1.5], 4), ([0.0, 1.0, 1.0, 0.0, 1.5, 0.5], 2)]


def check_group_advantages(student: Callable) -> bool | str:
    """Exercise (notebook 04): GRPO advantages, (R - group mean) / (group std + 1e-4), std with
    Bessel's correction as torch.std computes it."""
    return check_function("group advantages", student, _ref_advantages, ADVANTAGE_CASES, tol=1e-4,
                          hint="normalise within each group of consecutive rewards")


def check_span_choice(span: tuple[float, float] | None, decisive: Sequence[tuple[float, float]],
                      clip_seconds: float, min_iou: float = 0.5) -> bool | str:
    """Exercise (notebook 05): choose by hand the span to re-listen to; it must lie in the clip, be at
    least 0.2 s long and overlap an annotated decisive span with IoU >= `min_iou`."""
    if span is None:
        print(f"span choice: {NOT_ATTEMPTED}")
        return NOT_ATTEMPTED
    a, b = float(span[0]), float(span[1])
    limits = SegmentLimits()
    if not 0 <= a < b <= clip_seconds:
        raise ExerciseError(f"span choice: {span} must satisfy 0 <= start < end <= {clip_seconds:.1f} (the clip)")
    if b - a < limits.min_clip_s:
        raise ExerciseError(f"span choice: {span} is {b - a:.2f} s long; the runtime inserts nothing under "
                            f"{limits.min_clip_s} s")
    best = max(decisive, key=lambda d: segment_iou((a, b), tuple(d)))
    iou = segment_iou((a, b), tuple(best))
    if iou < min_iou:
        raise ExerciseError(f"span choice: {span} overlaps the nearest decisive span {tuple(best)} with IoU "
                            f"{iou:.2f} < {min_iou}; move {'later' if (a + b) < sum(best) else 'earlier'} "
                            f"or {'shorten' if b - a > best[1] - best[0] else 'widen'} it")
    print(f"span choice: IoU {iou:.2f} with the decisive span {tuple(best)}")
    return True


def check_parse_spans(student: Callable[[str], list]) -> bool | str:
    """Exercise (notebook 05): list the (start, end) of every well-formed <seg> tag in a text."""
    cases = [("a <seg>1.0, 2.0</seg> b <seg>3.5,4</seg>",), ("<seg>2.0, 1.0</seg>",), ("<seg>x, 1</seg>",),
             ("<seg>1.0, 2.0",), ("no tags",)]
    return check_function("parse spans", student, lambda t: [tag.span for tag in parse_segments(t) if tag.ok], cases,
                          hint="reversed, non-numeric and unclosed tags are not well formed")
