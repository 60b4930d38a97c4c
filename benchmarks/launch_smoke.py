"""The several-GPU recipe's launch path, on the GPUs a machine has (issue 9).

    accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes N \\
        benchmarks/launch_smoke.py --preset omni-3b --full
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes N \\
        benchmarks/launch_smoke.py --preset omni-3b

The main process builds a full-size thinker of the preset with random weights (no
download) and saves it to a local directory; then every process runs
`echo_lite.sft.run_sft` from that directory for a few steps under the launcher's
distributed setup (DeepSpeed ZeRO-3 or FSDP2 from the shipped configs; the Trainer reads
them from the environment `accelerate launch` sets). The main process then loads the saved
model back with `from_pretrained` and checks what training changed: language-model weights
moved, the frozen audio tower did not. Prints one JSON line per rank (peak memory, seconds)
and writes the main process's figures to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_smoke import build, make_items, peak_gib, reset_peak  # noqa: E402

from echo_lite.config import get_preset  # noqa: E402
from echo_lite.model import load_thinker, load_tokenizer  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="omni-3b", choices=["tiny", "omni-3b", "omni-7b"])
    ap.add_argument("--full", action="store_true", help="full fine-tuning (default: the preset's LoRA)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length of the training items")
    ap.add_argument("--work", default="/tmp/echo_launch_smoke", help="shared directory of all processes")
    ap.add_argument("--tag", default="run", help="names this run's output directory inside --work")
    ap.add_argument("--out", default=None)
    ap.add_argument("--build-only", action="store_true", help="only build and save the random-weight base")
    args = ap.parse_args(argv)
    from accelerate import PartialState

    from echo_lite.sft import run_sft

    state = PartialState()  # the process group and this process's device, from the launcher's environment
    work, device = Path(args.work), str(state.device)
    tok = load_tokenizer("tiny")  # special-token ids; the full-size vocabulary is the real one
    base = work / f"base-{args.preset}"
    with state.main_process_first():  # the main process builds and saves; the others then find it
        if state.is_main_process and not (base / "config.json").exists():
            model = build(args.preset, tok, device)
            model.save_pretrained(str(base), safe_serialization=True)
            tok.save_pretrained(str(base))
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        items = make_items(work / "data", 8, args.seconds)
    if args.build_only:
        print(base, flush=True)
        return {"base": str(base)}
    preset = get_preset(args.preset).with_overrides(
        sft={"use_lora": not args.full, "per_device_batch_size": 1, "gradient_accumulation_steps": 1})
    if device == "cpu":
        preset = preset.with_overrides(sft={"bf16": False}, device="cpu")
    reset_peak(device)
    t0 = time.perf_counter()
    final = run_sft(items, work / "data", work / args.tag, preset, base=base, resume=False,
                    max_steps=args.steps, logging_steps=1, save_steps=10_000, disable_tqdm=True)
    seconds = time.perf_counter() - t0
    mine = {"rank": state.process_index, "peak_gib": round(peak_gib(device), 2), "seconds": round(seconds, 1)}
    print(json.dumps(mine), flush=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        return mine

    log = json.loads((final / "sft_log.json").read_text())
    out = {"preset": args.preset, "distributed_type": str(state.distributed_type), "num_processes": state.num_processes,
           "use_lora": not args.full, "steps": log["steps"], "losses": [round(h["loss"], 3) for h in log["log"]],
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", **mine}
    if args.full:  # the saved model loads back, and training touched what it should
        before = load_thinker(base, dtype="bfloat16" if device != "cpu" else "float32")
        after = load_thinker(final, dtype="bfloat16" if device != "cpu" else "float32")
        b, a = before.state_dict(), after.state_dict()
        moved = [k for k in b if not torch.equal(b[k], a[k])]
        out["saved_model_loads"] = True
        out["params_moved"] = len(moved)
        out["audio_tower_moved"] = sum("audio_tower" in k for k in moved)
        out["lm_moved"] = sum(k.startswith("model.") for k in moved)
        if out["audio_tower_moved"] or not out["lm_moved"]:
            raise SystemExit(f"training touched the wrong weights: {out}")
    else:
        out["adapter_saved"] = (final / "adapter_model.safetensors").exists()
    print(json.dumps(out), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    if "LOCAL_RANK" not in os.environ:
        print("run me under `accelerate launch` (see the docstring); running as one process", file=sys.stderr)
    main()
