"""`echo-lite pretrain`: train the tiny thinker from scratch on the synthetic world.

The real method starts from a pretrained LALM; on CPU the course trains its own
(`Qwen2_5OmniThinkerForConditionalGeneration`, ~1.2 M parameters) so that it really
hears: event labels of single clips, clips wherever they stand (several in a prompt,
inserted inside the assistant turn after `<seg>a, b</seg>`), and one-pass questions
over long scenes. The recipe is TINY_MODEL_NOTES.md's (HF init with the audio-conv
scale fix, one AdamW at 1e-3, batch 16), with a curriculum: single clips first.

A plain torch loop, not the HF Trainer: one batch builder, one loss on the answer
tokens, and a resumable state are all it needs. Every step's data is a pure function
of (seed, step), and training has no dropout, so a resumed run equals an uninterrupted
one and re-running the command reproduces the checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from echo_lite.config import PLACEMENT_ROUND_SEEDS, PLACEMENT_STAGE, REPO_ROOT, Preset, PretrainSpec, get_preset
from echo_lite.model import TINY_BASE_DIR, build_tiny_thinker, count_parameters, load_thinker, load_tokenizer
from echo_lite.perception import PROBES, Collator, answer_loss, one_pass_vs_oracle, run_probes, training_batch

STATE_DIR = "train_state"  # inside the output directory while training; removed at the end
CURVE_FIELDS = ("step", "seconds", "loss", "lr") + tuple(f"probe_{p}" for p in PROBES)


class PretrainError(RuntimeError):
    """A pretraining run that cannot start or resume; the message says why."""


def learning_rate(step: int, spec: PretrainSpec) -> float:
    """Constant, then a linear decay to `final_lr_fraction` over the last part of the run."""
    start = int(spec.decay_start * spec.steps)
    if step < start:
        return spec.learning_rate
    frac = (step - start) / max(1, spec.steps - start)
    return spec.learning_rate * (1.0 - (1.0 - spec.final_lr_fraction) * frac)


# --------------------------------------------------------------------------------------
# Resumable state: model + optimizer in safetensors, counters in JSON, written atomically.
# --------------------------------------------------------------------------------------
def _atomic_dir_write(target: Path, write) -> None:
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def save_state(state_dir: Path, model, opt, step: int, rows: list[dict], elapsed: float, config: dict,
               window: list[float]) -> None:
    from safetensors.torch import save_file

    def write(d: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
        tensors, meta = {}, {}
        for idx, st in opt.state_dict()["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"{idx}.{key}"] = val.contiguous()
                else:
                    meta[f"{idx}.{key}"] = val
        save_file(tensors, str(d / "optimizer.safetensors"))
        groups = opt.state_dict()["param_groups"]
        (d / "state.json").write_text(json.dumps({"step": step, "rows": rows, "elapsed": elapsed, "config": config, "window": window,
                                                  "param_groups": groups, "scalars": meta}, indent=1))

    _atomic_dir_write(state_dir, write)


def load_state(state_dir: Path, model, opt, config: dict) -> tuple[int, list[dict], float, list[float]]:
    from safetensors.torch import load_file

    info = json.loads((state_dir / "state.json").read_text())
    if info["config"] != config:
        raise PretrainError(f"{state_dir}: saved by a run with other settings; delete it or use the same "
                            f"preset and seed (saved {info['config']}, now {config})")
    model.load_state_dict(load_file(str(state_dir / "model.safetensors")), strict=True)
    flat = load_file(str(state_dir / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, val in list(flat.items()) + list(info["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return int(info["step"]), list(info["rows"]), float(info["elapsed"]), list(info["window"])


# --------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------
def command_line(preset: Preset, seed: int | None, seeds: tuple[int, ...] | None = None) -> str:
    """The CLI command that makes this run (overrides of the preset are listed beside it).
    `seeds`: the placement stage's rounds (`placement_stage`) instead of one run with `seed`."""
    cmd = f"echo-lite pretrain --preset {preset.name}"
    if seeds is None or len(seeds) == 1:
        cmd += f" --seed {seed if seeds is None else seeds[0]}"
    default = get_preset(preset.name).pretrain
    init = preset.pretrain.init
    if init is not None:  # a second stage: named by --stage when it has the placement stage's settings
        stage = {k: v for k, v in PLACEMENT_STAGE.items() if k != "init"}
        placement = all(getattr(preset.pretrain, k) == v for k, v in stage.items())
        shown = seeds is None or len(seeds) == 1 or init != PLACEMENT_STAGE["init"]
        cmd += (" --stage placement" if placement else "") + (f" --init {init}" if shown else "")
        if seeds is not None and len(seeds) > 1 and tuple(seeds) != PLACEMENT_ROUND_SEEDS:
            cmd += f"  (rounds with seeds {tuple(seeds)})"
        default = dataclasses.replace(default, **(stage if placement else {}), init=init)
    changed = {k: v for k, v in dataclasses.asdict(preset.pretrain).items() if getattr(default, k) != v}
    return cmd + (f"  (with pretrain overrides {changed})" if changed else "")


def pretrain(preset: str | Preset = "tiny", seed: int | None = None, out: str | Path | None = None,
             resume: bool = True, final_eval: bool = True, stop_after: int | None = None, log=print) -> dict | None:
    """Train the tiny base and write it to `out` (default: `data/tiny_base_stage1/` from scratch,
    `data/tiny_base/`, the shipped base, for a second stage from `init`). Returns the report.

    Shorter runs (tests, notebooks) pass a preset with overrides:
    `get_preset("tiny").with_overrides(pretrain={"steps": 4})`. `stop_after` ends this call
    after that many steps with the state saved (returns None); calling again resumes.
    """
    preset = get_preset(preset)
    spec = preset.pretrain
    if spec.steps < 1:
        raise PretrainError(f"steps must be >= 1, got {spec.steps}")
    seed = spec.seed if seed is None else int(seed)
    if preset.model.source != "tiny":
        raise PretrainError(f"pretraining builds the tiny thinker; preset {preset.name!r} loads {preset.model.source!r}")
    if out is None:  # the shipped base is the second stage; a run from scratch makes its first
        out = TINY_BASE_DIR if spec.init is not None else TINY_BASE_DIR.with_name(TINY_BASE_DIR.name + "_stage1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(spec.threads)
    torch.manual_seed(seed)

    tok = load_tokenizer("tiny")
    if spec.init is None:
        model = build_tiny_thinker(tok, preset.model)
    else:
        init = Path(spec.init)
        if not init.is_absolute() and not init.exists():  # "data/tiny_base_stage1" from any directory
            init = REPO_ROOT / init
        if not (init / "model.safetensors").exists():
            raise PretrainError(f"pretrain.init {spec.init!r}: no model.safetensors there to start from")
        model = load_thinker(init)
    model = model.to(preset.device).train()
    collate = Collator(tok, model.config.audio_config.num_mel_bins)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    config = {"preset": preset.name, "seed": seed, "pretrain": json.loads(json.dumps(dataclasses.asdict(spec))),
              "model": json.loads(json.dumps(dataclasses.asdict(preset.model)))}
    state_dir = out / STATE_DIR
    step, rows, elapsed, window = 0, [], 0.0, []
    if resume and (state_dir / "state.json").exists():
        step, rows, elapsed, window = load_state(state_dir, model, opt, config)
        log(f"resumed from {state_dir} at step {step}")
    elif state_dir.exists():
        shutil.rmtree(state_dir)

    t0 = time.perf_counter() - elapsed
    cpu0 = time.process_time()
    stop_at = spec.steps if stop_after is None else min(spec.steps, step + int(stop_after))
    while step < stop_at:
        lr = learning_rate(step, spec)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = answer_loss(model, collate(training_batch(step, seed, spec, preset.data), device=preset.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        window.append(float(loss.detach()))
        step += 1
        if step % spec.log_every == 0:
            log(f"step {step}  loss {sum(window[-spec.log_every:]) / len(window[-spec.log_every:]):.4f}  "
                f"{time.perf_counter() - t0:.0f} s")
        if not math.isfinite(window[-1]):
            raise PretrainError(f"loss became {window[-1]} at step {step}; lower learning_rate")
        if step % spec.eval_every == 0 or step == spec.steps:
            probes = run_probes(model, collate, spec, preset.data, n=spec.eval_items)
            row = {"step": step, "seconds": round(time.perf_counter() - t0, 1),
                   "loss": round(sum(window) / len(window), 4), "lr": lr}
            row.update({f"probe_{k}": round(v.accuracy, 4) for k, v in probes.items()})
            rows.append(row)
            window = []
            log("  ".join(f"{k} {v}" for k, v in row.items()))
            write_curve(out, rows)
        if step < spec.steps and (step % spec.save_every == 0 or step == stop_at):
            save_state(state_dir, model, opt, step, rows, time.perf_counter() - t0, config, window)
    if step < spec.steps:
        log(f"stopped at step {step} of {spec.steps}; the state is in {state_dir} (run again to resume)")
        return None
    train_seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0  # this call only (a resumed run counts from its restart)

    save_base(model, tok, out)
    report = {
        "command": command_line(preset, seed),
        "preset": preset.name, "seed": seed, "steps": spec.steps, "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds_this_call": round(cpu_seconds, 1),
        "parameters": count_parameters(model)["total"],
        "checkpoint_mb": round((out / "model.safetensors").stat().st_size / 2**20, 2),
        "torch": torch.__version__, "threads": spec.threads, "machine": platform.machine(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # other processes share the cores
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "pretrain": config["pretrain"], "curve": rows,
    }
    if final_eval:
        t1 = time.perf_counter()
        report.update(evaluate(model, collate, preset))
        report["eval_seconds"] = round(time.perf_counter() - t1, 1)
    write_report(out, report)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return report


def placement_stage(preset: str | Preset, out: str | Path | None = None, seeds: tuple[int, ...] = PLACEMENT_ROUND_SEEDS,
                    rounds_dir: str | Path | None = None, resume: bool = True, final_eval: bool = True,
                    log=print) -> dict:
    """Run the placement stage (`preset.pretrain`, the settings of `PLACEMENT_STAGE`) once per seed,
    each round from the weights of the round before (the first from `preset.pretrain.init`), the
    rate restarted each time. Every round but the last is written to `rounds_dir/round{k}`
    (default `runs/placement_rounds`), the last to `out` (default `data/tiny_base/`). A round whose
    directory already holds its finished report (same settings, seed and start) is kept and not run
    again, and an interrupted round resumes, so a re-run picks up where it stopped. Returns the last
    round's report, with the command and every round in it."""
    preset = get_preset(preset)
    if preset.pretrain.init is None:
        raise PretrainError("the placement stage starts from a base: preset.pretrain.init is None")
    if not seeds:
        raise PretrainError("the placement stage needs at least one round (seeds is empty)")
    out = Path(out) if out is not None else TINY_BASE_DIR
    rounds_dir = Path(rounds_dir) if rounds_dir is not None else Path("runs") / "placement_rounds"
    start, rounds, report = preset.pretrain.init, [], None
    for k, seed in enumerate(seeds, 1):
        last = k == len(seeds)
        dest = out if last else rounds_dir / f"round{k}"
        p = preset.with_overrides(pretrain={"init": _shown(start)})
        report = finished_report(dest, p, seed)
        if report is not None:
            log(f"round {k} of {len(seeds)}: kept, already finished in {dest}")
        else:
            log(f"round {k} of {len(seeds)}: seed {seed}, from {start} -> {dest}")
            report = pretrain(p, seed=seed, out=dest, resume=resume, final_eval=final_eval and last, log=log)
        rounds.append({"round": k, "seed": seed, "init": _shown(start), "out": _shown(dest),
                       "train_seconds": report["train_seconds"]})
        start = dest
    report = {**report, "command": command_line(preset, None, seeds), "rounds": rounds}
    write_report(out, report)
    return report


def _shown(path: str | Path) -> str:
    """`path` as reports keep it: relative to the repository when inside it (no machine's own paths)."""
    p = Path(path)
    return str(p.resolve().relative_to(REPO_ROOT)) if p.is_absolute() and p.resolve().is_relative_to(REPO_ROOT) else str(p)


def finished_report(out: Path, preset: Preset, seed: int) -> dict | None:
    """The report in `out` when it is a finished run of these settings and seed; else None."""
    path = Path(out) / "PRETRAIN.json"
    if not path.exists() or not (Path(out) / "model.safetensors").exists() or (Path(out) / STATE_DIR).exists():
        return None
    report = json.loads(path.read_text())
    spec = json.loads(json.dumps(dataclasses.asdict(preset.pretrain)))
    last = report["rounds"][-1] if "rounds" in report else {"seed": report.get("seed"), "init": spec["init"]}
    return report if last["seed"] == seed and last["init"] == spec["init"] and report.get("pretrain") == spec else None


def evaluate(model, collate: Collator, preset: Preset, n: int | None = None) -> dict:
    """Probes (with chance beside each) and the fine-detail one-pass / segment comparison."""
    spec = preset.pretrain
    n = n or spec.probe_items
    probes = run_probes(model, collate, spec, preset.data, n=n)
    fd = one_pass_vs_oracle(model, collate, spec, preset.data, n=n)
    return {
        "probes": {k: {"accuracy": v.accuracy, "chance": v.chance, "ratio": round(v.ratio, 2),
                       "present_label_baseline": round(v.present_label, 4), "n": v.n} for k, v in probes.items()},
        "fine_detail": {k: ({"accuracy": v["accuracy"], "n": v["n"]} if isinstance(v, dict) else v)
                        for k, v in fd.items()},
    }


def evaluate_base(preset: str | Preset = "tiny", checkpoint: str | Path | None = None, n: int | None = None) -> dict:
    """`evaluate` on a saved base (default: the shipped one)."""
    from echo_lite.model import load_preset_model

    preset = get_preset(preset)
    torch.set_num_threads(preset.pretrain.threads)
    lm = load_preset_model(preset, checkpoint)
    return evaluate(lm.model, Collator(lm.tokenizer, lm.n_mels), preset, n)


def format_evaluation(result: dict) -> str:
    lines = [f"{'probe':<16}{'accuracy':>10}{'chance':>10}{'ratio':>8}{'random event':>14}"]
    for k, v in result["probes"].items():
        lines.append(f"{k:<16}{v['accuracy']:>10.3f}{v['chance']:>10.3f}{v['ratio']:>7.2f}x"
                     f"{v['present_label_baseline']:>14.3f}")
    fd = result["fine_detail"]
    lines.append(f"fine detail (which tone at t, {fd['one_pass']['n']} items, chance {fd['chance']:.3f}):")
    for k in ("one_pass", "random_segment", "oracle_segment"):
        lines.append(f"  {k:<16}{fd[k]['accuracy']:>8.3f}")
    return "\n".join(lines)


def save_base(model, tokenizer, out: Path) -> None:
    """The shipped base: safetensors weights, config, generation config, tokenizer."""
    was = model.training
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    model.train(was)


def write_curve(out: Path, rows: list[dict]) -> None:
    """`curve.csv` (rewritten atomically from all rows) and `curve.png`."""
    tmp = out / "curve.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CURVE_FIELDS})
    tmp.replace(out / "curve.csv")
    plot_curve(rows, out / "curve.png")


def plot_curve(rows: list[dict], path: Path, chance: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    a.plot(steps, [r["loss"] for r in rows], marker="o")
    a.set(xlabel="step", ylabel="answer-token loss", title="training loss")
    for p in PROBES:
        line, = b.plot(steps, [r[f"probe_{p}"] for r in rows], marker="o", label=p)
        if chance and p in chance:
            b.axhline(chance[p], color=line.get_color(), ls=":", lw=1)
    b.set(xlabel="step", ylabel="held-out accuracy", title="probes (dotted: chance)", ylim=(0, 1))
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(out: Path, report: dict) -> None:
    (out / "PRETRAIN.json").write_text(json.dumps(report, indent=1))
    chance = {k: v["chance"] for k, v in report.get("probes", {}).items()}
    if report["curve"]:
        plot_curve(report["curve"], out / "curve.png", chance)
    lines = [
        "# The tiny pretrained base (issue 4)", "",
        (f"Made by `{report['command']}` (seed {report['seed']}, {report['steps']} steps, "
         f"{report['train_seconds']:.0f} s of training on {report['threads']} CPU threads, torch {report['torch']})."
         if "rounds" not in report else
         f"Made by `{report['command']}`: {len(report['rounds'])} rounds of {report['steps']} steps (seeds "
         f"{', '.join(str(r['seed']) for r in report['rounds'])}), each from the weights of the round before "
         f"(the first from `{report['rounds'][0]['init']}`), the rate restarted each round; "
         f"{sum(r['train_seconds'] for r in report['rounds']):.0f} s of training in all (the last round on "
         f"{report['threads']} CPU thread{'s' * (report['threads'] != 1)}), "
         f"torch {report['torch']}. The curve is the last round's."),
        f"{report['parameters']:,} parameters, `model.safetensors` {report['checkpoint_mb']} MB. "
        "Training curve: `curve.csv`, `curve.png`. Everything else: `PRETRAIN.json`.", "",
    ]
    if "probes" in report:
        lo, hi = report["pretrain"]["probe_seconds"]
        lines += [f"## Probes (held-out {lo:g}-{hi:g} s scenes, one pass, open answers, greedy exact match)", "",
                  "| probe | accuracy | chance (best constant answer) | ratio | naming a random event of the clip |",
                  "|---|---|---|---|---|"]
        for k, v in report["probes"].items():
            lines.append(f"| {k} | {v['accuracy']:.3f} | {v['chance']:.3f} | {v['ratio']:.2f}x | "
                         f"{v['present_label_baseline']:.3f} |")
        fd = report["fine_detail"]
        lo, hi = report["pretrain"]["fine_detail_seconds"]
        lines += ["", f"## Fine detail: which tone at time t, held-out {lo:g}-{hi:g} s scenes", "",
                  "| condition | accuracy |", "|---|---|"]
        for k in ("one_pass", "random_segment", "oracle_segment"):
            if k in fd:
                lines.append(f"| {k.replace('_', ' ')} | {fd[k]['accuracy']:.3f} |")
        lines.append(f"| chance (best constant answer) | {fd['chance']:.3f} |")
    (out / "PRETRAIN.md").write_text("\n".join(lines) + "\n")
