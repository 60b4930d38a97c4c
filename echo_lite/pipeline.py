"""The main job: synth -> (shipped base) -> SFT (two rounds on tiny) -> GRPO -> eval, ending in the
ablation table analogous to the paper's (ECHO_METHOD.md section 6).

Every stage writes to `run_dir` and is skipped when its output is already there, so a
re-run (or a notebook) picks up where the last one stopped. Rows of the table:

| row | model | mode |
|---|---|---|
| base one-pass CoT | shipped base | one_pass |
| SFT round 1 interleaved | SFT on the teacher's data only (when the preset has a second round) | interleaved |
| SFT tags_only | SFT | tags_only |
| SFT interleaved | SFT | interleaved |
| SFT+GRPO interleaved (Echo) | SFT + GRPO | interleaved |
| GRPO without SFT | base + GRPO | interleaved |
| GRPO without segment reward | SFT + GRPO (no segment bonus) | interleaved |
| final random_segment / oracle_segment | SFT + GRPO | controls |

"SFT" is the model after the second round on its own consensus answers when the preset has one
(`self_improve.py`; the tiny preset does), and GRPO starts from it. The SFT and SFT+GRPO rows are
also given as the consensus of `DemoSpec.consensus_samples` sampled answers at the preset's
evaluation temperature (`consensus.py`), beside their greedy rows.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from echo_lite.config import DATA_DIR, Preset, get_preset
from echo_lite.data.synth import synthesize
from echo_lite.evaluate import METRICS_VERSION, evaluate_split
from echo_lite.grpo import rl_items, run_grpo
from echo_lite.model import is_model_dir, load_preset_model
from echo_lite.self_improve import run_self_improve
from echo_lite.sft import load_sft_model, run_sft, sft_items, steps_per_epoch

TABLE_KEYS = ("accuracy", "late_cue_accuracy", "segment_iou", "segments_per_answer", "seconds_per_answer")
SHIPPED_RESULTS = DATA_DIR / "demo_results.json"  # the table of the run whose checkpoints ship under data/
MACHINE_KEYS = ("seconds_per_answer",)  # timings: they depend on the machine, so they are not compared


def _stage(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_data(run_dir: Path, preset: Preset) -> Path:
    data = run_dir / "data"
    if not (data / "stats.json").exists():
        _stage(f"synth: {preset.demo.n_items} items")
        synthesize(data, preset=preset, n=preset.demo.n_items, seed=preset.demo.seed, write_hf=True, progress=False)
    return data


def run_sft_stage(run_dir: Path, data: Path, preset: Preset, steps: int | None = None) -> Path:
    final = run_dir / "sft" / "final"
    if not is_model_dir(final):
        items = sft_items(data / "sft")
        steps = steps or int(preset.demo.sft_epochs * steps_per_epoch(len(items), preset))
        _stage(f"sft: {len(items)} items, {steps} steps")
        run_sft(items, data / "sft", run_dir / "sft", preset, max_steps=steps, disable_tqdm=True, logging_steps=10)
    return final


def run_self_improve_stage(run_dir: Path, data: Path, preset: Preset, sft: Path) -> Path:
    """The SFT model's second round on its own consensus answers (`self_improve.py`), when the preset
    has one (`SelfImproveSpec.questions` > 0); else the SFT model itself."""
    if preset.self_improve.questions < 1:
        return sft
    out = run_dir / "sft_self"
    final = out / ("final_merged" if (sft / "adapter_config.json").exists() else "final")
    if not is_model_dir(final):
        spec = preset.self_improve
        _stage(f"sft, second round: consensus of {spec.samples} answers to {spec.questions} questions, "
               f"then {spec.steps} steps")
        run_self_improve(sft, sft_items(data / "sft"), data / "sft", out, preset, disable_tqdm=True, logging_steps=10)
    return final


class PipelineError(RuntimeError):
    """A run directory holds a stage's output that this run cannot reuse."""


def run_grpo_stage(run_dir: Path, name: str, data: Path, preset: Preset, init: Path | None) -> Path:
    out = run_dir / name
    final = out / "final"
    started = out / "started_from.txt"  # which model the run trains: a run from another one is not reused
    if out.exists() and not started.exists():  # versions before the marker started from round 1's SFT
        started.write_text(str(run_dir / "sft" / "final") if "no_sft" not in name else "base")
    if started.exists() and started.read_text() != str(init or "base"):
        raise PipelineError(f"{out}: a GRPO run from {started.read_text()}, not from {init or 'base'}; "
                            "move it away to train from this one")
    if not is_model_dir(final):
        out.mkdir(parents=True, exist_ok=True)
        started.write_text(str(init or "base"))
        _stage(f"grpo ({name}): {preset.demo.grpo_steps} steps")
        lm = load_sft_model(init, preset) if init else load_preset_model(preset)
        lm.preset = preset
        run_grpo(lm, rl_items(data / "rl"), out, preset, steps=preset.demo.grpo_steps, progress=False)
    return final


def load_grpo_model(final: Path, preset: Preset, init: Path | None):
    """A GRPO result: a full model, or its LoRA merged into the model it started from."""
    from peft import PeftModel

    if not (final / "adapter_config.json").exists():
        return load_preset_model(preset, final)
    lm = load_sft_model(init, preset) if init else load_preset_model(preset)
    lm.model = PeftModel.from_pretrained(lm.model, str(final)).merge_and_unload().eval()
    return lm


def run_demo_pipeline(preset: str | Preset = "tiny", run_dir: str | Path = "runs/demo-tiny") -> list[dict]:
    """Run (or resume) the whole tiny pipeline and return the ablation table's rows."""
    preset = get_preset(preset)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = run_data(run_dir, preset)
    sft_round1 = run_sft_stage(run_dir, data, preset)
    sft = run_self_improve_stage(run_dir, data, preset, sft_round1)
    no_seg = preset.with_overrides(rewards={"segment_bonus": 0.0})
    grpo = run_grpo_stage(run_dir, "grpo", data, preset, sft)
    grpo_no_sft = run_grpo_stage(run_dir, "grpo_no_sft", data, preset, None)
    grpo_no_seg = run_grpo_stage(run_dir, "grpo_no_segment_reward", data, no_seg, sft)

    models = {
        "base": lambda: load_preset_model(preset),
        "sft_round1": lambda: load_sft_model(sft_round1, preset),
        "sft": lambda: load_sft_model(sft, preset),
        "grpo": lambda: load_grpo_model(grpo, preset, sft),
        "grpo_no_sft": lambda: load_grpo_model(grpo_no_sft, preset, None),
        "grpo_no_seg": lambda: load_grpo_model(grpo_no_seg, preset, sft),
    }
    # What each model is, stored with its evaluations: one cached from another model is redone.
    # Evaluations of earlier versions carry none: theirs was round 1's SFT and the GRPO runs from it.
    grpo_from = lambda final, init: f"{final} from {init or 'base'}"  # noqa: E731
    model_ids = {"base": "base", "sft_round1": str(sft_round1), "sft": str(sft), "grpo": grpo_from(grpo, sft),
                 "grpo_no_sft": grpo_from(grpo_no_sft, None), "grpo_no_seg": grpo_from(grpo_no_seg, sft)}
    earlier = {**model_ids, "sft": str(sft_round1), "grpo": grpo_from(grpo, sft_round1),
               "grpo_no_seg": grpo_from(grpo_no_seg, sft_round1)}
    k = preset.demo.consensus_samples
    plan = [  # (row, model, mode, samples per answer: 1 = greedy, k = consensus of k sampled answers)
        ("base one-pass CoT", "base", "one_pass", 1),
        ("SFT round 1 interleaved", "sft_round1", "interleaved", 1),
        ("SFT tags_only", "sft", "tags_only", 1),
        ("SFT interleaved", "sft", "interleaved", 1),
        (f"SFT interleaved, consensus {k}", "sft", "interleaved", k),
        ("SFT+GRPO interleaved (Echo)", "grpo", "interleaved", 1),
        (f"SFT+GRPO, consensus {k}", "grpo", "interleaved", k),
        ("GRPO without SFT", "grpo_no_sft", "interleaved", 1),
        ("GRPO without segment reward", "grpo_no_seg", "interleaved", 1),
        ("final random_segment", "grpo", "random_segment", 1),
        ("final oracle_segment", "grpo", "oracle_segment", 1),
    ]
    plan = [p for p in plan if (p[3] == 1 or k > 1) and (p[1] != "sft_round1" or sft != sft_round1)]
    rows, loaded = [], {}
    for name, model_key, mode, samples in plan:
        stem = f"{model_key}_{mode}" + (f"_consensus{samples}" if samples > 1 else "")
        cache = run_dir / "eval" / f"{stem}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        same_model = cached.get("model", earlier[model_key]) == model_ids[model_key]
        if cached.get("metrics_version") == METRICS_VERSION and same_model:  # else redone: other measures or model
            metrics = cached
        else:
            _stage(f"eval: {name}")
            if model_key not in loaded:
                loaded = {model_key: models[model_key]()}  # one model in memory at a time
            sampling = {"samples": samples, "temperature": preset.sampling.eval_temperature} if samples > 1 else {}
            res = evaluate_split(loaded[model_key], data / "eval", mode=mode, limit=preset.demo.eval_items,
                                 seed=preset.demo.seed, **sampling)
            res.metrics["model"] = model_ids[model_key]
            res.save(run_dir / "eval", stem)
            metrics = res.metrics
        rows.append({"name": name, "model": model_key, "mode": mode, "samples": samples,
                     **{key: metrics[key] for key in TABLE_KEYS}})
    (run_dir / "results.json").write_text(json.dumps(rows, indent=1))
    _stage(f"done in {time.perf_counter() - t0:.0f} s; results in {run_dir / 'results.json'}")
    return rows


def compare_tables(rows: list[dict], reference: list[dict]) -> list[str]:
    """One line per value where `rows` differ from `reference` (timings excluded); [] when the same.

    The tiny pipeline is seeded throughout, so a re-run on the same kind of machine gives the
    shipped table value for value; a difference means other data (e.g. no espeak-ng: no speech
    events) or other float arithmetic (another CPU or library build)."""
    ref = {r["name"]: r for r in reference}
    names = {r["name"] for r in rows}
    diffs = [f"{name}: not in this run" for name in ref if name not in names]
    for r in rows:
        if r["name"] not in ref:
            diffs.append(f"{r['name']}: not in the reference")
            continue
        for key in (k for k in TABLE_KEYS if k not in MACHINE_KEYS):
            a, b = r[key], ref[r["name"]].get(key, math.inf)
            if not (math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))):
                diffs.append(f"{r['name']}: {key} {a:.4f} (reference {b:.4f})")
    return diffs


def format_table(rows: list[dict]) -> str:
    head = f"{'row':<30} {'acc':>6} {'late':>6} {'IoU':>6} {'segs':>5} {'s/ans':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<30} {r['accuracy']:>6.3f} {r['late_cue_accuracy']:>6.3f} "
                     f"{r['segment_iou']:>6.3f} {r['segments_per_answer']:>5.2f} {r['seconds_per_answer']:>6.2f}")
    return "\n".join(lines)
