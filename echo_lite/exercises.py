"""Checkers for the notebooks' exercises: each runs the student's function (or value) against the
reference implementation on cases taken from the method, and says exactly what differs.

In a notebook: `check_consistency_reward(my_consistency_reward)`. An exercise not attempted yet
(its function raises NotImplementedError) is reported as such without failing the notebook; a
wrong answer raises `ExerciseError` with the first case that differs, the expected value and the
student's; a right one prints a line and returns True.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from echo_lite.audio import audio_token_count
from echo_lite.config import SAMPLE_RATE, DataSpec, RewardSpec, SegmentLimits
from echo_lite.rewards import consistency_reward, format_reward
from echo_lite.segments import parse_segments, segment_iou


class ExerciseError(AssertionError):
    """A wrong answer; the message names the case, what was expected and what came back."""


NOT_ATTEMPTED = "not attempted yet"


def _same(a, b, tol: float) -> bool:
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b))
    return a == b


def check_function(name: str, student: Callable, reference: Callable, cases: Sequence[tuple], tol: float = 1e-6,
                   hint: str = "", labels: Sequence[str] | None = None) -> bool | str:
    """Compare `student(*case)` with `reference(*case)` on every case; raise on the first difference.

    labels: a short description per case for the messages, where `repr(case)` would be unreadable
    (tensors, scenes)."""
    for i, case in enumerate(cases):
        shown = labels[i] if labels is not None else repr(case)
        expected = reference(*case)
        try:
            got = student(*case)
        except NotImplementedError:
            print(f"{name}: {NOT_ATTEMPTED}")
            return NOT_ATTEMPTED
        except Exception as err:  # the student's bug: report it with the case that triggered it
            raise ExerciseError(f"{name}: case {i} {shown} raised {type(err).__name__}: {err}") from err
        if not _same(got, expected, tol):
            raise ExerciseError(f"{name}: case {i} {shown}: expected {expected!r}, got {got!r}."
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


# --------------------------------------------------------------------------------------
# Notebook 01: where the attention goes, and what an oracle re-listens to.
# --------------------------------------------------------------------------------------
def _plain(x, digits: int = 6):
    """A tensor / array / number as nested lists of floats rounded to `digits` (readable messages)."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v, digits) for v in x]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return round(float(x), digits)
    return x


# (seed, layers, batch, heads, queries, keys, audio keys per batch row, rows normalised)
ATTENTION_CASES = [
    (0, 1, 1, 1, 4, 4, [[0, 1]], True),
    (1, 2, 1, 3, 6, 6, [[1, 2, 3]], True),
    (2, 3, 2, 2, 3, 7, [[0, 1, 2, 3], [2, 5]], True),  # the last 3 queries of a 7-token sequence
    (3, 2, 1, 2, 5, 5, [[0, 1, 2]], False),  # rows not summing to 1: divide by each row's total
    (4, 2, 1, 2, 4, 4, [[]], True),  # no audio at all
]


def _attention_case(seed, layers, batch, heads, queries, keys, audio, normalised):
    import torch

    g = torch.Generator().manual_seed(seed)
    q_pos = torch.arange(keys - queries, keys)[:, None]  # query i sits at position keys - queries + i
    hidden = torch.arange(keys)[None, :] > q_pos  # causal: later keys are not visible
    attentions = []
    for _ in range(layers):
        a = torch.randn(batch, heads, queries, keys, generator=g).masked_fill(hidden, float("-inf")).softmax(-1)
        if not normalised:
            a = a * (0.5 + torch.rand(batch, heads, queries, 1, generator=g))
        attentions.append(a)
    mask = torch.zeros(batch, keys, dtype=torch.bool)
    for row, ks in enumerate(audio):
        mask[row, ks] = True
    return attentions, mask


def _attention_label(seed, layers, batch, heads, queries, keys, audio, normalised):
    return (f"({layers} layer(s) of shape (B={batch}, H={heads}, Q={queries}, K={keys}), causal, audio keys "
            f"{audio if batch > 1 else audio[0]}{'' if normalised else ', rows not summing to 1'})")


def check_audio_share(student: Callable) -> bool | str:
    """Exercise (notebook 01): the share of each query's attention that falls on audio keys, averaged
    over layers and heads: `student(attentions, audio_mask)` with one (B, H, Q, K) tensor per layer and
    a (B, K) bool mask -> (B, Q). Reference: `echo_lite.attention.audio_share`."""
    from echo_lite.attention import audio_share

    cases = [_attention_case(*c) for c in ATTENTION_CASES]
    return check_function("audio share", lambda a, m: _plain(student(a, m)), lambda a, m: _plain(audio_share(a, m)),
                          cases, tol=1e-4, labels=[_attention_label(*c) for c in ATTENTION_CASES],
                          hint="per layer and head: weight on audio keys / the row's total weight, shape (B, Q) "
                               "after averaging over layers and heads")


# (scene seed, question draw): "Which tone is heard at t s?" as the rule teacher asks it
TONE_QUESTIONS = [(105, 0), (105, 1), (99, 0), (99, 1), (23, 5), (11, 5), (42, 1)]


def tone_questions() -> list[tuple]:
    """(scene, t, the teacher's draft) for each of `TONE_QUESTIONS` (the decisive span is the draft's)."""
    import numpy as np

    from echo_lite.data.questions import make_tone_at_time
    from echo_lite.data.world import sample_scene

    out = []
    for seed, draw in TONE_QUESTIONS:
        scene = sample_scene(seed)
        draft = make_tone_at_time(scene, np.random.default_rng(draw), DataSpec())
        out.append((scene, draft.query["t"], draft))
    return out


def _scene_label(scene, t: float) -> str:
    return f"({scene.scene_id}, {scene.duration} s, {len(scene.events)} events; 'Which tone is heard at {t} s?')"


def check_oracle_span(student: Callable) -> bool | str:
    """Exercise (notebook 01): `student(scene, t)` -> the (start, end) an oracle re-listens to for
    "Which tone is heard at t s?": the whole tone sounding at t, the rule teacher's decisive span."""
    qs = tone_questions()
    decisive = {(scene.scene_id, t): draft.decisive_spans[0] for scene, t, draft in qs}
    return check_function("oracle span", student, lambda scene, t: decisive[(scene.scene_id, t)],
                          [(scene, t) for scene, t, _ in qs], tol=1e-6,
                          labels=[_scene_label(scene, t) for scene, t, _ in qs],
                          hint="the event of kind 'tone' with onset <= t < offset; return its (onset, offset)")


# --------------------------------------------------------------------------------------
# Notebook 02: the teacher's chain of thought, and the filter on cited spans.
# --------------------------------------------------------------------------------------
def check_tone_think(student: Callable[..., str]) -> bool | str:
    """Exercise (notebook 02): `student(scene, t)` -> the rule teacher's chain of thought (the text inside
    <think>) for "Which tone is heard at t s?". It must pass the data filters (`judge_item` routes the
    item to SFT) and cite the tone's exact span with `<seg>start, end</seg>`."""
    import dataclasses

    from echo_lite.data.filters import judge_item

    spec, limits = DataSpec(), SegmentLimits()
    qs = tone_questions()
    for i, (scene, t, draft) in enumerate(qs):
        shown = _scene_label(scene, t)
        assert judge_item(scene, draft, spec, limits)[0].route() == ("sft", None)  # the reference passes
        try:
            think = student(scene, t)
        except NotImplementedError:
            print(f"teacher think: {NOT_ATTEMPTED}")
            return NOT_ATTEMPTED
        except Exception as err:
            raise ExerciseError(f"teacher think: case {i} {shown} raised {type(err).__name__}: {err}") from err
        if not isinstance(think, str):
            raise ExerciseError(f"teacher think: case {i} {shown}: expected a str, got {type(think).__name__}")
        verdict, cites = judge_item(scene, dataclasses.replace(draft, think=think), spec, limits)
        route = verdict.route()
        if route != ("sft", None):
            raise ExerciseError(f"teacher think: case {i} {shown}: the filters route {think!r} to {route[0]} "
                                f"({route[1]}); expected sft. The reference writes {draft.think!r}")
        spans = [c.span for c in cites if c.error is None]
        want = draft.decisive_spans[0]
        if not any(_same(list(s), list(want), 1e-6) for s in spans):
            raise ExerciseError(f"teacher think: case {i} {shown}: cites {spans}, expected the tone's exact span "
                                f"{want} among them (the {draft.answer} sounds from {want[0]} to {want[1]} s)")
    print(f"teacher think: all {len(qs)} cases pass the filters and cite the decisive span")
    return True


def reference_cited_span(scene, span: tuple[float, float], label: str) -> str:
    """What the data filter (`filters.check_cot`) says of one `<seg>` that names `label`:
    'ok', 'cites_absent_event' or 'seg_misplaced'."""
    from echo_lite.data.filters import check_cot
    from echo_lite.data.questions import Draft
    from echo_lite.segments import format_segment

    think = f"I listen to {format_segment(*span)}, this is the {label}."
    reasons, _ = check_cot(scene, Draft("exercise", "?", (label,), label, think, ()), DataSpec(), SegmentLimits())
    found = [r for r in reasons if r in ("cites_absent_event", "seg_misplaced")]
    if set(reasons) - set(found):
        raise ValueError(f"case {span} {label!r} trips other checks too: {reasons}")
    return found[0] if found else "ok"


# (scene seed, cited span, the label the clause names)
CITATION_CASES = [
    (105, (16.4, 16.7), "C5 tone"),  # the exact span
    (105, (16.0, 16.7), "C5 tone"),  # IoU 0.43: close enough
    (105, (20.0, 21.0), "C5 tone"),  # the wrong place
    (105, (8.1, 9.6), "E6 tone"),  # no E6 tone in this clip
    (105, (9.2, 10.0), "G4 tone"),  # IoU 0.21 < 0.3
    (105, (4.7, 5.5), "3 knocks"),  # the span of the 4 knocks
    (99, (9.7, 12.4), "C6 tone"),  # two C6 tones: the best match counts
    (99, (0.2, 2.0), "c6 tone"),  # labels match case-insensitively
]


def check_cited_span(student: Callable) -> bool | str:
    """Exercise (notebook 02): the filter on one cited span, `student(scene, span, label)` -> 'ok',
    'cites_absent_event' (no event with that label in the clip) or 'seg_misplaced' (IoU with every
    event of that label below DataSpec.cite_iou). Reference: `echo_lite.data.filters.check_cot`."""
    from echo_lite.data.world import sample_scene

    scenes = {seed: sample_scene(seed) for seed in {c[0] for c in CITATION_CASES}}
    cases = [(scenes[seed], span, label) for seed, span, label in CITATION_CASES]
    labels = [f"({scenes[seed].scene_id}: <seg>{a:.1f}, {b:.1f}</seg> cited as {label!r})"
              for seed, (a, b), label in CITATION_CASES]
    return check_function("cited span", student, reference_cited_span, cases, labels=labels,
                          hint=f"events whose label equals the cited one (case-insensitive): none -> "
                               f"'cites_absent_event'; best IoU with them < cite_iou = {DataSpec().cite_iou} -> "
                               f"'seg_misplaced'; otherwise 'ok'")


# --------------------------------------------------------------------------------------
# Notebook 06: the benchmarks' own matching rule, and MMAR's average.
# --------------------------------------------------------------------------------------
_WEATHER = ("rain", "thunder", "wind")
_TONES = ("C4 tone", "C5 tone", "E6 tone")
STRING_MATCH_CASES = [
    ("rain", "rain", _WEATHER),
    ("thunder", "The answer is Thunder.", _WEATHER),  # case and punctuation do not matter
    ("rain", "rain or thunder", _WEATHER),  # also names a wrong option: wrong
    ("rain", "I cannot tell", _WEATHER),  # matches no option: wrong, no fallback to the first option
    ("rain", "", _WEATHER),  # no prediction
    ("C4 tone", "c4 tone", _TONES),  # 'tone' is shared with the answer: not a wrong option's word
    ("C4 tone", "a tone", _TONES),  # 'c4' missing
    ("C4 tone", "C5", _TONES),
    ("spoken four", "four", ("spoken four", "spoken five", "noise burst")),
    ("G major melody", "G-major melody!", ("G major melody", "G minor melody")),
]


def check_string_match(student: Callable[[str, str, Sequence[str]], bool]) -> bool | str:
    """Exercise (notebook 06): MMAU's `string_match` rule, which MMAR's scorer reuses:
    `student(answer, prediction, choices)` -> True when the prediction's words include every word of the
    answer and none of the words that only a wrong option has. Reference: `echo_lite.scoring.string_match`."""
    from echo_lite.scoring import string_match

    return check_function("string match", lambda a, p, c: bool(student(a, p, c)), string_match,
                          STRING_MATCH_CASES,
                          hint="lower-case words (regex \\b\\w+\\b); all answer words in the prediction, no word that "
                               "only a wrong option has; an empty or unmatched prediction is wrong (no fallback to "
                               "the first option)")


def _mmar_results(seed: int, sizes: dict[str, int], p_correct: float) -> list[tuple[str, bool]]:
    """Per-item (modality, correct) results with `sizes[g]` items in group g (a fixed draw)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(g, bool(rng.random() < p_correct)) for g, n in sizes.items() for _ in range(n)]


# (seed, items per modality group, share correct)
MMAR_CASES = [
    (0, {"sound": 8, "music": 2, "speech": 5, "sound-music": 1, "sound-speech": 3, "music-speech": 4,
         "sound-music-speech": 6}, 0.5),  # uneven groups: macro != micro
    (1, {"sound": 10, "music": 1, "speech": 3}, 0.6),  # only three groups have items
    (2, {"sound": 2, "music": 2, "speech": 2, "sound-music": 2, "sound-speech": 2, "music-speech": 2,
         "sound-music-speech": 2}, 1.0),  # all correct
    (3, {"speech": 7, "sound-music-speech": 1}, 0.3),
    (4, {"music": 12, "sound-speech": 2, "music-speech": 5}, 0.7),
]


def reference_mmar_macro(results: Sequence[tuple[str, bool]]) -> float:
    """MMAR's "Avg" (%) for per-item (modality, correct) results, through the official path: an
    `MMAR-meta.jsonl` file, a prediction file (`answer_prediction`) and `echo_lite.scoring.score_mmar`."""
    import json
    import tempfile
    from pathlib import Path

    from echo_lite.scoring import load_mmar, score_mmar, write_predictions

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        rows, preds = [], {}
        for i, (group, correct) in enumerate(results):
            rows.append({"id": f"m{i}", "audio_path": f"./audio/{i}.wav", "question": "?",
                         "choices": ["rain", "thunder"], "answer": "rain", "modality": group,
                         "category": "x", "sub-category": "x", "language": "en"})
            preds[f"m{i}"] = "rain" if correct else "thunder"
        (root / "MMAR-meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return score_mmar(write_predictions(load_mmar(root), preds, root / "pred.jsonl", "mmar"))["macro"]


def _mmar_label(results: Sequence[tuple[str, bool]]) -> str:
    from echo_lite.scoring import MMAR_MODALITIES

    parts = [f"{g} {sum(ok for h, ok in results if h == g)}/{sum(h == g for h, _ in results)}"
             for g in MMAR_MODALITIES if any(h == g for h, _ in results)]
    return f"({len(results)} items; correct per group: {', '.join(parts)})"


def _real(x):
    """A numpy or torch scalar as a plain Python number, so that messages read `37.9`, not
    `np.float64(37.9)`; anything else as it is."""
    if hasattr(x, "item") and not isinstance(x, (list, tuple)):
        try:
            return x.item()
        except (ValueError, RuntimeError):  # not a single number: leave it for the comparison to reject
            return x
    return x


def check_mmar_macro(student: Callable[[list], float]) -> bool | str:
    """Exercise (notebook 06): `student(results)` -> MMAR's "Avg" in % from per-item `(modality, correct)`
    pairs: the accuracy of each modality group that has items, then the unweighted mean of those groups.
    Reference: `echo_lite.scoring.score_mmar`'s `macro`."""
    cases = [(_mmar_results(*c),) for c in MMAR_CASES]
    return check_function("MMAR macro average", lambda r: _real(student(r)), reference_mmar_macro, cases, tol=1e-6,
                          labels=[_mmar_label(c[0]) for c in cases],
                          hint="accuracy (%) per modality group with items, then their unweighted mean; the "
                               "mean over all items is the micro average, which weights large groups more")


# --------------------------------------------------------------------------------------
# Notebook 07: what a recipe costs in memory, and what a re-listen costs in context.
# --------------------------------------------------------------------------------------
# (label, total params, trainable params, weight bytes, AdamW state bytes, master-copy bytes)
MEMORY_CASES = [
    ("omni-3b full FT, bf16 weights and AdamW states", 4.70e9, 3.397e9, 2, 2, 0),
    ("omni-3b LoRA r=16, bf16", 4.70e9, 29.9e6, 2, 2, 0),
    ("omni-7b full FT, classic mixed precision (fp32 master and states)", 8.93e9, 7.62e9, 2, 4, 4),
    ("omni-7b LoRA r=16, bf16", 8.93e9, 40.4e6, 2, 2, 0),
    ("omni-7b, nothing trained (inference)", 8.93e9, 0, 2, 2, 0),
    ("tiny full FT of the language model, fp32", 881_728, 736_192, 4, 4, 0),
]


def check_training_memory(student: Callable[..., float]) -> bool | str:
    """Exercise (notebook 07): `student(total, trainable, weight_bytes, state_bytes, master_bytes)` -> the
    GiB a training step holds before activations: every weight, plus per trainable weight its gradient,
    AdamW's two moments and the master copy. Reference: `echo_lite.model.estimate_training_memory_gib`."""
    from echo_lite.model import estimate_training_memory_gib

    cases = [c[1:] for c in MEMORY_CASES]
    labels = [f"({c[0]}: {c[1]:,.0f} weights, {c[2]:,.0f} trainable, {c[3]} B/weight, {c[4]} B/state, "
              f"{c[5]} B master)" for c in MEMORY_CASES]
    return check_function("training memory", lambda *c: _real(student(*c)), estimate_training_memory_gib, cases, tol=1e-4,
                          labels=labels,
                          hint="bytes = total * weight_bytes + trainable * (weight_bytes + 2 * state_bytes + "
                               "master_bytes); 1 GiB = 2**30 bytes, not 1e9")


# (clip seconds, requested spans in the order the model writes them)
CONTEXT_CASES = [
    (10.0, []),
    (10.0, [(2.0, 5.0)]),
    (30.0, [(1.0, 2.5), (12.3, 15.0)]),
    (10.0, [(8.0, 12.0)]),  # the end is clamped to the clip
    (10.0, [(3.0, 3.1), (4.0, 4.25)]),  # under 0.2 s: not inserted
    (10.0, [(11.0, 12.0), (5.0, 4.0)]),  # past the end, reversed: not inserted
    (20.0, [(float(i), i + 0.5) for i in range(10)]),  # at most 8 clips
    (7.3, [(0.05, 0.33), (6.01, 7.29)]),
]


def reference_context_audio_tokens(clip_seconds: float, spans: Sequence[tuple[float, float]]) -> int:
    """Audio placeholder tokens in the context once an answer has re-listened to `spans`: the question's
    clip, then each clip the runtime inserts (`validate_segment` with `SegmentLimits`, cut by `cut_span`),
    as `InterleavedGenerator` counts them."""
    import numpy as np

    from echo_lite.audio import cut_span
    from echo_lite.segments import validate_segment

    wav = np.zeros(int(round(clip_seconds * SAMPLE_RATE)), dtype=np.float32)
    limits = SegmentLimits()
    total, accepted = audio_token_count(len(wav)), 0
    for span in spans:
        dec = validate_segment(tuple(span), clip_seconds, accepted, limits)
        if dec.accepted:
            accepted += 1
            total += audio_token_count(len(cut_span(wav, *dec.applied, min_s=limits.min_clip_s)))
    return total


def check_context_audio_tokens(student: Callable[[float, list], int]) -> bool | str:
    """Exercise (notebook 07): `student(clip_seconds, spans)` -> how many audio tokens the context holds
    after the question's clip and the re-listened spans the runtime accepts."""
    return check_function("context audio tokens", lambda s, sp: _real(student(s, sp)), reference_context_audio_tokens, CONTEXT_CASES,
                          hint="audio_token_count(samples) for the clip, plus one per accepted span: at most "
                               f"{SegmentLimits().max_clips} spans, the end clamped to the clip, nothing for a span "
                               f"under {SegmentLimits().min_clip_s} s, reversed or starting past the end; a span's "
                               "samples are round(end * 16000) - round(start * 16000)")
