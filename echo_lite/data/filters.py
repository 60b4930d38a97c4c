"""Filters: rule checks, an optional LLM judge, and routing to SFT / RL / dropped.

The paper's judge asks "QA valid?" and "CoT valid?" (ECHO_METHOD.md section 3): both ->
SFT, QA only -> RL (without the chain of thought), neither -> dropped. Here the same two
verdicts come from rule checks against the clip's metadata, optionally AND-ed with an
LLM judge. Every failure carries a named reason, so the funnel can be counted.

Which event a cited span names: the labels written in the clause that cites it - the
analysis after `</seg>` (up to the next `<seg>` or the end of the clause) and, for the
first span of a clause, the reason before it. Clauses end at ";", "!", "?", a newline,
a "." that is not a decimal point, or `</think>` (the answer names no cited span).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from echo_lite.config import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    SEG_CLOSE,
    SEG_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    DataSpec,
    SegmentLimits,
)
from echo_lite.data.questions import QTYPES, Draft, true_options
from echo_lite.data.world import Scene, label_vocabulary
from echo_lite.prompts import format_response
from echo_lite.rewards import opens_new_sentence
from echo_lite.segments import parse_segments, segment_iou, validate_segment

SFT, RL, DROPPED = "sft", "rl", "dropped"
_CLAUSE_END = re.compile(r"[;!?\n]|\.(?!\d)|" + re.escape(THINK_CLOSE))
TIME_IN_QUESTION = re.compile(r"(\d+(?:\.\d+)?)\s*s\b")  # "at 7.1 s", "between 3.0 s and 7.0 s"


@dataclass
class Verdict:
    qa_reasons: list[str] = field(default_factory=list)
    cot_reasons: list[str] = field(default_factory=list)
    judge: dict | None = None

    @property
    def qa_valid(self) -> bool:
        return not self.qa_reasons

    @property
    def cot_valid(self) -> bool:
        return not self.cot_reasons

    def route(self) -> tuple[str, str | None]:
        """(sft | rl | dropped, the reason for not being SFT)."""
        if not self.qa_valid:
            return DROPPED, self.qa_reasons[0]
        if not self.cot_valid:
            return RL, "cot:" + self.cot_reasons[0]
        return SFT, None


@dataclass(frozen=True)
class Citation:
    span: tuple[float, float] | None
    error: str | None  # the tag's parse/validation failure
    names: tuple[str, ...]  # labels named in the clause that cites it
    continuation: str  # the text right after </seg> (a few characters; "" at the end)


def starts_new_sentence(continuation: str) -> bool:
    """True when the text after `</seg>` opens a new sentence instead of continuing it: the
    consistency reward's "token" rule, stricter than the released next-character test
    ("</seg> The" and "</seg>. The" count as new sentences too). One rule for both."""
    return opens_new_sentence(continuation, rule="token")


def split_response(text: str) -> tuple[str, str] | None:
    """(think, answer) of `<think>T</think><answer>A</answer>`, or None when not exactly that."""
    tags = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
    if any(text.count(t) != 1 for t in tags):
        return None
    m = re.fullmatch(re.escape(THINK_OPEN) + r"(.*)" + re.escape(THINK_CLOSE) + r"\s*" + re.escape(ANSWER_OPEN)
                     + r"(.*)" + re.escape(ANSWER_CLOSE), text.strip(), re.DOTALL)
    return (m.group(1), m.group(2).strip()) if m else None


def _names(text: str, vocabulary: list[str]) -> list[str]:
    found, taken = [], []
    for label in sorted(vocabulary, key=len, reverse=True):  # longest first: "spoken one" before "one"
        for m in re.finditer(r"(?<![\w])" + re.escape(label) + r"(?![\w])", text, re.IGNORECASE):
            if not any(a < m.end() and m.start() < b for a, b in taken):
                taken.append((m.start(), m.end()))
                found.append(label)
    return list(dict.fromkeys(found))


def citations(think: str, vocabulary: list[str], duration: float, limits: SegmentLimits) -> list[Citation]:
    """Every `<seg>` of a chain of thought, validated against the clip, with the labels it names."""
    out, n_ok = [], 0
    tags = parse_segments(think)
    for i, tag in enumerate(tags):
        clause_start = max([m.end() for m in _CLAUSE_END.finditer(think, 0, tag.start_char)], default=0)
        prev_close = tags[i - 1].end_char if i > 0 else -1
        before = think[clause_start:tag.start_char] if prev_close < clause_start else ""
        nxt = tags[i + 1].start_char if i + 1 < len(tags) else len(think)
        m = _CLAUSE_END.search(think, tag.end_char, nxt)
        after = think[tag.end_char:m.start() if m else nxt]
        decision = validate_segment(tag, duration, n_ok, limits)
        n_ok += decision.accepted
        out.append(Citation(decision.applied if decision.accepted else tag.span,
                            None if decision.accepted else decision.reason.value,
                            tuple(_names(before + " " + after, vocabulary)), think[tag.end_char:tag.end_char + 16]))
    return out


def check_qa(scene: Scene, draft: Draft) -> list[str]:
    """Reasons the question/options/answer are not valid for this clip (empty = valid)."""
    reasons = []
    choices = list(draft.choices)
    if not draft.question.strip():
        reasons.append("empty_question")
    if len(choices) < 2:
        reasons.append("too_few_choices")
    if len({c.strip().lower() for c in choices}) != len(choices) or any(not c.strip() for c in choices):
        reasons.append("duplicate_or_empty_choices")
    if draft.answer not in choices:
        reasons.append("answer_not_in_choices")
    for a, b in draft.decisive_spans:
        if not (0 <= a < b <= scene.duration + 1e-6):
            reasons.append("decisive_span_outside_clip")
            break
    if any(float(t) > scene.duration for t in TIME_IN_QUESTION.findall(draft.question)):
        reasons.append("question_time_outside_clip")
    if draft.qtype in QTYPES and draft.query and not reasons:
        true = true_options(scene, draft.qtype, draft.query, choices)
        if draft.answer not in true:
            reasons.append("answer_wrong")
        elif len(true) > 1:
            reasons.append("answer_not_unique")
    return reasons


def check_cot(scene: Scene, draft: Draft, spec: DataSpec, limits: SegmentLimits, tokenizer=None,
              max_tokens: int | None = None) -> tuple[list[str], list[Citation]]:
    """Reasons the chain of thought is not valid (empty = valid), and its citations."""
    response = format_response(draft.think, draft.answer)
    parsed = split_response(response)
    if parsed is None or any(t in draft.think for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return ["bad_format"], []
    in_scene = scene.labels()
    vocabulary = list(dict.fromkeys(in_scene + label_vocabulary()))
    # a cited span must lie inside the clip: no clamping here, unlike the runtime
    cites = citations(draft.think, vocabulary, scene.duration, dataclasses.replace(limits, clamp_to_clip=False))
    reasons = []
    if not cites:
        reasons.append("no_segment")
    for c in cites:
        if c.error is not None:
            reasons.append(f"seg_{c.error}")
            continue
        if starts_new_sentence(c.continuation):
            reasons.append("seg_starts_new_sentence")
        if not c.names:
            reasons.append("seg_names_nothing")
        for label in c.names:
            events = [e for e in scene.events if e.label.lower() == label.lower()]
            if not events:
                reasons.append("cites_absent_event")
            elif max(segment_iou(c.span, e.span) for e in events) < spec.cite_iou:
                reasons.append("seg_misplaced")
    if SEG_OPEN in draft.answer or SEG_CLOSE in draft.answer:
        reasons.append("seg_in_answer")
    if tokenizer is not None and max_tokens is not None and len(tokenizer(response).input_ids) > max_tokens:
        reasons.append("cot_too_long")
    return list(dict.fromkeys(reasons)), cites


Judge = Callable[[Scene, str, Draft], dict]  # (scene, simulation text, draft) -> {"qa_valid", "cot_valid"}


def judge_item(scene: Scene, draft: Draft, spec: DataSpec, limits: SegmentLimits, simulation: str = "",
               judge: Judge | None = None, tokenizer=None, max_tokens: int | None = None) -> tuple[Verdict, list[Citation]]:
    """Rule checks, then (optionally) the LLM judge on what the rules let through."""
    verdict = Verdict(check_qa(scene, draft))
    cot_reasons, cites = check_cot(scene, draft, spec, limits, tokenizer, max_tokens)
    verdict.cot_reasons = cot_reasons
    if judge is not None and verdict.qa_valid:
        result = judge(scene, simulation, draft)
        verdict.judge = result
        if result.get("error"):
            verdict.qa_reasons.append("judge_failed")
        elif not result.get("qa_valid", False):
            verdict.qa_reasons.append("judge_qa_invalid")
        elif not result.get("cot_valid", False) and verdict.cot_valid:
            verdict.cot_reasons.append("judge_cot_invalid")
    return verdict, cites
