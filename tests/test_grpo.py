"""GRPO on the tiny preset: the masking contract (inserted audio tokens are in no loss term),
group advantages, and a short real run that resumes exactly from its checkpoint."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from echo_lite.grpo import RLItem, group_advantages, grpo_loss, policy_text, run_grpo
from echo_lite.interleave import InterleavedGenerator, Query
from echo_lite.model import apply_lora, load_preset_model
from echo_lite.signals import tone_clip
from echo_lite.trace import TraceLogprobs, trace_logprobs

PITCHES = [262.0, 330.0, 392.0, 440.0, 523.0, 349.0]


def _items(n=2):
    return [RLItem(id=f"r{i}", wav=tone_clip(PITCHES[i:] + PITCHES[:i], seed=i),
                   question=f"Which tone is heard at {1.5 * i + 0.5:.1f} s?", choices=["C4", "E4", "G4"],
                   answer=["C4", "E4", "G4"][i % 3], decisive_spans=[(1.5 * i, 1.5 * i + 1.0)]) for i in range(n)]


@pytest.fixture(scope="module")
def forced_traces():
    lm = load_preset_model("tiny")
    lm.model = apply_lora(lm.model, lm.preset.sft)
    prefix = "<think>listen <seg>0.0, 1.0</seg>, then <seg>1.5, 2.5</seg>, so"
    queries = [Query(wav=tone_clip(PITCHES, seed=i), question="Which tone comes first?", choices=["C4", "E4"],
                     id=f"q{i}") for i in range(4)]
    traces = InterleavedGenerator(lm, temperature=1.0).generate(queries, seed=3, forced_prefix=prefix)
    return lm, traces


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4)
    assert adv[:4].mean().abs() < 1e-6 and adv[4:].abs().max() < 1e-6  # equal rewards: no signal
    assert adv[0] > adv[2] > adv[1]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def test_inserted_audio_tokens_contribute_nothing(forced_traces):
    lm, traces = forced_traces
    assert all(t.n_relistens >= 2 for t in traces)  # the forced two (the base may add its own)
    policy = trace_logprobs(lm.model, traces)
    inserted = policy.inserted_mask
    assert inserted.sum() > 0 and not (inserted & policy.sampled_mask).any()
    old = policy.logprobs.detach().clone()
    ref = old - 0.1
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, stats = grpo_loss(policy, old, ref, adv, clip_eps=0.2, beta=0.04)
    # the denominator counts the policy's tokens only
    assert stats["policy_tokens"] == float(policy.sampled_mask.sum())
    assert stats["policy_tokens"] == sum(t.n_generated for t in traces)
    # anything at inserted positions (old, ref, and the policy's own values there) changes nothing
    noise = torch.randn_like(old) * inserted
    perturbed = TraceLogprobs(logprobs=policy.logprobs + 5 * noise, sampled_mask=policy.sampled_mask,
                              inserted_mask=inserted, completion_mask=policy.completion_mask)
    loss2, stats2 = grpo_loss(perturbed, old + 3 * noise, ref - 7 * noise, adv, clip_eps=0.2, beta=0.04)
    assert torch.allclose(loss, loss2) and stats["kl"] == pytest.approx(stats2["kl"])
    # gradients reach only sampled positions
    lp = policy.logprobs.detach().clone().requires_grad_(True)
    grad_in = TraceLogprobs(lp, policy.sampled_mask, inserted, policy.completion_mask)
    grpo_loss(grad_in, old, ref, adv, 0.2, 0.04)[0].backward()
    assert lp.grad[inserted].abs().sum() == 0 and lp.grad[policy.sampled_mask].abs().sum() > 0
    # the released code's denominator (every completion token) differs: kept as an option
    loss_released, s_rel = grpo_loss(policy, old, ref, adv, 0.2, 0.04, mask_inserted=False)
    assert s_rel["policy_tokens"] == float(policy.completion_mask.sum()) > stats["policy_tokens"]


def test_policy_text_drops_inserted_audio(forced_traces):
    lm, traces = forced_traces
    text = policy_text(traces[0], lm.tokenizer)
    assert text.startswith("<think>listen <seg>0.0, 1.0</seg>, then <seg>1.5, 2.5</seg>, so")
    assert "<|AUDIO|>" not in text and "<|audio_bos|>" not in text


def _weights(path):
    name = "adapter_model.safetensors" if (path / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(path / name))


def test_short_run_logs_and_resumes_exactly(tmp_path):
    items = _items(2)
    kw = dict(steps=2, prompts_per_step=2, num_generations=4, save_every=1, progress=False, learning_rate=1e-3)
    lm, log = run_grpo(load_preset_model("tiny"), items, tmp_path / "a", **kw)
    assert len(log) == 2
    for key in ("reward", "reward_format", "reward_consistency", "reward_accuracy", "reward_segment", "kl",
                "clip_fraction", "segments_per_answer", "segment_seconds", "loss"):
        assert key in log[-1] and np.isfinite(log[-1][key]), key
    assert (tmp_path / "a" / "checkpoint-2" / "model.safetensors").exists()  # tiny: full fine-tuning
    # an interrupted run: one step, then the same call again continues from checkpoint-1
    run_grpo(load_preset_model("tiny"), items, tmp_path / "b", **{**kw, "steps": 1})
    assert (tmp_path / "b" / "checkpoint-1").exists()
    _, log_b = run_grpo(load_preset_model("tiny"), items, tmp_path / "b", **kw)
    assert [r["reward"] for r in log_b] == [r["reward"] for r in log]
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
