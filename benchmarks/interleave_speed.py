"""Time the interleaved runtime side by side (issue 5).

    PYTHONPATH=. python benchmarks/interleave_speed.py                # tiny preset, CPU
    PYTHONPATH=. python benchmarks/interleave_speed.py --preset omni-3b --checkpoint DIR   # GPU

Every answer generates exactly `max_new_tokens` text tokens (the preset's budget), all
forced (`forced_prefix`: k re-listen requests spread over the answer, filler between):
the model still runs every forward, pause and clip, but a trained model's early end
token or its own tags cannot change how much work an answer is. Clips default to the
tiny world's mean length (DataSpec.clip_seconds).
Compared, each on the same answers:
  1. cache resume vs full re-prefill (the authors' runtime) for 0, 1, 2, 4, 8 re-listens,
     per answer and per re-listen cost (the time above the same answer with none), and
     the phases of an answer with 8 (featurize, encode, prefill, decode, resume or re-prefill);
  2. 16 trajectories batched vs one by one (rows pause at different steps): 16 questions
     about 16 clips, 16 questions about 8 clips (two a clip, as the eval split asks: shared
     clip), and one question 16 times (a GRPO group: shared prompt);
  3. interleaved vs one-pass at equal generated tokens.
Each time is the best of `--repeats` runs, measured alternately. On CPU the clock is
the process's CPU time by default (one thread: the work done, not the time spent
waiting for a core on a shared machine); on a GPU it is wall time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from echo_lite.config import SAMPLE_RATE, get_preset
from echo_lite.interleave import InterleavedGenerator, Query
from echo_lite.model import load_preset_model
from echo_lite.segments import format_segment
from echo_lite.signals import tone_clip

PITCHES = [262.0, 294.0, 330.0, 349.0, 392.0, 440.0, 494.0, 523.0]


def make_queries(n: int, n_tones: int) -> list[Query]:
    """n clips of n_tones 1.5 s tones (a 1 s tone and a 0.5 s gap each)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        wav = tone_clip([float(p) for p in rng.choice(PITCHES, size=n_tones)], seed=i)
        out.append(Query(wav=wav, question=f"Which tone is heard at {i % n_tones + 0.5} s?",
                         choices=["C4", "E4", "G4", "A4"], id=f"bench{i}"))
    return out


SPAN_S = 3.0  # the paper's mean re-listened span after RL (ECHO_METHOD.md section 6)


def forced_answer(tok, k: int, budget: int, clip_s: float) -> str:
    """A whole forced answer: k valid re-listens of SPAN_S seconds spread over ~80 % of the budget."""
    text = "<think>"
    if k == 0:
        return text + " then" * budget
    tag_tokens = len(tok.encode(f" listen {format_segment(1.0, 4.0)},", add_special_tokens=False))
    gap = max(0, (int(0.8 * budget) - k * tag_tokens) // k)
    for j in range(k):
        start = round((j * 1.3) % max(clip_s - SPAN_S, 0.1), 1)
        text += " then" * gap + f" listen {format_segment(start, min(clip_s, start + SPAN_S))},"
    return text + " then" * budget  # past the budget: the whole answer is forced


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def batch_phases(traces) -> dict:
    """Phase seconds summed over the runs that made `traces` (each row of a batch carries its batch's timings)."""
    names = {p for t in traces for p in t.timings if p.endswith("_s") and p != "total_s"}
    return {p: sum(t.timings.get(p, 0.0) / t.timings["batch_size"] for t in traces) for p in sorted(names)}


def print_phases(title: str, left: tuple[str, dict], right: tuple[str, dict]) -> None:
    """A markdown table of two runs' phase seconds, side by side."""
    (a_name, a), (b_name, b) = left, right
    print()
    print(f"| phase, {title} (one run, wall clock) | {a_name} s | {b_name} s |")
    print("|---|---|---|")
    for p in sorted(set(a) | set(b)):
        print(f"| {p[:-2]} | {a.get(p, 0.0):.4f} | {b.get(p, 0.0):.4f} |")


def best_of(fns: dict, repeats: int, clock) -> dict:
    """Run each function `repeats` times, alternating between them; best time of each."""
    best = {name: float("inf") for name in fns}
    out = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            out[name] = fn()
            best[name] = min(best[name], clock() - t0)
    return {"times": best, "outputs": out}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--repeats", type=int, default=9,
                   help="best of this many alternating runs (a shared machine is noisy: one run of the same step can take 2x another)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (tiny ops run best on one)")
    world = get_preset("tiny").data.clip_seconds
    p.add_argument("--tones", type=int, default=round(sum(world) / 2 / 1.5),
                   help=f"clip length in 1.5 s tones (default: the tiny world's mean clip, {sum(world) / 2:.1f} s)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                   help="cpu (process CPU time; default on CPU) or wall (default on GPU)")
    p.add_argument("--device", default=None, help="run the model here (default: the preset's device)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generated tokens per answer (default: the preset's budget; omni-3b's 2,048 take ~1 min an answer)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    if args.max_new_tokens:
        preset = preset.with_overrides(segments={"max_new_tokens": args.max_new_tokens})
    lm = load_preset_model(preset, args.checkpoint)
    if args.device:
        lm.model.to(args.device)
    budget = preset.segments.max_new_tokens
    queries = make_queries(args.batch, args.tones)
    clip_s = len(queries[0].wav) / SAMPLE_RATE
    tok = lm.tokenizer
    clock_name = args.clock or ("wall" if lm.device.type == "cuda" else "cpu")
    clock = CLOCKS[clock_name]
    resume = InterleavedGenerator(lm, temperature=0, cache="resume", batch_size=1)
    reprefill = InterleavedGenerator(lm, temperature=0, cache="reprefill")
    resume.generate(queries[:1], forced_prefix=forced_answer(tok, 1, budget, clip_s))  # warm-up
    figures: dict = {"preset": preset.name, "device": str(lm.device), "threads": args.threads, "clock": clock_name,
                     "clip_seconds": clip_s, "generated_tokens_per_answer": budget, "relisten": {}}

    print(f"# interleave_speed: preset {preset.name}, device {lm.device}, {args.threads} thread(s), "
          f"{clip_s:.1f} s clips, {budget} generated tokens per answer, best of {args.repeats}, {clock_name} clock")
    print()
    print("| re-listens | cache resume s/answer | full re-prefill s/answer | speedup | re-listen cost: resume | "
          "re-listen cost: re-prefill | cost ratio | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for k in (0, 1, 2, 4, 8):
        fp = forced_answer(tok, k, budget, clip_s)
        r = best_of({"resume": lambda fp=fp: resume.generate(queries[:1], forced_prefix=fp)[0],
                     "reprefill": lambda fp=fp: reprefill.generate(queries[:1], forced_prefix=fp)[0]}, args.repeats, clock)
        a, b = r["outputs"]["resume"], r["outputs"]["reprefill"]
        if a.n_relistens != k:
            raise RuntimeError(f"expected {k} re-listens, the trace has {a.n_relistens}")
        same = a.completion_ids == b.completion_ids
        t_res, t_rep = r["times"]["resume"], r["times"]["reprefill"]
        figures["relisten"][k] = {"resume_s": t_res, "reprefill_s": t_rep, "speedup": t_rep / t_res, "same": same}
        base = figures["relisten"][0]  # the re-listen cost: time above the same answer without re-listens
        c_res, c_rep = t_res - base["resume_s"], t_rep - base["reprefill_s"]
        ratio = f"{c_rep / c_res:.1f}x" if k and c_res > 0 else "-"
        print(f"| {k} | {t_res:.3f} | {t_rep:.3f} | {t_rep / t_res:.2f}x | {c_res:.3f} | {c_rep:.3f} | {ratio} | {same} |")
        if k == 8:
            traces_at_8 = {"resume": a, "reprefill": b}
    # Where an answer's time goes (the last run's Trace timings, wall clock): re-prefill redoes every
    # phase but the decoding steps at each pause, so only cheaper decoding steps raise the speedup.
    phases = {name: batch_phases([t]) for name, t in traces_at_8.items()}
    figures["phases_at_8"] = phases
    print_phases("8 re-listens", ("cache resume", phases["resume"]), ("full re-prefill", phases["reprefill"]))

    print()
    fps = [forced_answer(tok, i % 5, budget, clip_s) for i in range(args.batch)]
    batched = InterleavedGenerator(lm, temperature=0, batch_size=args.batch)
    # evaluation: 16 questions about 16 clips; rollouts: a GRPO group, one question 16 times
    # (its rows share the prompt's features, encoding and prefill: InterleavedGenerator._decode)
    # the eval split asks two questions a clip: the second asker takes the clip from the first's cache
    pairs = [Query(wav=q.wav, question=f"Which tone is heard at {(i + 5 * j) % args.tones + 0.5} s?",
                   choices=q.choices, id=f"{q.id}-{j}") for i, q in enumerate(queries[: args.batch // 2]) for j in (0, 1)]
    workloads = {"questions": (queries, f"{args.batch} questions, {args.batch} clips (evaluation)"),
                 "clip_pairs": (pairs, f"{len(pairs)} questions, {len(pairs) // 2} clips: two a clip, as the eval split"),
                 "group": ([queries[0]] * args.batch, f"{args.batch} rollouts of one question (a GRPO group)")}
    figures["batched"] = {}
    print(f"| {args.batch} trajectories (0-4 re-listens each) | one by one s | batched s | speedup | same tokens |")
    print("|---|---|---|---|---|")
    for name, (qs, label) in workloads.items():
        r = best_of({"batched": lambda qs=qs: batched.generate(qs, forced_prefix=fps),
                     "one_by_one": lambda qs=qs: resume.generate(qs, forced_prefix=fps)}, max(1, args.repeats - 1),
                    clock)
        t_b, t_1 = r["times"]["batched"], r["times"]["one_by_one"]
        same = [t.completion_ids for t in r["outputs"]["batched"]] == [t.completion_ids for t in r["outputs"]["one_by_one"]]
        figures["batched"][name] = {"n": args.batch, "batched_s": t_b, "one_by_one_s": t_1, "speedup": t_1 / t_b,
                                    "same": same}
        print(f"| {label} | {t_1:.3f} | {t_b:.3f} | {t_1 / t_b:.2f}x | {same} |")
        if name == "questions":
            q_phases = {way: batch_phases(r["outputs"][way]) for way in ("one_by_one", "batched")}
    for name in workloads:
        print(f"batched_vs_one_by_one_speedup_at_{args.batch}_{name}: {figures['batched'][name]['speedup']:.2f}")
    # Where 16 questions' time goes: batching shares the decoding steps' products, but each row still
    # brings its own clip to featurize and encode, its own prompt to prefill and its own cache to attend over.
    figures["batched"]["questions"]["phases"] = q_phases
    print_phases(f"{args.batch} questions", ("one by one", q_phases["one_by_one"]), ("batched", q_phases["batched"]))

    print()
    print(f"| at {budget} generated tokens | one-pass s/answer | interleaved s/answer | interleaved / one-pass |")
    print("|---|---|---|---|")
    one_pass = InterleavedGenerator(lm, temperature=0, mode="one_pass", batch_size=1)
    figures["vs_one_pass"] = {}
    for k in (2, 8):
        fp = forced_answer(tok, k, budget, clip_s)
        r = best_of({"one_pass": lambda fp=fp: one_pass.generate(queries[:1], forced_prefix=fp)[0],
                     "interleaved": lambda fp=fp: resume.generate(queries[:1], forced_prefix=fp)[0]}, args.repeats,
                    clock)
        assert r["outputs"]["one_pass"].n_generated == r["outputs"]["interleaved"].n_generated == budget
        t_o, t_i = r["times"]["one_pass"], r["times"]["interleaved"]
        figures["vs_one_pass"][k] = {"one_pass_s": t_o, "interleaved_s": t_i, "ratio": t_i / t_o}
        print(f"| {k} re-listens | {t_o:.3f} | {t_i:.3f} | {t_i / t_o:.2f}x |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    print()
    print(f"resume_vs_reprefill_speedup_at_8: {figures['relisten'][8]['speedup']:.2f}")
    return figures


if __name__ == "__main__":
    main()
