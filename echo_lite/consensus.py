"""Consensus decoding: sample several interleaved answers to one question, keep the one the
others agree with most (self-consistency, Wang et al. 2023, read as minimum-Bayes-risk choice).

Agreement between two answers is the sum of two parts, each in [0, 1]: the same option chosen
(1 or 0), and how well their cited spans line up (each span's best IoU among the other answer's
spans, averaged both ways). A malformed answer is kept only when every sample is malformed. No
label is read: the choice uses the samples alone, so it applies to any question.

Why: a greedy answer is one path through the re-listens; where the model is unsure where a sound
is, its samples scatter and the path most of them share is the better bet. On the tiny preset's
300 held-out eval items, 8 samples at the evaluation temperature (0.7) moved the first-round SFT
model's named IoU from 0.465 (greedy) to 0.519-0.541 and its accuracy from 0.623 to 0.617-0.707
over three sets of samples (docs/localisation.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from echo_lite.answers import extract_answer, match_choice, normalize
from echo_lite.interleave import InterleaveRuntime, Query, RuntimeInputError
from echo_lite.rewards import format_reward
from echo_lite.segments import parse_segments, segment_iou
from echo_lite.trace import Trace, policy_text

ANSWER_WEIGHT = 1.0  # agreement on the option chosen
SPAN_WEIGHT = 1.0  # agreement on where the answer listened


def span_agreement(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """How well two answers' cited spans line up, in [0, 1]: each span's best IoU among the other
    answer's spans, averaged over both answers' spans. 1 when neither cites a span."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    best = lambda xs, ys: np.mean([max(segment_iou(x, y) for y in ys) for x in xs])  # noqa: E731
    return float(0.5 * (best(a, b) + best(b, a)))


def _chosen_option(text: str, choices: Sequence[str] | None) -> str | int | None:
    answer = extract_answer(text)
    if answer is None:
        return None
    return match_choice(answer, choices) if choices else normalize(answer) or None


def consensus_scores(texts: Sequence[str], choices: Sequence[str] | None = None,
                     answer_weight: float = ANSWER_WEIGHT, span_weight: float = SPAN_WEIGHT) -> list[float]:
    """Each answer's summed agreement with the other answers (see the module's docstring)."""
    if not texts:
        raise ValueError("consensus needs at least one answer")
    options = [_chosen_option(t, choices) for t in texts]
    spans = [[tag.span for tag in parse_segments(t) if tag.ok] for t in texts]
    scores = []
    for i in range(len(texts)):
        scores.append(sum(answer_weight * (options[i] is not None and options[i] == options[j])
                          + span_weight * span_agreement(spans[i], spans[j])
                          for j in range(len(texts)) if j != i))
    return scores


def consensus_index(texts: Sequence[str], choices: Sequence[str] | None = None, **weights) -> int:
    """Index of the answer the others agree with most; among well-formed answers when there are
    any. Ties go to the earliest sample, so a run gives the same choice every time."""
    scores = consensus_scores(texts, choices, **weights)
    formed = [i for i, t in enumerate(texts) if format_reward(t) > 0] or list(range(len(texts)))
    return max(formed, key=lambda i: (scores[i], -i))


def consensus_generate(gen: InterleaveRuntime, queries: Sequence[Query], samples: int,
                       seed: int = 0) -> list[Trace]:
    """One Trace per query: the consensus of `samples` sampled answers (`gen` must sample).

    The samples of a query run side by side in one batch (they share its prompt, as a GRPO group
    does); the sample seeds are `seed + i * samples + k`, so a run gives the same answers every time.
    Each returned Trace records the consensus in `timings` (`consensus_samples`, `consensus_chosen`)."""
    if samples < 1:
        raise RuntimeInputError(f"samples={samples}: consensus needs at least one sample per question")
    if samples > 1 and not gen.temperature:
        raise RuntimeInputError(f"samples={samples} with temperature {gen.temperature}: greedy samples are all "
                                "the same answer; give a temperature above 0 (the paper evaluates at 0.7)")
    queries = list(queries)
    repeated = [q for q in queries for _ in range(samples)]
    traces = gen.generate(repeated, seeds=[seed + i for i in range(len(repeated))])
    chosen = []
    for i, q in enumerate(queries):
        group = traces[i * samples:(i + 1) * samples]
        k = consensus_index([policy_text(t, gen.tok) for t in group], q.choices)
        t = group[k]
        t.timings = {**t.timings, "consensus_samples": samples, "consensus_chosen": k}
        chosen.append(t)
    return chosen
