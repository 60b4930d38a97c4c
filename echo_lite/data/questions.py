"""The question types of the rule teacher: how each is asked, answered, reasoned, and checked.

Every type needs temporal analysis of the clip (ECHO_METHOD.md section 3). A type has
two halves that are written independently:

- `make(scene, rng, spec)`: pick events, write the question, options with plausible
  distractors, the answer, the decisive spans and a short chain of thought that cites
  the true event times with `<seg>a, b</seg>` - a reason before each span, and the
  analysis right after it continuing the same sentence (", this is the C5 tone");
- `truth(scene, query, option)`: whether one option is true of the scene, recomputed
  from the events alone. The filters use it to check that exactly one option is true.

The chain of thought is kept short for the tiny preset (about 25-60 tokens): one clause
per cited span, clauses separated by ";" or ".", so each span's clause names its event.
With `DataSpec.chain == "walk"` the types that name their sounds (order, what_follows,
duration_compare, gap, overlap) walk the clip instead: every sound from the start, cited
and named in turn, up to the last one the answer needs (`_walk`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from echo_lite.config import DataSpec
from echo_lite.data.world import TONE_PITCHES, Event, Scene, label_vocabulary
from echo_lite.segments import format_segment

SAME_DURATION = "both last the same"
DIRECTIONS = ("up", "down", "it stays the same")
TEMPI = ("faster", "slower", "it stays the same")


@dataclass(frozen=True)
class Draft:
    """A teacher's question before filtering (the teacher-independent part of an item)."""

    qtype: str
    question: str
    choices: tuple[str, ...]
    answer: str
    think: str  # the text inside <think>...</think>, with <seg> spans
    decisive_spans: tuple[tuple[float, float], ...]
    query: dict = field(default_factory=dict)  # structured parameters the rule check re-solves
    teacher: str = "rule"


# --------------------------------------------------------------------------------------
# Helpers over a scene.
# --------------------------------------------------------------------------------------
def _seg(e: Event) -> str:
    return format_segment(e.onset, e.offset)


def _t(x: float) -> str:
    return f"{x:.1f}"


def _unique(scene: Scene) -> list[Event]:
    counts = Counter(e.label for e in scene.events)
    return [e for e in scene.events if counts[e.label] == 1]


def _overlaps(a: Event, b: Event) -> bool:
    return min(a.offset, b.offset) - max(a.onset, b.onset) > 1e-9


def _alone(scene: Scene, e: Event) -> bool:
    return not any(o is not e and _overlaps(o, e) for o in scene.events)


def _by_label(scene: Scene, label: str) -> list[Event]:
    return [e for e in scene.events if e.label == label]


def _next_after(scene: Scene, e: Event, kind: str | None = None) -> Event | None:
    """The first event (of `kind`) that starts at or after `e` ends."""
    later = [o for o in scene.events if o.onset >= e.offset - 1e-9 and (kind is None or o.kind == kind)]
    return min(later, key=lambda o: o.onset) if later else None


def _free_time(scene: Scene, e: Event, rng: np.random.Generator) -> float | None:
    """A time on the 0.1 s grid strictly inside `e` and inside no other event."""
    grid = [round(x / 10, 1) for x in range(int(round(e.onset * 10)) + 1, int(round(e.offset * 10)))]
    free = [t for t in grid if all(not (o.onset <= t <= o.offset) for o in scene.events if o is not e)]
    return float(rng.choice(free)) if free else None


def _window(scene: Scene, inside: list[Event]) -> tuple[float, float] | None:
    """A window [a, b] on the grid holding `inside` whole, with no event straddling a or b."""
    start, end = min(e.onset for e in inside), max(e.offset for e in inside)
    before = [o.offset for o in scene.events if o.offset <= start + 1e-9]
    after = [o.onset for o in scene.events if o.onset >= end - 1e-9]
    a = np.floor((max(before, default=0.0) + start) / 2 * 10) / 10
    b = np.ceil((min(after, default=scene.duration) + end) / 2 * 10) / 10
    a, b = round(float(a), 1), round(float(min(b, scene.duration)), 1)
    if any(o.onset < a < o.offset or o.onset < b < o.offset for o in scene.events):
        return None
    return a, b


WALK_OPENING = "I go through the sounds from the start: "  # how a walk chain begins (perception.walk_item finds it)


def _walk(scene: Scene, spec: DataSpec, upto: list[Event], notes: dict[int, str] | None = None) -> str | None:
    """The clauses of a walk through the clip (DataSpec.chain "walk"): every sound from the start, in order of
    onset, up to the last of `upto`, each cited and named ("<seg>2.0, 3.6</seg>, the noise burst"), with
    `notes` (by id of the event) after a name; None with the named chains, or when the walk takes more than
    `spec.walk_max_spans` spans (the caller then keeps its named chain)."""
    if spec.chain != "walk":
        return None
    last = max(upto, key=lambda e: (e.onset, e.offset))
    walked = [e for e in sorted(scene.events, key=lambda e: (e.onset, e.offset))
              if (e.onset, e.offset) <= (last.onset, last.offset)]
    if len(walked) > spec.walk_max_spans:
        return None
    notes = notes or {}
    return WALK_OPENING + "; ".join(
        f"{_seg(e)}, the {e.label}{notes.get(id(e), '')}" for e in walked)


def _within(scene: Scene, a: float, b: float, kind: str) -> list[Event]:
    return [e for e in scene.events if e.kind == kind and e.onset >= a - 1e-9 and e.offset <= b + 1e-9]


def _distractors(answer: str, pool: list[str], rng: np.random.Generator, n: int) -> list[str]:
    """Up to `n` - 1 distractors, first from `pool` (in order of preference), then nothing."""
    out: list[str] = []
    for label in pool:
        if label != answer and label not in out:
            out.append(label)
        if len(out) == n - 1:
            break
    return out


def _options(answer: str, distractors: list[str], rng: np.random.Generator) -> tuple[str, ...]:
    opts = [answer, *distractors]
    rng.shuffle(opts)
    return tuple(opts)


def _label_pool(scene: Scene, exclude: set[str], rng: np.random.Generator, kind: str | None = None) -> list[str]:
    """Plausible wrong labels: heard elsewhere in this clip first, then the rest of the world's."""
    in_scene = [lab for lab in scene.labels() if lab not in exclude]
    rng.shuffle(in_scene)
    others = [lab for lab in label_vocabulary() if lab not in exclude and lab not in in_scene]
    if kind == "tone":
        in_scene = [lab for lab in in_scene if lab.endswith(" tone")]
        others = [f"{p} tone" for p in TONE_PITCHES if f"{p} tone" not in exclude and f"{p} tone" not in in_scene]
    rng.shuffle(others)
    return in_scene + others


def _numbers(true: int, lo: int, rng: np.random.Generator, n: int) -> list[int]:
    start = max(lo, true - int(rng.integers(0, n)))
    return list(range(start, start + n))


# --------------------------------------------------------------------------------------
# The types. Each `make_*` returns a Draft or None (the scene has nothing to ask).
# --------------------------------------------------------------------------------------
def make_tone_at_time(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    tones = [e for e in scene.events if e.kind == "tone"]
    rng.shuffle(tones)
    for e in tones:
        t = _free_time(scene, e, rng)
        if t is None:
            continue
        pool = _label_pool(scene, {e.label}, rng, kind="tone")
        choices = _options(e.label, _distractors(e.label, pool, rng, spec.n_choices), rng)
        think = f"The question is about {_t(t)} seconds, so I listen to {_seg(e)}, this is the {e.label}."
        return Draft("tone_at_time", f"Which tone is heard at {_t(t)} s?", choices, e.label, think,
                     (e.span,), {"t": t})
    return None


def truth_at_time(scene: Scene, query: dict, option: str) -> bool:
    return any(e.label == option for e in scene.events_at(float(query["t"])))


def make_sound_at_time(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    events = list(scene.events)
    rng.shuffle(events)
    for e in events:
        t = _free_time(scene, e, rng)
        if t is None:
            continue
        pool = _label_pool(scene, {e.label}, rng)
        choices = _options(e.label, _distractors(e.label, pool, rng, spec.n_choices), rng)
        think = f"The question is about {_t(t)} seconds, so I listen to {_seg(e)}, this is the {e.label}."
        return Draft("sound_at_time", f"What is heard at {_t(t)} s?", choices, e.label, think, (e.span,), {"t": t})
    return None


def make_order(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    cands = [e for e in _unique(scene) if _alone(scene, e)]
    if len(cands) < 3:
        return None
    picked = sorted((cands[i] for i in rng.choice(len(cands), size=3, replace=False)), key=lambda e: e.onset)
    first = picked[0]
    choices = _options(first.label, [e.label for e in picked[1:]], rng)
    clauses = [f"I check which starts first: {_seg(picked[0])}, the {picked[0].label}"]
    clauses += [f"then {_seg(e)}, the {e.label}" for e in picked[1:]]
    # a walk: the first of the options met on the way is the answer
    think = (_walk(scene, spec, [first]) or "; ".join(clauses)) + f". So the {first.label} is first."
    return Draft("order", "Which of these sounds is heard first?", choices, first.label, think,
                 tuple(e.span for e in picked), {"labels": [e.label for e in picked]})


def truth_order(scene: Scene, query: dict, option: str) -> bool:
    starts = {lab: min((e.onset for e in _by_label(scene, lab)), default=None) for lab in query["labels"]}
    if starts.get(option) is None:
        return False
    present = [s for s in starts.values() if s is not None]
    return starts[option] == min(present) and sum(s == min(present) for s in present) == 1


def make_count_in_span(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    tones = [e for e in scene.events if e.kind == "tone"]
    if not tones:
        return None
    for _ in range(6):
        i = int(rng.integers(len(tones)))
        k = int(rng.integers(1, min(spec.max_count_cited, len(tones) - i) + 1))
        run = tones[i:i + k]
        window = _window(scene, run)
        if window is None:
            continue
        a, b = window
        inside = _within(scene, a, b, "tone")
        if len(inside) != k or len(inside) > spec.max_count_cited:
            continue
        nums = _numbers(k, 1, rng, spec.n_choices)
        choices = _options(str(k), [str(n) for n in nums if n != k], rng)
        clauses = [f"I count the tones from {_t(a)} to {_t(b)}: {_seg(inside[0])}, the {inside[0].label}"]
        clauses += [f"then {_seg(e)}, the {e.label}" for e in inside[1:]]
        think = "; ".join(clauses) + f". That makes {k}."
        return Draft("count_in_span", f"How many tones are heard between {_t(a)} s and {_t(b)} s?", choices,
                     str(k), think, tuple(e.span for e in inside), {"a": a, "b": b, "kind": "tone"})
    return None


def truth_count_in_span(scene: Scene, query: dict, option: str) -> bool:
    return option.strip().isdigit() and int(option) == len(_within(scene, query["a"], query["b"], query["kind"]))


def make_knock_count(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    knocks = [e for e in scene.events if e.kind == "knocks"]
    rng.shuffle(knocks)
    for e in knocks:
        window = _window(scene, [e])
        if window is None or len(_within(scene, *window, "knocks")) != 1:
            continue
        a, b = window
        count = int(e.attrs["count"])
        nums = _numbers(count, 1, rng, spec.n_choices)
        choices = _options(e.label, [f"{n} knocks" for n in nums if n != count], rng)
        think = f"I listen between {_t(a)} and {_t(b)} seconds {_seg(e)}, there are {e.label}."
        return Draft("knock_count", f"How many knocks are heard between {_t(a)} s and {_t(b)} s?", choices, e.label,
                     think, (e.span,), {"a": a, "b": b})
    return None


def truth_knock_count(scene: Scene, query: dict, option: str) -> bool:
    head = option.split()[0] if option.split() else ""
    total = sum(int(e.attrs["count"]) for e in _within(scene, query["a"], query["b"], "knocks"))
    return head.isdigit() and int(head) == total


def make_duration_compare(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    cands = _unique(scene)
    if len(cands) < 2:
        return None
    for _ in range(8):
        x, y = (cands[i] for i in rng.choice(len(cands), size=2, replace=False))
        diff = round(x.duration - y.duration, 1)
        if 0 < abs(diff) < spec.min_duration_diff_s:
            continue
        x, y = sorted((x, y), key=lambda e: e.onset)
        answer = SAME_DURATION if diff == 0 else (x.label if x.duration > y.duration else y.label)
        choices = _options(answer, [c for c in (x.label, y.label, SAME_DURATION) if c != answer], rng)
        verdict = "both last the same." if diff == 0 else f"the {answer} lasts longer."
        named = (f"I check {_seg(x)}, the {x.label} lasts {_t(x.duration)} seconds; then {_seg(y)}, "
                 f"the {y.label} lasts {_t(y.duration)} seconds")
        walk = _walk(scene, spec, [x, y], {id(e): f", {_t(e.duration)} seconds" for e in (x, y)})
        think = (walk or named) + ". So " + verdict
        return Draft("duration_compare", f"Which lasts longer, the {x.label} or the {y.label}?", choices, answer,
                     think, (x.span, y.span), {"labels": [x.label, y.label], "min_diff": spec.min_duration_diff_s})
    return None


def truth_duration_compare(scene: Scene, query: dict, option: str) -> bool:
    durs = {}
    for lab in query["labels"]:
        evs = _by_label(scene, lab)
        if len(evs) != 1:
            return False
        durs[lab] = evs[0].duration
    a, b = (durs[lab] for lab in query["labels"])
    if abs(a - b) < 0.05:
        return option == SAME_DURATION
    if abs(a - b) < query["min_diff"] - 1e-9:
        return False  # too close to call: no option is true
    return option == max(durs, key=durs.get)


def make_gap(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    cands = [e for e in _unique(scene) if _alone(scene, e)]
    rng.shuffle(cands)
    for x in cands:
        y = _next_after(scene, x)
        if y is None or y.label == x.label or not _alone(scene, y) or len(_by_label(scene, y.label)) != 1:
            continue
        gap = round(y.onset - x.offset, 1)
        step = spec.min_option_gap_s
        values = sorted({round(gap + k * step, 1) for k in range(-3, 4) if gap + k * step >= 0.1 - 1e-9})
        wrong = [v for v in values if v != gap]
        rng.shuffle(wrong)
        fmt = [f"{v:.1f} seconds" for v in wrong[:spec.n_choices - 1]]
        answer = f"{gap:.1f} seconds"
        named = f"I check both: {_seg(x)}, the {x.label} ends; then {_seg(y)}, the {y.label} starts"
        think = (_walk(scene, spec, [y]) or named) + f". So the gap is {answer}."
        return Draft("gap", f"How long is the silence between the {x.label} and the {y.label}?",
                     _options(answer, fmt, rng), answer, think, (x.span, y.span), {"labels": [x.label, y.label]})
    return None


def truth_gap(scene: Scene, query: dict, option: str) -> bool:
    x, y = (_by_label(scene, lab) for lab in query["labels"])
    if len(x) != 1 or len(y) != 1:
        return False
    try:
        value = float(option.split()[0])
    except (ValueError, IndexError):
        return False
    between = [e for e in scene.events if _overlaps(e, Event("gap", "gap", x[0].offset, max(y[0].onset, x[0].offset + 0.1)))]
    return not between and abs(value - (y[0].onset - x[0].offset)) < 0.05


def make_what_follows(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    cands = _unique(scene)
    rng.shuffle(cands)
    for x in cands:
        y = _next_after(scene, x)
        if y is None or y.label == x.label:
            continue
        pool = _label_pool(scene, {x.label, y.label}, rng)
        choices = _options(y.label, _distractors(y.label, pool, rng, spec.n_choices), rng)
        think = f"I check {_seg(x)}, the {x.label}; right after it {_seg(y)}, there is the {y.label}."
        walk = _walk(scene, spec, [y])
        if walk:
            think = walk + f". So right after the {x.label} comes the {y.label}."
        return Draft("what_follows", f"What is heard right after the {x.label}?", choices, y.label, think,
                     (x.span, y.span), {"label": x.label})
    return None


def truth_what_follows(scene: Scene, query: dict, option: str) -> bool:
    xs = _by_label(scene, query["label"])
    if len(xs) != 1:
        return False
    nxt = _next_after(scene, xs[0])
    if nxt is None:
        return False
    tied = [e for e in scene.events if abs(e.onset - nxt.onset) < 1e-9 and e.onset >= xs[0].offset - 1e-9]
    return option == nxt.label and len({e.label for e in tied}) == 1


def make_overlap(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    unique = _unique(scene)
    pairs = [(a, b) for a in unique for b in unique if a is not b and _overlaps(a, b)]
    if not pairs:
        return None
    x, y = pairs[int(rng.integers(len(pairs)))]
    if any(_overlaps(x, o) for o in scene.events if o is not x and o is not y):
        return None  # a third sound overlaps as well: the question would have two answers
    pool = [lab for lab in _label_pool(scene, {x.label, y.label}, rng)
            if not any(_overlaps(x, o) for o in _by_label(scene, lab))]
    choices = _options(y.label, _distractors(y.label, pool, rng, spec.n_choices), rng)
    first, second = sorted((x, y), key=lambda e: (e.onset, -e.offset))
    think = f"I check {_seg(first)}, the {first.label}; during it {_seg(second)}, the {second.label} is heard too."
    walk = _walk(scene, spec, [second])
    if walk:
        think = walk + f". So the {y.label} is heard during the {x.label}."
    return Draft("overlap", f"Which sound is heard at the same time as the {x.label}?", choices, y.label, think,
                 (x.span, y.span), {"label": x.label})


def truth_overlap(scene: Scene, query: dict, option: str) -> bool:
    xs = _by_label(scene, query["label"])
    return option != query["label"] and any(_overlaps(x, o) for x in xs for o in _by_label(scene, option))


def _direction(a: float, b: float, words: tuple[str, str, str]) -> str:
    if abs(a - b) < 1e-6:
        return words[2]
    return words[0] if b > a else words[1]


def make_pitch_change(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    tones = [e for e in scene.events if e.kind == "tone"]
    rng.shuffle(tones)
    for e in tones:
        nxt = _next_after(scene, e, kind="tone")
        t = _free_time(scene, e, rng)
        if nxt is None or t is None:
            continue
        answer = _direction(float(e.attrs["hz"]), float(nxt.attrs["hz"]), DIRECTIONS)
        how = {"up": "higher", "down": "lower"}.get(answer, "the same pitch")
        think = (f"I listen at {_t(t)} seconds {_seg(e)}, the {e.label}; then the next tone {_seg(nxt)}, "
                 f"the {nxt.label}, {how}. So " + (f"it goes {answer}." if answer != DIRECTIONS[2] else f"{answer}."))
        return Draft("pitch_change", f"From the tone at {_t(t)} s to the next tone, does the pitch go up or down?",
                     _options(answer, [d for d in DIRECTIONS if d != answer], rng), answer, think,
                     (e.span, nxt.span), {"t": t})
    return None


def truth_pitch_change(scene: Scene, query: dict, option: str) -> bool:
    here = [e for e in scene.events_at(float(query["t"])) if e.kind == "tone"]
    if len(here) != 1:
        return False
    nxt = _next_after(scene, here[0], kind="tone")
    return nxt is not None and option == _direction(float(here[0].attrs["hz"]), float(nxt.attrs["hz"]), DIRECTIONS)


def make_tempo_change(scene: Scene, rng, spec: DataSpec) -> Draft | None:
    melodies = [e for e in scene.events if e.kind == "melody"]
    if len(melodies) < 2:
        return None
    m1, m2 = melodies[0], melodies[-1]
    answer = _direction(float(m1.attrs["bpm"]), float(m2.attrs["bpm"]), TEMPI)
    think = (f"The first melody {_seg(m1)}, the {m1.label} at {m1.attrs['bpm']} bpm; the last {_seg(m2)}, "
             f"the {m2.label} at {m2.attrs['bpm']} bpm. So " + (f"it gets {answer}." if answer != TEMPI[2] else f"{answer}."))
    return Draft("tempo_change", "From the first melody to the last one, does the tempo get faster or slower?",
                 _options(answer, [d for d in TEMPI if d != answer], rng), answer, think, (m1.span, m2.span), {})


def truth_tempo_change(scene: Scene, query: dict, option: str) -> bool:
    melodies = [e for e in scene.events if e.kind == "melody"]
    if len(melodies) < 2:
        return False
    return option == _direction(float(melodies[0].attrs["bpm"]), float(melodies[-1].attrs["bpm"]), TEMPI)


QTYPES = {
    "tone_at_time": (make_tone_at_time, truth_at_time),
    "sound_at_time": (make_sound_at_time, truth_at_time),
    "order": (make_order, truth_order),
    "count_in_span": (make_count_in_span, truth_count_in_span),
    "knock_count": (make_knock_count, truth_knock_count),
    "duration_compare": (make_duration_compare, truth_duration_compare),
    "gap": (make_gap, truth_gap),
    "what_follows": (make_what_follows, truth_what_follows),
    "overlap": (make_overlap, truth_overlap),
    "pitch_change": (make_pitch_change, truth_pitch_change),
    "tempo_change": (make_tempo_change, truth_tempo_change),
}

# What each type asks, in words (the LLM teacher's prompt uses these).
QTYPE_DESCRIPTIONS = {
    "tone_at_time": "which tone (pitch) is heard at a given time",
    "sound_at_time": "which sound is heard at a given time",
    "order": "which of several sounds comes first",
    "count_in_span": "how many sounds of one kind occur within a time span",
    "knock_count": "how many knocks occur within a time span",
    "duration_compare": "which of two sounds lasts longer",
    "gap": "how long the silence between two sounds is",
    "what_follows": "what is heard right after a given sound",
    "overlap": "which sound is heard at the same time as another",
    "pitch_change": "whether the pitch goes up or down from one tone to the next",
    "tempo_change": "whether the tempo gets faster or slower from one melody to another",
}


def true_options(scene: Scene, qtype: str, query: dict, choices) -> list[str]:
    """The options that are true of the scene, recomputed from its events."""
    if qtype not in QTYPES:
        raise KeyError(f"unknown question type {qtype!r}; known: {sorted(QTYPES)}")
    truth = QTYPES[qtype][1]
    return [c for c in choices if truth(scene, query, c)]
