"""Cached helpers for the notebooks: each notebook runs on its own and fast.

The tiny models after each stage ship under `data/` (`tiny_base`, `tiny_sft`, `tiny_grpo`),
made by the main job (`echo-lite demo`, see `data/*/MADE_BY.md`); a notebook loads them.
When one is missing (a fresh experiment, a changed preset) it is rebuilt into `cache/course/`
with the same stage functions as the main job, at the course's smaller sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echo_lite.config import DATA_DIR, REPO_ROOT, get_preset
from echo_lite.model import LoadedModel, is_model_dir, load_preset_model

CACHE_DIR = REPO_ROOT / "cache" / "course"
SHIPPED = {"sft": DATA_DIR / "tiny_sft", "grpo": DATA_DIR / "tiny_grpo"}


@dataclass(frozen=True)
class CourseSpec:
    n_items: int = 600  # items drafted by synth for the notebooks (~20 s)
    sft_steps: int = 300  # only when data/tiny_sft is missing
    grpo_steps: int = 12  # only when data/tiny_grpo is missing
    eval_items: int = 48


COURSE = CourseSpec()


def course_preset(spec: CourseSpec = COURSE):
    # No second SFT round when rebuilt here: at the course's 300 steps few answers are well formed yet,
    # so the round would have little of its own to learn from (the shipped SFT model has it).
    return get_preset("tiny").with_overrides(demo={"n_items": spec.n_items, "grpo_steps": spec.grpo_steps,
                                                   "eval_items": spec.eval_items}, self_improve={"questions": 0})


def course_data(spec: CourseSpec = COURSE) -> Path:
    """The synth output (sft / rl / eval splits) the notebooks share."""
    from echo_lite.pipeline import run_data

    return run_data(CACHE_DIR, course_preset(spec))


def _shipped(stage: str) -> Path | None:
    path = SHIPPED[stage]
    return path if is_model_dir(path) else None


def course_sft(spec: CourseSpec = COURSE) -> Path:
    """The SFT model: shipped, or trained into the cache on first use."""
    from echo_lite.pipeline import run_sft_stage

    return _shipped("sft") or run_sft_stage(CACHE_DIR, course_data(spec), course_preset(spec), steps=spec.sft_steps)


def course_grpo(spec: CourseSpec = COURSE) -> Path:
    """The SFT+GRPO model: shipped, or trained into the cache on first use."""
    from echo_lite.pipeline import run_grpo_stage

    return _shipped("grpo") or run_grpo_stage(CACHE_DIR, "grpo", course_data(spec), course_preset(spec),
                                              course_sft(spec))


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
