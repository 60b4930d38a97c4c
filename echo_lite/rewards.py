"""The GRPO rewards (ECHO_METHOD.md section 5, paper Eq. 2) as pure functions over text.

Paper: format 0.5 + consistency (>= -0.5) + accuracy 0.5 + segment bonus 0.5 (max 1.5).
The released code's variants are options (`RewardSpec` in config): the character-level
consistency rule, confidence-shaped accuracy, count- and non-overlap-scaled segment
bonuses. `grounding_reward` is echo_lite's addition: it checks that the cited spans are
the annotated ones, which the paper never measured. Weights come from the preset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from echo_lite.answers import is_correct
from echo_lite.config import ANSWER_CLOSE, ANSWER_OPEN, SEG_CLOSE, THINK_CLOSE, THINK_OPEN, RewardSpec
from echo_lite.segments import parse_segments, segment_iou

_FORMAT = re.compile(
    r"^\s*" + re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE) + r"\s*" + re.escape(ANSWER_OPEN)
    + r".*?" + re.escape(ANSWER_CLOSE) + r"\s*$", re.DOTALL)
_SENTENCE_END = ".!?"
PAPER_REWARDS = RewardSpec()  # the paper's weights and variants (frozen, safe as a default)


def format_reward(text: str, spec: RewardSpec = PAPER_REWARDS) -> float:
    """`spec.format` when the text is exactly one `<think>...</think>` then one `<answer>...</answer>`."""
    once = all(text.count(tag) == 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))
    return spec.format if once and _FORMAT.match(text) else 0.0


def opens_new_sentence(continuation: str, rule: str = "char") -> bool:
    """Whether the text right after a `</seg>` starts a new sentence.

    "char" (released code): the next character is uppercase or `<`, so "</seg> The" (a space
    first) escapes. "token": the first non-space token is checked, and sentence-final
    punctuation right after the tag (</seg>. The) counts as a break too.
    """
    if rule == "char":
        return bool(continuation) and (continuation[0].isupper() or continuation[0] == "<")
    if rule == "token":
        stripped = continuation.lstrip()
        return bool(stripped) and (stripped[0].isupper() or stripped[0] == "<" or stripped[0] in _SENTENCE_END)
    raise ValueError(f"unknown consistency rule {rule!r}; use 'char' or 'token'")


def consistency_reward(text: str, spec: RewardSpec = PAPER_REWARDS) -> float:
    """`spec.consistency_penalty` for every `</seg>` whose continuation opens a new sentence,
    floored at `spec.consistency_floor`. `text` is the policy's text (inserted audio removed)."""
    n_bad = 0
    for tag in parse_segments(text):
        if tag.raw.endswith(SEG_CLOSE) and opens_new_sentence(text[tag.end_char:], spec.consistency_rule):
            n_bad += 1
    return max(spec.consistency_floor, spec.consistency_penalty * n_bad)


def accuracy_reward(correct: bool, spec: RewardSpec = PAPER_REWARDS, confidence: float | None = None) -> float:
    """Binary (paper): `spec.accuracy` when correct. "confidence" (released): with p the model's
    probability of its answer, correct -> a*(1-(1-p)^2), wrong -> -a*p^2."""
    if spec.accuracy_variant == "binary":
        return spec.accuracy if correct else 0.0
    if spec.accuracy_variant == "confidence":
        if confidence is None or not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence-shaped accuracy needs a probability in [0, 1], got {confidence!r}")
        a = spec.accuracy
        return a * (1 - (1 - confidence) ** 2) if correct else -a * confidence**2
    raise ValueError(f"unknown accuracy variant {spec.accuracy_variant!r}; use 'binary' or 'confidence'")


def _union_length(spans: Sequence[tuple[float, float]]) -> float:
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(spans):
        if cur_e is None or s > cur_e:
            total += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0.0 if cur_e is None else cur_e - cur_s)


def segment_reward(correct: bool, spans: Sequence[tuple[float, float]], spec: RewardSpec = PAPER_REWARDS,
                   max_count: int = 3) -> float:
    """The bonus for a correct answer that re-listened.

    "any" (paper): `spec.segment_bonus` if correct and at least one segment was used.
    "count": scaled by min(n, max_count) / max_count. "non_overlap": scaled by the share of the
    cited time that is not cited twice (union / sum of lengths).
    """
    if not correct or not spans:
        return 0.0
    if spec.segment_variant == "any":
        return spec.segment_bonus
    if spec.segment_variant == "count":
        return spec.segment_bonus * min(len(spans), max_count) / max_count
    if spec.segment_variant == "non_overlap":
        total = sum(e - s for s, e in spans)
        return spec.segment_bonus * (_union_length(spans) / total if total > 0 else 0.0)
    raise ValueError(f"unknown segment variant {spec.segment_variant!r}; use 'any', 'count' or 'non_overlap'")


def grounding_score(spans: Sequence[tuple[float, float]], decisive: Sequence[tuple[float, float]],
                    iou_threshold: float) -> float:
    """Share of the annotated decisive spans that some cited span hits with IoU >= threshold."""
    if not decisive:
        return 0.0
    hits = sum(any(segment_iou(tuple(c), tuple(d)) >= iou_threshold for c in spans) for d in decisive)
    return hits / len(decisive)


def grounding_reward(spans: Sequence[tuple[float, float]], decisive: Sequence[tuple[float, float]],
                     spec: RewardSpec = PAPER_REWARDS) -> float:
    """echo_lite's addition: `spec.grounding` x the decisive-span hit rate of the cited spans."""
    return spec.grounding * grounding_score(spans, decisive, spec.grounding_iou)


@dataclass(frozen=True)
class RewardBreakdown:
    format: float
    consistency: float
    accuracy: float
    segment: float
    grounding: float
    correct: bool

    @property
    def total(self) -> float:
        return self.format + self.consistency + self.accuracy + self.segment + self.grounding


def score_response(text: str, choices: Sequence[str], answer: str, spans: Sequence[tuple[float, float]],
                   decisive: Sequence[tuple[float, float]] = (), spec: RewardSpec = PAPER_REWARDS,
                   confidence: float | None = None) -> RewardBreakdown:
    """Every reward component of one response. `spans` are the segments the runtime applied
    (for tags-only text, the parsed spans); `decisive` the item's annotated spans."""
    correct = is_correct(text, choices, answer)
    return RewardBreakdown(
        format=format_reward(text, spec),
        consistency=consistency_reward(text, spec),
        accuracy=accuracy_reward(correct, spec, confidence),
        segment=segment_reward(correct, spans, spec),
        grounding=grounding_reward(spans, decisive, spec),
        correct=correct,
    )
