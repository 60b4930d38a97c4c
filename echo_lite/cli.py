"""`echo-lite <stage> ...`: argument parsing only; every stage is a function in echo_lite."""

from __future__ import annotations

import argparse
import json
import sys

from echo_lite.config import PRESETS


def _cmd_demo(args) -> int:
    from echo_lite.demo import print_table, run_demo

    result = run_demo(args.preset, seed=args.seed)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["logits_finite"] and result["audio_placeholders"] == (
        result["audio_tokens_full"] + result["audio_tokens_reinserted"]) else 1


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
                llm_model=args.llm_model, llm_key_env=args.llm_key_env, judge=args.judge, workers=args.workers)
    print(json.dumps({k: stats[k] for k in ("items", "qtypes_drafted", "drop_reasons", "clip_seconds_histogram")},
                     indent=2))
    return 0 if all(stats["items"][s] > 0 for s in ("sft", "rl", "eval")) else 1


def _cmd_pretrain(args) -> int:
    from echo_lite.config import get_preset
    from echo_lite.pretrain import pretrain

    preset = get_preset(args.preset)
    if args.steps is not None:
        preset = preset.with_overrides(pretrain={"steps": args.steps})
    report = pretrain(preset, seed=args.seed, out=args.out, resume=not args.no_resume)
    print(json.dumps({k: report.get(k) for k in ("train_seconds", "eval_seconds", "checkpoint_mb", "probes",
                                                  "fine_detail")}, indent=2))
    return 0


def _cmd_probe(args) -> int:
    from echo_lite.pretrain import evaluate_base, format_evaluation

    result = evaluate_base(args.preset, checkpoint=args.checkpoint, n=args.n)
    print(format_evaluation(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="echo-lite", description="Audio-interleaved reasoning, reproduced small.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job on a preset, ending in its results table")
    d.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", help="also write the results to this JSON file")
    d.set_defaults(func=_cmd_demo)

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
    s.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--llm-model", help="model name sent to the endpoint, e.g. deepseek-reasoner")
    s.add_argument("--llm-key-env", help="environment variable holding the API key (never on the command line)")
    s.add_argument("--judge", action="store_true", help="also re-judge every item with the LLM (QA / CoT valid)")
    s.add_argument("--workers", type=int, default=4, help="concurrent LLM requests")
    s.set_defaults(func=_cmd_synth)

    pt = sub.add_parser("pretrain", help="train the tiny thinker from scratch on the synthetic world (data/tiny_base)")
    pt.add_argument("--preset", default="tiny", choices=["tiny"])
    pt.add_argument("--seed", type=int, default=None, help="default: the preset's")
    pt.add_argument("--out", default=None, help="output directory (default data/tiny_base); a re-run resumes it")
    pt.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    pt.add_argument("--no-resume", action="store_true", help="start over even if a saved training state exists")
    pt.set_defaults(func=_cmd_pretrain)

    pr = sub.add_parser("probe", help="held-out perception probes and one-pass vs oracle-segment accuracy")
    pr.add_argument("--preset", default="tiny", choices=["tiny"])
    pr.add_argument("--checkpoint", default=None, help="a model directory (default: the shipped tiny base)")
    pr.add_argument("--n", type=int, default=None, help="items per probe (default: the preset's)")
    pr.add_argument("--json", help="also write the results to this JSON file")
    pr.set_defaults(func=_cmd_probe)

    t = sub.add_parser("build-tokenizer", help="rebuild the tiny tokenizer (data/tiny_tokenizer)")
    t.add_argument("--out", default=None)
    t.set_defaults(func=_cmd_build_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
