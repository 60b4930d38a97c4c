"""The QA-CoT teacher interface and the offline rule teacher.

A teacher reads a clip's text simulation (and, for the rule teacher, its exact events)
and writes a question, options, the answer and a chain of thought with `<seg>` spans
(ECHO_METHOD.md section 3). Two implementations share this interface: `RuleTeacher`
(offline default, `echo_lite.data.questions`) and `echo_lite.data.llm.LLMTeacher` (any
OpenAI-compatible chat endpoint, e.g. DeepSeek-R1 or a local vLLM / llama.cpp server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from echo_lite.config import DataSpec
from echo_lite.data.caption import Caption
from echo_lite.data.questions import QTYPES, Draft
from echo_lite.data.world import Scene

DECLINED = "declined"  # the scene has nothing the requested types can ask about


@dataclass(frozen=True)
class Request:
    item_id: str
    scene: Scene
    caption: Caption
    qtypes: tuple[str, ...]  # preferred question types, in order
    seed: int


@dataclass(frozen=True)
class Outcome:
    item_id: str
    draft: Draft | None
    error: str | None = None  # why there is no draft (DECLINED, or the LLM's failure)


class Teacher(Protocol):
    name: str

    def teach(self, requests: Sequence[Request]) -> list[Outcome]: ...


def qtype_order(rng: np.random.Generator, spec: DataSpec) -> tuple[str, ...]:
    """All question types in a random order drawn by the preset's mix (weighted, no repeats)."""
    names = [q for q, _ in spec.qtype_weights]
    unknown = [q for q in names if q not in QTYPES]
    if unknown:
        raise KeyError(f"DataSpec.qtype_weights names unknown question type(s) {unknown}; known: {sorted(QTYPES)}")
    w = np.array([w for _, w in spec.qtype_weights], dtype=float)
    return tuple(str(q) for q in rng.choice(names, size=len(names), replace=False, p=w / w.sum()))


class RuleTeacher:
    """Questions, options and chains of thought written from the exact events (offline)."""

    name = "rule"

    def __init__(self, spec: DataSpec | None = None):
        self.spec = spec or DataSpec()

    def draft(self, request: Request) -> Outcome:
        for qtype in request.qtypes:
            rng = np.random.default_rng(np.random.SeedSequence([request.seed, zlib_crc(qtype)]))
            draft = QTYPES[qtype][0](request.scene, rng, self.spec)
            if draft is not None:
                return Outcome(request.item_id, draft)
        return Outcome(request.item_id, None, DECLINED)

    def teach(self, requests: Sequence[Request]) -> list[Outcome]:
        return [self.draft(r) for r in requests]


def zlib_crc(text: str) -> int:
    """A stable small integer for a string (Python's hash() changes between runs)."""
    import zlib

    return zlib.crc32(text.encode())
