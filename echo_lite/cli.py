"""`echo-lite <stage> ...`: argument parsing only; every stage is a function in echo_lite."""

from __future__ import annotations

import argparse
import json
import sys

from echo_lite.config import CHAIN_STYLES, PLACEMENT_ROUND_SEEDS, PLACEMENT_STAGE, PRESETS, RUNTIME_MODES


def _given(**flags) -> dict:
    """The flags the user gave (argparse leaves the others None): only these override a preset."""
    return {k: v for k, v in flags.items() if v is not None}


def _cmd_demo(args) -> int:
    from echo_lite.config import get_preset
    from echo_lite.pipeline import SHIPPED_RESULTS, compare_tables, format_table, run_demo_pipeline

    sizes = _given(n_items=args.n_items, sft_epochs=args.sft_epochs, grpo_steps=args.grpo_steps,
                   eval_items=args.eval_items)
    second = _given(questions=args.self_improve_questions, steps=args.self_improve_steps)
    preset = get_preset(args.preset).with_overrides(demo={**sizes, "seed": args.seed}, self_improve=second)
    rows = run_demo_pipeline(preset, args.run_dir)
    print()
    print(format_table(rows))
    if args.preset == "tiny" and not sizes and not second and args.seed == get_preset("tiny").demo.seed and SHIPPED_RESULTS.exists():
        diffs = compare_tables(rows, json.loads(SHIPPED_RESULTS.read_text()))
        print()
        if diffs:
            print(f"{len(diffs)} value(s) differ from the shipped run ({SHIPPED_RESULTS.name}); "
                  "without espeak-ng the data has no speech events, and another CPU can round differently:")
            print("\n".join(f"  {d}" for d in diffs))
        else:
            print(f"Every value but the timings equals the shipped run's ({SHIPPED_RESULTS.name}): the pipeline reproduced.")
    return 0


def _cmd_self_improve(args) -> int:
    from pathlib import Path

    from echo_lite.config import get_preset
    from echo_lite.self_improve import run_self_improve
    from echo_lite.sft import sft_items

    second = _given(questions=args.questions, steps=args.steps)
    preset = get_preset(args.preset).with_overrides(self_improve=second)
    split = Path(args.data) / "sft"
    final = run_self_improve(args.init, sft_items(split), split, args.out, preset, progress=True)
    print(f"second-round SFT model: {final}")
    return 0


def _cmd_info(args) -> int:
    from echo_lite.model import count_parameters, load_preset_model

    lm = load_preset_model(args.preset, args.checkpoint)
    print(json.dumps({"preset": args.preset, "parameters": count_parameters(lm.model),
                      "vocab": len(lm.tokenizer)}, indent=2))
    return 0


def _cmd_build_tokenizer(args) -> int:
    from echo_lite.model import TINY_TOKENIZER_DIR
    from echo_lite.tokenizer import build_tiny_tokenizer, save_tokenizer

    out = save_tokenizer(build_tiny_tokenizer(), args.out or TINY_TOKENIZER_DIR)
    print(f"wrote the tiny tokenizer to {out}")
    return 0


def _cmd_synth(args) -> int:
    from echo_lite.data.synth import run

    stats = run(args.out, args.preset, n=args.n, seed=args.seed, teacher=args.teacher, llm_url=args.llm_url,
                llm_model=args.llm_model, llm_key_env=args.llm_key_env, judge=args.judge, workers=args.workers,
                audioset_tsv=args.audioset_tsv, label_map=args.label_map, musicbench_json=args.musicbench_json,
                audio_root=args.audio_root, chain=args.chain)
    print(json.dumps({k: stats[k] for k in ("items", "qtypes_drafted", "drop_reasons", "clip_seconds_histogram")},
                     indent=2))
    return 0 if all(stats["items"][s] > 0 for s in ("sft", "rl", "eval")) else 1


def _passive_omp_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with another job,
    spinning made training steps 1.55x slower (benchmarks/bench_pretrain.py) and single-clip steps
    ~12x slower in one pretraining run. Read when torch loads, so set first."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cmd_pretrain(args) -> int:
    _passive_omp_wait()
    from echo_lite.config import get_preset
    from echo_lite.pretrain import placement_stage, pretrain

    preset = get_preset(args.preset)
    if args.stage == "placement":
        preset = preset.with_overrides(pretrain={**PLACEMENT_STAGE, **({"init": args.init} if args.init else {})})
    elif args.init:
        preset = preset.with_overrides(pretrain={"init": args.init})
    if args.steps is not None:
        preset = preset.with_overrides(pretrain={"steps": args.steps})
    if args.stage == "placement":  # its rounds (config.PLACEMENT_ROUND_SEEDS), or one round with --seed
        seeds = PLACEMENT_ROUND_SEEDS if args.seed is None else (args.seed,)
        report = placement_stage(preset, out=args.out, seeds=seeds, resume=not args.no_resume)
    else:
        report = pretrain(preset, seed=args.seed, out=args.out, resume=not args.no_resume)
    print(json.dumps({k: report.get(k) for k in ("train_seconds", "eval_seconds", "checkpoint_mb", "probes",
                                                  "fine_detail")}, indent=2))
    return 0


def _cmd_probe(args) -> int:
    _passive_omp_wait()
    from echo_lite.pretrain import evaluate_base, format_evaluation

    result = evaluate_base(args.preset, checkpoint=args.checkpoint, n=args.n)
    print(format_evaluation(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def sft_preset(args):
    """The preset `sft` trains with: flags override it only when given, so that
    `echo-lite sft --preset tiny` trains as the demo does."""
    from echo_lite.config import get_preset

    sft = _given(use_lora=args.lora, insert_cited_clips=args.insert_clips, group_by_length=args.group_by_length)
    return get_preset(args.preset).with_overrides(sft=sft)


def _cmd_sft(args) -> int:
    from echo_lite.sft import run_sft, sft_items

    preset = sft_preset(args)
    overrides = _given(max_steps=args.max_steps, num_train_epochs=args.epochs)
    split = f"{args.data}/sft"
    final = run_sft(sft_items(split), split, args.out, preset, base=args.base, **overrides)
    print(f"wrote the fine-tuned model to {final}")
    return 0


def _cmd_merge(args) -> int:
    from echo_lite.sft import merge_adapter

    print(f"wrote the merged model to {merge_adapter(args.adapter, args.out, args.preset, args.base)}")
    return 0


def _load(preset, checkpoint):
    """The model to start from: a checkpoint (adapter or merged directory) or the preset's base."""
    from echo_lite.model import load_preset_model
    from echo_lite.sft import load_sft_model

    return load_sft_model(checkpoint, preset) if checkpoint else load_preset_model(preset)


def _cmd_grpo(args) -> int:
    from echo_lite.config import get_preset
    from echo_lite.grpo import rl_items, run_grpo

    preset = get_preset(args.preset)
    if args.no_segment_reward:
        preset = preset.with_overrides(rewards={"segment_bonus": 0.0})
    lm = _load(preset, args.init)
    lm.preset = preset
    overrides = {"steps": args.steps} if args.steps else {}
    _, log = run_grpo(lm, rl_items(f"{args.data}/rl"), args.out, preset, **overrides)
    print(json.dumps(log[-1], indent=1))
    return 0


def _cmd_eval(args) -> int:
    from pathlib import Path

    from echo_lite.evaluate import evaluate_benchmark, evaluate_split

    lm = _load(args.preset, args.checkpoint)
    if args.bench == "synthetic":
        split = Path(args.data) if Path(args.data).name == "eval" else Path(args.data) / "eval"
        temperature = args.temperature
        if temperature is None:  # greedy, unless answers are sampled for a consensus
            temperature = lm.preset.sampling.eval_temperature if args.samples > 1 else 0.0
        res = evaluate_split(lm, split, mode=args.mode, limit=args.limit, samples=args.samples, temperature=temperature)
        res.save(args.out, f"synthetic_{args.mode}" + (f"_consensus{args.samples}" if args.samples > 1 else ""))
        metrics = res.metrics
    else:
        if args.samples != 1:
            from echo_lite.interleave import RuntimeInputError

            raise RuntimeInputError(f"--samples {args.samples}: consensus answers are for the synthetic benchmark only")
        suffix = ".jsonl" if args.bench == "mmar" else ".json"
        pred = Path(args.out) / f"{args.bench}_{args.mode}_predictions{suffix}"
        metrics = evaluate_benchmark(lm, args.bench, args.data, pred, args.mode, limit=args.limit,
                                     temperature=args.temperature or 0.0)
    print(json.dumps(metrics, indent=1))
def _cmd_listen(args) -> int:
    from echo_lite.interleave import answer_audio_file
    from echo_lite.trace import format_trace

    trace = answer_audio_file(args.audio, args.question, args.choices, preset=args.preset,
                              checkpoint=args.checkpoint, mode=args.mode, temperature=args.temperature,
                              seed=args.seed, forced_prefix=args.forced_prefix)
    print(format_trace(trace))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(trace.to_dict(), f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="echo-lite", description="Audio-interleaved reasoning, reproduced small.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job: synth -> SFT -> GRPO -> eval, ending in the ablation table")
    d.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--run-dir", default="runs/demo-tiny", help="where every stage writes (a re-run resumes)")
    d.add_argument("--n-items", type=int, help="override the preset's demo sizes (for a quick check)")
    d.add_argument("--sft-epochs", type=float)
    d.add_argument("--grpo-steps", type=int)
    d.add_argument("--eval-items", type=int)
    d.add_argument("--self-improve-questions", type=int,
                   help="questions of SFT's second round on its own consensus answers (0: no second round)")
    d.add_argument("--self-improve-steps", type=int)
    d.set_defaults(func=_cmd_demo)

    si = sub.add_parser("self-improve", help="SFT's second round: fine-tune the SFT model on its own consensus "
                        "answers to DIR/sft questions (no label read)")
    si.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    si.add_argument("--data", required=True, help="the synth output directory (reads DATA/sft)")
    si.add_argument("--init", required=True, help="the SFT model (adapter or full directory)")
    si.add_argument("--out", required=True, help="run directory (targets, checkpoints; a re-run resumes)")
    si.add_argument("--questions", type=int, help="default: the preset's")
    si.add_argument("--steps", type=int, help="default: the preset's")
    si.set_defaults(func=_cmd_self_improve)

    i = sub.add_parser("info", help="parameter counts and vocabulary of a preset's model")
    i.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    i.add_argument("--checkpoint", help="a local directory (or hub id) to load instead")
    i.set_defaults(func=_cmd_info)

    s = sub.add_parser("synth", help="the synthetic audio world -> QA-CoT items -> DIR/sft, DIR/rl, DIR/eval")
    s.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    s.add_argument("--out", required=True, help="output directory (a re-run resumes it)")
    s.add_argument("--n", type=int, default=1000, help="items to draft before filtering")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--teacher", default="rule", choices=["rule", "llm"])
    s.add_argument("--chain", choices=CHAIN_STYLES, help="the rule teacher's chains for the types that name "
                   "their sounds: 'named' cites them directly, 'walk' goes through the clip's sounds from the start "
                   "(default: the preset's)")
    s.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--llm-model", help="model name sent to the endpoint, e.g. deepseek-reasoner")
    s.add_argument("--llm-key-env", help="environment variable holding the API key (never on the command line)")
    s.add_argument("--judge", action="store_true", help="also re-judge every item with the LLM (QA / CoT valid)")
    s.add_argument("--workers", type=int, default=4, help="concurrent LLM requests")
    s.add_argument("--audioset-tsv", help="real clips instead of the synthetic world: AudioSet-Strong TSV")
    s.add_argument("--label-map", help="AudioSet label map (mid_to_display_name.tsv)")
    s.add_argument("--musicbench-json", help="real clips: MusicBench JSON (lines or array)")
    s.add_argument("--audio-root", help="directory holding the real clips (<segment_id>.wav|flac / MusicBench location)")
    s.set_defaults(func=_cmd_synth)

    pt = sub.add_parser("pretrain", help="train the tiny thinker on the synthetic world: from scratch, then a placement stage (data/tiny_base)")
    pt.add_argument("--preset", default="tiny", choices=["tiny"])
    pt.add_argument("--seed", type=int, default=None, help="default: the preset's")
    pt.add_argument("--out", default=None, help="output directory (default data/tiny_base_stage1 for --stage base, data/tiny_base for --stage placement); a re-run resumes it")
    pt.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    pt.add_argument("--no-resume", action="store_true", help="start over even if a saved training state exists")
    pt.add_argument("--stage", choices=["base", "placement"], default="base",
                    help="base: from scratch; placement: the shipped base's second stage (config.PLACEMENT_STAGE), "
                         "from data/tiny_base_stage1 unless --init says otherwise, in rounds "
                         "(config.PLACEMENT_ROUND_SEEDS; earlier rounds under runs/placement_rounds), "
                         "or one round with --seed")
    pt.add_argument("--init", default=None, help="start from this base directory's weights instead of a fresh model")
    pt.set_defaults(func=_cmd_pretrain)

    pr = sub.add_parser("probe", help="held-out perception probes and one-pass vs oracle-segment accuracy")
    pr.add_argument("--preset", default="tiny", choices=["tiny"])
    pr.add_argument("--checkpoint", default=None, help="a model directory (default: the shipped tiny base)")
    pr.add_argument("--n", type=int, default=None, help="items per probe (default: the preset's)")
    pr.add_argument("--json", help="also write the results to this JSON file")
    pr.set_defaults(func=_cmd_probe)

    f = sub.add_parser("sft", help="stage 1: fine-tune on DIR/sft (LoRA or full, as the preset says) so the model cites spans")
    f.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    f.add_argument("--data", required=True, help="the synth output directory (reads DATA/sft)")
    f.add_argument("--out", required=True, help="run directory (checkpoints; a re-run resumes)")
    f.add_argument("--base", help="start from this checkpoint instead of the preset's base")
    kind = f.add_mutually_exclusive_group()
    kind.add_argument("--lora", dest="lora", action="store_const", const=True, default=None,
                      help="LoRA on the language model (default: the preset's choice)")
    kind.add_argument("--full", dest="lora", action="store_const", const=False, help="full fine-tuning")
    f.add_argument("--insert-clips", action=argparse.BooleanOptionalAction, default=None,
                   help="insert each cited clip after its </seg>, masked from the loss (default: the preset's)")
    f.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None,
                   help="batches of items of about the same length (default: the preset's)")
    f.add_argument("--max-steps", type=int)
    f.add_argument("--epochs", type=float)
    f.set_defaults(func=_cmd_sft)

    m = sub.add_parser("merge", help="merge a LoRA adapter into its base (safetensors)")
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    m.add_argument("--base", help="the base the adapter was trained on (default: the preset's)")
    m.set_defaults(func=_cmd_merge)

    g = sub.add_parser("grpo", help="stage 2: GRPO with segment rewards over interleaved rollouts on DIR/rl")
    g.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    g.add_argument("--data", required=True, help="the synth output directory (reads DATA/rl)")
    g.add_argument("--init", help="the SFT model (adapter or merged directory); default: the preset's base")
    g.add_argument("--out", required=True, help="run directory (checkpoints; a re-run resumes)")
    g.add_argument("--steps", type=int)
    g.add_argument("--no-segment-reward", action="store_true", help="ablation: no segment bonus")
    g.set_defaults(func=_cmd_grpo)

    e = sub.add_parser("eval", help="evaluate a model: the synthetic benchmark, MMAU or MMAR")
    e.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    e.add_argument("--checkpoint", help="model directory (adapter or merged); default: the preset's base")
    e.add_argument("--bench", default="synthetic", choices=["synthetic", "mmau", "mmar"])
    e.add_argument("--data", required=True, help="synth dir (or its eval split), or the local MMAU/MMAR copy")
    e.add_argument("--mode", default="interleaved",
                   choices=["one_pass", "tags_only", "interleaved", "random_segment", "oracle_segment"])
    e.add_argument("--out", required=True)
    e.add_argument("--limit", type=int)
    e.add_argument("--samples", type=int, default=1,
                   help="answer each question with the consensus of this many sampled answers (synthetic only)")
    e.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default: greedy, or the preset's evaluation temperature with --samples)")
    e.set_defaults(func=_cmd_eval)
    li = sub.add_parser("listen", help="answer a question about an audio file with the interleaved runtime")
    li.add_argument("--audio", required=True, help="wav/flac/ogg/mp3 file")
    li.add_argument("--question", required=True)
    li.add_argument("--choices", nargs="+", default=None)
    li.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    li.add_argument("--checkpoint", help="a local directory (or hub id) to load instead")
    li.add_argument("--mode", default="interleaved", choices=RUNTIME_MODES)
    li.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the preset's)")
    li.add_argument("--seed", type=int, default=0)
    li.add_argument("--forced-prefix", default=None, help="text the model is made to write first (teaching aid)")
    li.add_argument("--json", help="also write the Trace to this JSON file")
    li.set_defaults(func=_cmd_listen)

    t = sub.add_parser("build-tokenizer", help="rebuild the tiny tokenizer (data/tiny_tokenizer)")
    t.add_argument("--out", default=None)
    t.set_defaults(func=_cmd_build_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as err:
        if not type(err).__module__.startswith("echo_lite"):
            raise  # not one of ours: a bug, keep the traceback
        print(f"echo-lite {args.command}: error: {err}", file=sys.stderr)  # bad input: one clear line
        return 2


if __name__ == "__main__":
    sys.exit(main())
