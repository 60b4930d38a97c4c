"""The `<seg>START, END</seg>` grammar: parse, format, validate. Pure functions, no torch.

A re-listen request is `<seg>3.0, 5.5</seg>`: two plain decimals, seconds from the clip
start (ECHO_METHOD.md section 2). Text the model writes is untrusted: parsing never
raises, and every tag that cannot be used carries a typed reason.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from echo_lite.config import SEG_CLOSE, SEG_OPEN, SegmentLimits


class SegmentReject(str, enum.Enum):
    """Why a tag was not turned into an inserted clip."""

    UNCLOSED = "unclosed"  # <seg> with no </seg> after it
    NESTED = "nested"  # <seg> opened again before the first closed
    MALFORMED = "malformed"  # not two comma-separated values
    NOT_NUMERIC = "not_numeric"
    NOT_FINITE = "not_finite"  # nan / inf
    NEGATIVE = "negative"
    REVERSED = "reversed"  # end <= start
    OUT_OF_RANGE = "out_of_range"  # starts at/after the clip's end (or ends after it, unclamped)
    TOO_SHORT = "too_short"  # shorter than the minimum clip length
    TOO_MANY = "too_many"  # the clip budget is spent


@dataclass(frozen=True)
class SegmentTag:
    """One `<seg>` occurrence in a text: where it is and what it says."""

    start_char: int
    end_char: int  # one past the closing tag (or the end of text when unclosed)
    raw: str
    span: tuple[float, float] | None  # parsed (start, end) seconds, None when unparseable
    error: SegmentReject | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SegmentDecision:
    """The runtime's decision about one requested span."""

    requested: tuple[float, float] | None
    applied: tuple[float, float] | None  # after clamping; None when rejected
    reason: SegmentReject | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
_BODY = re.compile(rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$", re.IGNORECASE)
_TAG = re.compile(re.escape(SEG_OPEN) + "|" + re.escape(SEG_CLOSE))


def format_segment(start: float, end: float, decimals: int = 1) -> str:
    """`format_segment(3, 5.5)` -> `'<seg>3.0, 5.5</seg>'` (one decimal, as in the paper)."""
    return f"{SEG_OPEN}{start:.{decimals}f}, {end:.{decimals}f}{SEG_CLOSE}"


def parse_span(body: str) -> tuple[tuple[float, float] | None, SegmentReject | None]:
    """Parse the text between the tags into (start, end) or a typed reason."""
    if SEG_OPEN in body:
        return None, SegmentReject.NESTED
    parts = body.split(",")
    if len(parts) != 2:
        return None, SegmentReject.MALFORMED
    m = _BODY.match(body)
    if m is None:
        return None, SegmentReject.NOT_NUMERIC
    start, end = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(start) and math.isfinite(end)):
        return None, SegmentReject.NOT_FINITE
    if start < 0 or end < 0:
        return (start, end), SegmentReject.NEGATIVE
    if end <= start:
        return (start, end), SegmentReject.REVERSED
    return (start, end), None


def parse_segments(text: str) -> list[SegmentTag]:
    """Every `<seg>` in `text`, in order, each parsed or with its reason. Never raises."""
    tags: list[SegmentTag] = []
    open_at: int | None = None
    nested = False
    for m in _TAG.finditer(text):
        if m.group(0) == SEG_OPEN:
            if open_at is not None:
                nested = True  # keep the outer opening; the whole thing is one bad tag
            else:
                open_at = m.start()
            continue
        if open_at is None:
            continue  # a stray </seg> is plain text
        raw = text[open_at:m.end()]
        body = text[open_at + len(SEG_OPEN):m.start()]
        if nested:
            span, err = None, SegmentReject.NESTED
        else:
            span, err = parse_span(body)
        tags.append(SegmentTag(open_at, m.end(), raw, span, err))
        open_at, nested = None, False
    if open_at is not None:
        tags.append(SegmentTag(open_at, len(text), text[open_at:], None, SegmentReject.UNCLOSED))
    return tags


def ends_with_closed_segment(text: str) -> bool:
    """True when a stream's text ends with a just-closed `</seg>` (time to re-listen)."""
    return text.rstrip().endswith(SEG_CLOSE)


def last_closed_segment(text: str) -> SegmentTag | None:
    """The last closed tag of `text`, if the text ends with one."""
    if not ends_with_closed_segment(text):
        return None
    tags = [t for t in parse_segments(text) if t.error is not SegmentReject.UNCLOSED]
    return tags[-1] if tags else None


def validate_segment(
    tag_or_span: SegmentTag | tuple[float, float] | None,
    clip_duration: float,
    n_accepted: int,
    limits: SegmentLimits,
) -> SegmentDecision:
    """Decide whether a requested span becomes an inserted clip, and which times apply.

    Order of checks: the tag's own parse error, then the clip budget, the clip's range
    (clamped or rejected per `limits.clamp_to_clip`), and the minimum length.
    """
    if isinstance(tag_or_span, SegmentTag):
        if tag_or_span.error is not None:
            return SegmentDecision(tag_or_span.span, None, tag_or_span.error)
        span = tag_or_span.span
    else:
        span = tag_or_span
    if span is None:
        return SegmentDecision(None, None, SegmentReject.MALFORMED)
    start, end = float(span[0]), float(span[1])
    if not (math.isfinite(start) and math.isfinite(end)):
        return SegmentDecision(span, None, SegmentReject.NOT_FINITE)
    if start < 0 or end < 0:
        return SegmentDecision(span, None, SegmentReject.NEGATIVE)
    if end <= start:
        return SegmentDecision(span, None, SegmentReject.REVERSED)
    if n_accepted >= limits.max_clips:
        return SegmentDecision(span, None, SegmentReject.TOO_MANY)
    if start >= clip_duration:
        return SegmentDecision(span, None, SegmentReject.OUT_OF_RANGE)
    if end > clip_duration:
        if not limits.clamp_to_clip:
            return SegmentDecision(span, None, SegmentReject.OUT_OF_RANGE)
        end = clip_duration
    if end - start < limits.min_clip_s - 1e-9:
        return SegmentDecision(span, None, SegmentReject.TOO_SHORT)
    return SegmentDecision(span, (start, end), None)


def segment_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal intersection over union of two spans (0 when either is empty)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0
