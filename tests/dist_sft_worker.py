"""Run by tests/test_distributed.py under `accelerate launch` (2 CPU processes, gloo): each rank
fine-tunes the tiny preset on the same items and writes its trained weights for the test to compare."""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from echo_lite.sft import run_sft

work = Path(sys.argv[1])
items = json.loads((work / "items.json").read_text())
weights = {}


class CaptureWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kw):
        weights.update({n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad})
        weights["world_size"] = torch.tensor([args.world_size])


run_sft(items, work / "data", work / "run", "tiny", callbacks=[CaptureWeights()], max_steps=3,
        per_device_train_batch_size=2, logging_steps=1, save_steps=100, disable_tqdm=True, learning_rate=3e-3,
        warmup_steps=0)
rank = int(os.environ.get("RANK", "0"))  # set by the launcher for every process
save_file(weights, str(work / f"rank{rank}.safetensors"))
