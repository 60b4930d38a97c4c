"""`echo-lite <stage> ...`: argument parsing only; every stage is a function in echo_lite."""

from __future__ import annotations

import argparse
import json
import sys

from echo_lite.config import PRESETS, RUNTIME_MODES


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

    d = sub.add_parser("demo", help="the main job on a preset, ending in its results table")
    d.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", help="also write the results to this JSON file")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="parameter counts and vocabulary of a preset's model")
    i.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    i.add_argument("--checkpoint", help="a local directory (or hub id) to load instead")
    i.set_defaults(func=_cmd_info)

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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
