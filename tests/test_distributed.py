"""The distributed path on CPU: SFT on tiny under `accelerate launch` with 2 processes (gloo),
and the shipped accelerate configs parse as accelerate configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sft import _make_items

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "accelerate"


def test_two_cpu_processes_train_in_lockstep(tmp_path):
    items = _make_items(tmp_path / "data", n=8)
    (tmp_path / "items.json").write_text(json.dumps(items))
    # torchrun is the launcher `accelerate launch` uses for several processes; accelerate (inside the
    # Trainer) picks up its environment and runs DDP over gloo on CPU.
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", "29513",
                          str(REPO / "tests" / "dist_sft_worker.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert int(r0.pop("world_size")) == 2 and int(r1.pop("world_size")) == 2
    assert r0.keys() == r1.keys() and any("lora_" in k for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # training moved the adapters (lora_B starts at zero)
    assert any(r0[k].abs().sum() > 0 for k in r0 if "lora_B" in k)


@pytest.mark.parametrize("name", ["single_gpu", "ddp", "zero3", "fsdp"])
def test_accelerate_configs_are_valid(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # accelerate's own loader: unknown keys raise
    assert cfg.num_processes >= 1
    if name == "zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.mixed_precision == "bf16"
    if name == "fsdp":
        from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni as omni

        for cls in cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
            assert hasattr(omni, cls), cls  # the layer classes FSDP wraps exist in this transformers
