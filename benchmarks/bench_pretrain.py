"""Two speed facts behind `echo-lite pretrain`, measured side by side (printed, not asserted).

    PYTHONPATH=$PWD python benchmarks/bench_pretrain.py [--steps 20]

1. The answer-only loss (`perception.answer_loss`: the vocabulary head applied at the
   answer positions only) against the thinker's own loss over every position: the same
   batches, each in a fresh process; seconds per training step and their ratio.
2. OpenMP's wait policy on a 2-core machine shared with another 2-thread job: each
   policy runs the same training steps in a fresh process (the policy is read when
   torch loads) while a competing process multiplies matrices; seconds per step and
   the ratio ACTIVE / PASSIVE.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEP_SCRIPT = """
import sys, time, torch
from echo_lite.config import get_preset
from echo_lite.model import build_tiny_thinker, load_tokenizer
from echo_lite.perception import Collator, answer_loss, training_batch
torch.set_num_threads(2)
p = get_preset("tiny")
tok = load_tokenizer("tiny")
model = build_tiny_thinker(tok, p.model).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
col = Collator(tok, p.model.n_mels)
batches = [col(training_batch(1000 + k, 0, p.pretrain, p.data)) for k in range(int(sys.argv[1]))]
mode = sys.argv[2]
t0 = time.perf_counter()
for b in batches:
    if mode == "answer":
        loss = answer_loss(model, b)
    else:
        loss = model(**b).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
print((time.perf_counter() - t0) / len(batches))
"""

BUSY_SCRIPT = """
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def _steps(n: int, mode: str, policy: str | None = None) -> float:
    env = dict(os.environ)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(n), mode], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    full = _steps(args.steps, "full", "PASSIVE")
    answer = _steps(args.steps, "answer", "PASSIVE")
    print(f"loss over every position: {full:.3f} s/step; answer positions only: {answer:.3f} s/step; "
          f"ratio {full / answer:.2f}x")

    busy = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT])
    try:
        time.sleep(2)
        active = _steps(args.steps, "answer", "ACTIVE")
        passive = _steps(args.steps, "answer", "PASSIVE")
    finally:
        busy.terminate()
        busy.wait()
    print(f"beside a busy 2-thread job: OMP_WAIT_POLICY=ACTIVE {active:.3f} s/step, PASSIVE {passive:.3f} s/step; "
          f"ratio {active / passive:.2f}x")


if __name__ == "__main__":
    main()
