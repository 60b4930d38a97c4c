"""Cached helpers for the notebooks: each notebook runs on its own, building what it needs
the first time (data, SFT, GRPO on the tiny preset) and reusing it afterwards.

They call the same stage functions as the main job (`pipeline.py`), in `cache/course/`,
with the course's sizes (`CourseSpec`: small enough that a notebook builds its inputs within
its CI budget on 2 CPU cores). Delete `cache/` to rebuild from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echo_lite.config import REPO_ROOT, get_preset
from echo_lite.model import LoadedModel, load_preset_model

CACHE_DIR = REPO_ROOT / "cache" / "course"


@dataclass(frozen=True)
class CourseSpec:
    n_items: int = 600  # items drafted by synth for the notebooks
    sft_steps: int = 120
    grpo_steps: int = 12
    eval_items: int = 48


COURSE = CourseSpec()


def course_preset(spec: CourseSpec = COURSE):
    return get_preset("tiny").with_overrides(demo={"n_items": spec.n_items, "grpo_steps": spec.grpo_steps,
                                                   "eval_items": spec.eval_items})


def course_data(spec: CourseSpec = COURSE) -> Path:
    """The synth output (sft / rl / eval splits) the notebooks share."""
    from echo_lite.pipeline import run_data

    return run_data(CACHE_DIR, course_preset(spec))


def course_sft(spec: CourseSpec = COURSE) -> Path:
    """The LoRA adapter of the course's SFT run (trained on first use)."""
    from echo_lite.pipeline import run_sft_stage

    return run_sft_stage(CACHE_DIR, course_data(spec), course_preset(spec), steps=spec.sft_steps)


def course_grpo(spec: CourseSpec = COURSE) -> Path:
    """The LoRA adapter of the course's GRPO run from the SFT model (trained on first use)."""
    from echo_lite.pipeline import run_grpo_stage

    return run_grpo_stage(CACHE_DIR, "grpo", course_data(spec), course_preset(spec), course_sft(spec))


def course_model(stage: str = "sft", spec: CourseSpec = COURSE) -> LoadedModel:
    """The tiny model after a stage: "base", "sft" or "grpo"."""
    from echo_lite.pipeline import load_grpo_model
    from echo_lite.sft import load_sft_model

    preset = course_preset(spec)
    if stage == "base":
        return load_preset_model(preset)
    if stage == "sft":
        return load_sft_model(course_sft(spec), preset)
    if stage == "grpo":
        return load_grpo_model(course_grpo(spec), preset, course_sft(spec))
    raise ValueError(f"unknown stage {stage!r}; use 'base', 'sft' or 'grpo'")
