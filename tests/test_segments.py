import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_lite.config import SegmentLimits
from echo_lite.segments import (
    SegmentReject,
    ends_with_closed_segment,
    format_segment,
    last_closed_segment,
    parse_segments,
    segment_iou,
    validate_segment,
)

LIMITS = SegmentLimits()


def test_format_matches_the_papers_style():
    assert format_segment(3, 5.5) == "<seg>3.0, 5.5</seg>"
    assert format_segment(0.2, 4.3) == "<seg>0.2, 4.3</seg>"


def test_parse_every_tag_in_order():
    text = "First <seg>0.2, 4.3</seg>, then <seg>5,7.25</seg> and <seg> 8.0 ,9 </seg>."
    tags = parse_segments(text)
    assert [t.span for t in tags] == [(0.2, 4.3), (5.0, 7.25), (8.0, 9.0)]
    assert all(t.ok for t in tags)
    assert text[tags[0].start_char:tags[0].end_char] == "<seg>0.2, 4.3</seg>"


@pytest.mark.parametrize("text,reason", [
    ("<seg>-1.0, 2.0</seg>", SegmentReject.NEGATIVE),
    ("<seg>5.0, 2.0</seg>", SegmentReject.REVERSED),
    ("<seg>2.0, 2.0</seg>", SegmentReject.REVERSED),
    ("<seg>one, two</seg>", SegmentReject.NOT_NUMERIC),
    ("<seg>1.0 2.0</seg>", SegmentReject.MALFORMED),
    ("<seg>1.0, 2.0, 3.0</seg>", SegmentReject.MALFORMED),
    ("<seg>nan, 2.0</seg>", SegmentReject.NOT_FINITE),
    ("<seg>1.0, inf</seg>", SegmentReject.NOT_FINITE),
    ("<seg>1.0, <seg>2.0, 3.0</seg>", SegmentReject.NESTED),
    ("so <seg>1.0, 2.0", SegmentReject.UNCLOSED),
])
def test_bad_tags_get_a_typed_reason(text, reason):
    tags = parse_segments(text)
    assert len(tags) == 1
    assert tags[0].error is reason
    decision = validate_segment(tags[0], 10.0, 0, LIMITS)
    assert not decision.accepted and decision.reason is reason


def test_validate_against_the_clip():
    assert validate_segment((1.0, 2.0), 10.0, 0, LIMITS).applied == (1.0, 2.0)
    clamped = validate_segment((9.0, 12.0), 10.0, 0, LIMITS)
    assert clamped.accepted and clamped.applied == (9.0, 10.0) and clamped.requested == (9.0, 12.0)
    assert validate_segment((10.0, 12.0), 10.0, 0, LIMITS).reason is SegmentReject.OUT_OF_RANGE
    strict = SegmentLimits(clamp_to_clip=False)
    assert validate_segment((9.0, 12.0), 10.0, 0, strict).reason is SegmentReject.OUT_OF_RANGE
    assert validate_segment((1.0, 1.1), 10.0, 0, LIMITS).reason is SegmentReject.TOO_SHORT
    assert validate_segment((1.0, 1.2), 10.0, 0, LIMITS).accepted  # exactly the minimum
    assert validate_segment((9.9, 12.0), 10.0, 0, LIMITS).reason is SegmentReject.TOO_SHORT  # short after clamping
    assert validate_segment((1.0, 2.0), 10.0, 8, LIMITS).reason is SegmentReject.TOO_MANY


def test_stream_detection():
    assert ends_with_closed_segment("let me listen <seg>1.0, 2.0</seg>")
    assert not ends_with_closed_segment("let me listen <seg>1.0, 2.0</seg>, it is")
    assert last_closed_segment("a <seg>0.5, 1.0</seg> b <seg>3.0, 4.0</seg>").span == (3.0, 4.0)
    assert last_closed_segment("no tag here") is None


def test_iou():
    assert segment_iou((0, 2), (1, 3)) == pytest.approx(1 / 3)
    assert segment_iou((0, 1), (2, 3)) == 0.0
    assert segment_iou((1, 2), (1, 2)) == 1.0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<seg>/, 0123456789.-naif xyz")), max_size=80) | st.text(max_size=80))
def test_parser_never_raises(text):
    for tag in parse_segments(text):
        assert tag.ok == (tag.error is None)
        if tag.ok:
            s, e = tag.span
            assert math.isfinite(s) and math.isfinite(e) and 0 <= s < e
        validate_segment(tag, 10.0, 0, LIMITS)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1000, allow_nan=False), st.floats(0.1, 100, allow_nan=False), st.text(max_size=20))
def test_format_parse_round_trip(start, length, prefix):
    start, end = round(start, 1), round(start, 1) + round(length, 1)
    text = prefix.replace("<", "") + format_segment(start, end)
    tags = parse_segments(text)
    assert len(tags) == 1 and tags[0].ok
    assert tags[0].span == pytest.approx((start, end), abs=1e-9)
