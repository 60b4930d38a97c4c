from collections import Counter

import numpy as np
import pytest

from echo_lite.config import SEG_CLOSE, DataSpec, get_preset
from echo_lite.data.caption import MetadataCaptioner
from echo_lite.data.filters import check_cot, check_qa, split_response
from echo_lite.data.questions import QTYPES, true_options
from echo_lite.data.teacher import DECLINED, Request, RuleTeacher, qtype_order
from echo_lite.data.world import Event, Scene, sample_scene
from echo_lite.prompts import format_response
from echo_lite.segments import parse_segments

SPEC = DataSpec()  # the default chain style: walks
NAMED = DataSpec(chain="named")
LIMITS = get_preset("tiny").segments


def _drafts(n_scenes=120, spec=SPEC):
    for seed in range(n_scenes):
        scene = sample_scene(seed)
        for make, _ in QTYPES.values():
            draft = make(scene, np.random.default_rng(seed), spec)
            if draft is not None:
                yield scene, draft


@pytest.fixture(scope="module")
def drafts():
    return list(_drafts())


def test_every_type_is_produced_and_answered_uniquely(drafts):
    made = Counter(d.qtype for _, d in drafts)
    assert set(made) == set(QTYPES) and len(QTYPES) >= 8
    for scene, d in drafts:
        assert d.answer in d.choices and len(set(d.choices)) == len(d.choices) >= 2
        assert true_options(scene, d.qtype, d.query, d.choices) == [d.answer], (scene.scene_id, d)


def test_cited_spans_are_true_event_times_with_reason_and_analysis(drafts):
    for scene, d in drafts:
        spans = {e.span for e in scene.events}
        tags = parse_segments(d.think)
        assert tags and all(t.ok and t.span in spans for t in tags), d.think
        assert set(d.decisive_spans) <= spans
        for t in tags:
            assert d.think[:t.start_char].strip(), "a reason comes before every span"
            after = d.think[t.end_char:]
            assert after[0] == "," and after[1:].strip()[0].islower(), "the analysis continues the sentence"
        reasons, cites = check_cot(scene, d, SPEC, LIMITS)
        assert reasons == [], (d.think, reasons)
        assert check_qa(scene, d) == []


@pytest.mark.parametrize("chain, most", [("named", 65), ("walk", 75)])
def test_responses_are_short_and_in_the_paper_format(chain, most, tiny_tokenizer):
    """Short enough for the tiny preset's token budget; walks (several spans from the clip's start) run longer."""
    lengths = []
    for _, d in _drafts(spec=DataSpec(chain=chain)):
        response = format_response(d.think, d.answer)
        assert split_response(response) == (d.think, d.answer)
        lengths.append(len(tiny_tokenizer(response).input_ids))
    assert max(lengths) <= get_preset("tiny").segments.max_new_tokens
    assert 25 <= np.mean(lengths) <= most, np.mean(lengths)


def test_property_at_time_reads_the_event_at_that_time():
    e1 = Event("tone", "C5 tone", 1.0, 2.5, {"pitch": "C5", "hz": 523.25})
    e2 = Event("tone", "E4 tone", 12.0, 13.4, {"pitch": "E4", "hz": 329.63})
    scene = Scene("s", 20.0, (e1, e2), 0)
    for seed in range(10):
        d = QTYPES["tone_at_time"][0](scene, np.random.default_rng(seed), SPEC)
        target = e1 if d.query["t"] < 5 else e2
        assert target.onset < d.query["t"] < target.offset
        assert d.answer == target.label and d.decisive_spans == (target.span,)
        assert f"<seg>{target.onset:.1f}, {target.offset:.1f}{SEG_CLOSE}, this is the {target.label}" in d.think
        assert len(d.choices) == 4 and {"C5 tone", "E4 tone"} <= set(d.choices)  # the other heard tone distracts


def test_rule_teacher_falls_back_and_declines():
    tones_only = Scene("t", 8.0, (Event("tone", "C5 tone", 1.0, 2.0, {"pitch": "C5", "hz": 523.25}),), 0)
    teacher = RuleTeacher(SPEC)
    caption = MetadataCaptioner()(tones_only)
    out = teacher.teach([Request("a", tones_only, caption, ("tempo_change", "knock_count", "tone_at_time"), 1),
                         Request("b", tones_only, caption, ("tempo_change", "overlap"), 1)])
    assert out[0].draft is not None and out[0].draft.qtype == "tone_at_time"
    assert out[1].draft is None and out[1].error == DECLINED
    again = teacher.teach([Request("a", tones_only, caption, ("tempo_change", "knock_count", "tone_at_time"), 1)])
    assert again[0].draft == out[0].draft  # deterministic


def test_qtype_order_follows_the_mix():
    firsts = Counter(qtype_order(np.random.default_rng(i), SPEC)[0] for i in range(2000))
    weights = dict(SPEC.qtype_weights)
    assert firsts.most_common(1)[0][0] == "tone_at_time"
    assert abs(firsts["tone_at_time"] / 2000 - weights["tone_at_time"] / sum(weights.values())) < 0.04
    with pytest.raises(KeyError, match="unknown question type"):
        qtype_order(np.random.default_rng(0), DataSpec(qtype_weights=(("tone_at_time", 1.0), ("rhyme", 1.0))))


WALK = DataSpec(chain="walk")
WALK_TYPES = ("order", "what_follows", "duration_compare", "gap", "overlap")


def test_walk_chains_go_through_the_sounds_from_the_start():
    walked = Counter()
    for seed in range(120):
        scene = sample_scene(seed)
        in_order = sorted(scene.events, key=lambda e: (e.onset, e.offset))
        for qtype, (make, _) in QTYPES.items():
            named, walk = (make(scene, np.random.default_rng(seed), spec) for spec in (NAMED, WALK))
            if named is None:
                assert walk is None
                continue
            # the same question, options, answer and decisive spans: only the chain changes
            assert (walk.question, walk.choices, walk.answer, walk.decisive_spans) == \
                (named.question, named.choices, named.answer, named.decisive_spans)
            if qtype not in WALK_TYPES or walk.think == named.think:
                assert qtype not in WALK_TYPES or len(in_order) > WALK.walk_max_spans, (qtype, walk.think)
                continue
            walked[qtype] += 1
            spans = [t.span for t in parse_segments(walk.think)]
            assert spans == [e.span for e in in_order[:len(spans)]], walk.think  # from the first sound, none skipped
            assert len(spans) <= WALK.walk_max_spans
            assert max(named.decisive_spans) == spans[-1] or qtype == "order", walk.think  # ends at the last one needed
            assert check_cot(scene, walk, WALK, LIMITS)[0] == [], walk.think
    assert set(walked) == set(WALK_TYPES), walked


def test_a_walk_too_long_falls_back_to_the_named_chain():
    short = DataSpec(chain="walk", walk_max_spans=1)  # "what follows" needs two sounds at least
    make = QTYPES["what_follows"][0]
    compared = 0
    for seed in range(40):
        scene = sample_scene(seed)
        named, walk, cut = (make(scene, np.random.default_rng(seed), spec) for spec in (NAMED, WALK, short))
        if named is not None and walk.think != named.think:
            assert cut.think == named.think
            compared += 1
    assert compared >= 5


def test_an_unknown_chain_style_is_refused():
    with pytest.raises(ValueError, match="chain 'zigzag'"):
        DataSpec(chain="zigzag")
    with pytest.raises(ValueError, match="walk_max_spans 0"):
        DataSpec(chain="walk", walk_max_spans=0)
