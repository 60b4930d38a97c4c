"""SFT on the tiny preset: the collator's masks, a short real training run, exact resume,
adapters in the standard PEFT format, merging."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from echo_lite.audio import write_audio
from echo_lite.config import AUDIO_PAD, SAMPLE_RATE, get_preset
from echo_lite.model import load_tokenizer
from echo_lite.sft import (
    IGNORE_INDEX,
    AudioSFTCollator,
    SFTDataError,
    encode_example,
    merge_adapter,
    run_sft,
)

PITCHES = {"low tone": 300.0, "high tone": 1200.0}
LORA = get_preset("tiny").with_overrides(sft={"use_lora": True})  # the 3B/7B default; tiny fine-tunes fully


def _make_items(root, n=8, seed=0):
    """Real WAV files: 4 s of silence-ish noise with one tone at a random 1 s slot."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = ["low tone", "high tone"][i % 2]
        start = float(rng.integers(0, 3))
        t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
        wav = 0.01 * rng.standard_normal(len(t))
        on = (t >= start) & (t < start + 1)
        wav[on] += 0.3 * np.sin(2 * np.pi * PITCHES[label] * t[on])
        write_audio(root / "audio" / f"{i}.wav", wav.astype(np.float32))
        items.append({
            "id": f"item{i}", "audio": f"audio/{i}.wav", "question": f"What is heard at {start + 0.5:.1f} s?",
            "choices": ["low tone", "high tone"], "answer": label,
            "response": f"<think>The question asks about {start + 0.5:.1f} s, listen to "
                        f"<seg>{start:.1f}, {start + 1:.1f}</seg>, this is a {label}.</think><answer>{label}</answer>",
        })
    return items


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftdata")
    return root, _make_items(root)


def test_labels_cover_the_response_only(sft_data):
    root, items = sft_data
    tok = load_tokenizer("tiny")
    preset = get_preset("tiny")
    wav = AudioSFTCollator(tok, preset, root, 128).load_wav(items[0])
    plain = encode_example(tok, items[0], wav, preset, insert_cited_clips=False)
    inserted = encode_example(tok, items[0], wav, preset, insert_cited_clips=True)
    audio_id = tok.convert_tokens_to_ids(AUDIO_PAD)
    assert len(plain.clips) == 1 and len(inserted.clips) == 2
    assert inserted.input_ids.count(audio_id) == 100 + 25  # 4 s clip + the cited 1 s clip
    for ex in (plain, inserted):
        supervised = [i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
        assert audio_id not in supervised
        text = tok.decode(supervised)
        assert text.startswith("<think>") and text.endswith("</answer><|im_end|>")
    # the supervised text is the same with and without inserted clips
    sup = lambda ex: [i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]  # noqa: E731
    assert sup(plain) == sup(inserted)


def test_declined_tags_are_shown_without_a_clip_and_not_learned(sft_data):
    """declined_tag_fraction: the chosen cited spans become `<seg>a, a</seg>` (which the runtime
    declines), with no clip after them and no loss on them; the teacher's words around are learned."""
    from echo_lite.segments import parse_segments, validate_segment

    root, items = sft_data
    tok = load_tokenizer("tiny")
    preset = get_preset("tiny")
    wav = AudioSFTCollator(tok, preset, root, 128).load_wav(items[0])
    kept = encode_example(tok, items[0], wav, preset, insert_cited_clips=True)
    always = preset.with_overrides(sft={"declined_tag_fraction": 1.0})
    ex = encode_example(tok, items[0], wav, always, insert_cited_clips=True)
    assert len(ex.clips) == 1 and ex.input_ids.count(tok.convert_tokens_to_ids(AUDIO_PAD)) == 100  # the 4 s clip only
    text = tok.decode(ex.input_ids)
    tag = parse_segments(text)[-1]
    assert tag.span[0] == tag.span[1]
    assert not validate_segment(tag, 4.0, 0, preset.segments).accepted  # the runtime would decline it
    supervised = tok.decode([i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])
    assert "<seg>" not in supervised and supervised.startswith("<think>")
    assert supervised.endswith(", this is a low tone.</think><answer>low tone</answer><|im_end|>")
    # a fraction draws a fixed subset of (item, span): the same on every call, some of each kind
    half = preset.with_overrides(sft={"declined_tag_fraction": 0.5})
    draws = [len(encode_example(tok, it, wav, half, insert_cited_clips=True).clips) for it in items]
    assert draws == [len(encode_example(tok, it, wav, half, insert_cited_clips=True).clips) for it in items]
    assert set(draws) == {1, 2} and len(kept.clips) == 2


def test_collator_batches_every_clip_and_refuses_bad_items(sft_data):
    root, items = sft_data
    tok = load_tokenizer("tiny")
    col = AudioSFTCollator(tok, get_preset("tiny"), root, 128, insert_cited_clips=True)
    batch = col(items[:3])
    assert batch["input_features"].shape[0] == 6  # 3 full clips + 3 inserted clips
    n_audio = (batch["input_ids"] == tok.convert_tokens_to_ids(AUDIO_PAD)).sum()
    assert n_audio == 3 * 125
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with pytest.raises(SFTDataError, match="escapes the data root"):
        col([{**items[0], "audio": "../../etc/passwd"}])
    with pytest.raises(SFTDataError, match="item 'item0': field 'response'"):
        col([{**items[0], "response": ""}])


def _weights(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_lora_sft_learns_resumes_exactly_and_merges(sft_data, tmp_path):
    root, items = sft_data
    common = dict(max_steps=6, save_steps=3, logging_steps=1, per_device_train_batch_size=4, learning_rate=3e-3,
                  warmup_steps=0, disable_tqdm=True)
    full = run_sft(items, root, tmp_path / "a", LORA, **common)
    assert (full / "adapter_config.json").exists() and (full / "adapter_model.safetensors").exists()
    log = __import__("json").loads((full / "sft_log.json").read_text())["log"]
    assert log[-1]["loss"] < log[0]["loss"]

    # interrupted after step 3 (a callback stops the run right after the checkpoint), then resumed
    from transformers import TrainerCallback

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    run_sft(items, root, tmp_path / "b", LORA, callbacks=[StopAt3()], **common)
    assert (tmp_path / "b" / "checkpoint-3").exists()
    resumed = run_sft(items, root, tmp_path / "b", LORA, **common)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k

    merged = merge_adapter(full, tmp_path / "merged", LORA)
    assert (merged / "model.safetensors").exists()
    from echo_lite.sft import load_sft_model

    m1 = load_sft_model(full, LORA).model
    m2 = load_sft_model(merged, LORA).model
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2 and torch.allclose(p1, p2, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        merge_adapter(tmp_path, tmp_path / "x")


def test_full_fine_tuning_trains_the_language_model_only(sft_data, tmp_path):
    """The tiny preset's default: every language-model weight, the audio tower frozen."""
    from echo_lite.model import load_preset_model

    root, items = sft_data
    before = dict(load_preset_model("tiny").model.named_parameters())
    final = run_sft(items, root, tmp_path / "full", "tiny", max_steps=2, per_device_train_batch_size=4,
                    disable_tqdm=True, warmup_steps=0)
    after = load_file(str(final / "model.safetensors"))
    changed = {k for k, v in after.items() if k in before and not torch.equal(v, before[k].detach())}
    assert any("layers" in k for k in changed)
    assert not any("audio_tower" in k or "visual" in k for k in changed)
    # The base's blocks were grown (SFTSpec.text_layers) and the new ones, zero at the start, learned.
    n = get_preset("tiny").sft.text_layers
    assert json.loads((final / "config.json").read_text())["text_config"]["num_hidden_layers"] == n
    assert after[f"model.layers.{n - 1}.mlp.down_proj.weight"].abs().max() > 0


def _record_batches(monkeypatch) -> list[tuple[str, ...]]:
    """The item ids of every batch the SFT collator is given, in order (the real collator still runs)."""
    seen = []
    real_call = AudioSFTCollator.__call__
    monkeypatch.setattr(AudioSFTCollator, "__call__", lambda self, batch: seen.append(tuple(b["id"] for b in batch))
                        or real_call(self, batch))
    return seen


def test_group_by_length_batches_items_of_similar_length(tmp_path, monkeypatch):
    """`SFTSpec.group_by_length`: `approx_tokens` tracks the real encoded length, and the sampler
    puts the longest items together (its first batch) instead of mixing long and short ones."""
    from echo_lite.sft import approx_tokens

    rng = np.random.default_rng(3)
    items = []
    for i, seconds in enumerate([2, 11, 3, 9, 4, 12, 2.5, 10]):  # long and short interleaved
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        write_audio(tmp_path / "audio" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * 400 * t)
                                                      + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
        items.append({"id": f"len{i}", "audio": f"audio/{i}.wav", "duration": seconds, "question": "What is heard?",
                      "choices": ["a tone", "a knock"], "answer": "a tone",
                      "response": f"<think>I listen to <seg>0.5, {seconds / 2:.1f}</seg>, a tone.</think>"
                                  "<answer>a tone</answer>"})
    # no declined tags here: a declined tag has no clip after it, which the estimate does not know
    preset = get_preset("tiny").with_overrides(sft={"group_by_length": True, "declined_tag_fraction": 0.0})
    collator = AudioSFTCollator(load_tokenizer("tiny"), preset, tmp_path, 128)
    for it in items:  # within 5 % of the exact count, which needs the audio read and cut
        exact = len(collator.encode(it).input_ids)
        assert abs(approx_tokens(collator.tokenizer, it) - exact) <= 0.05 * exact, (it["id"], exact)

    seen = _record_batches(monkeypatch)
    run_sft(items, tmp_path, tmp_path / "grouped", preset, max_steps=2, per_device_train_batch_size=4,
            disable_tqdm=True, warmup_steps=0)
    longest = {it["id"] for it in sorted(items, key=lambda it: approx_tokens(collator.tokenizer, it))[-4:]}
    assert set(seen[0]) == longest
    assert set(seen[1]) == {it["id"] for it in items} - longest


def test_grouped_batches_are_transformers_own_and_resume_in_a_later_epoch(sft_data, tmp_path, monkeypatch):
    """`ResumableLengthGroupedSampler`: the batches of transformers' LengthGroupedSampler in an
    uninterrupted run, and the same batches and weights when the run stops in its second epoch and
    resumes (transformers' own sampler batched that epoch differently after a resume)."""
    from transformers import Trainer, TrainerCallback

    import echo_lite.sft as sft_module

    root, items = sft_data
    preset = get_preset("tiny").with_overrides(sft={"group_by_length": True})
    common = dict(max_steps=6, save_steps=3, per_device_train_batch_size=4, warmup_steps=0, disable_tqdm=True)
    seen = _record_batches(monkeypatch)

    def batches(out, **kw):
        seen.clear()
        final = run_sft(items, root, tmp_path / out, preset, **common, **kw)
        return list(seen), final

    ours, ours_final = batches("ours")

    class StopAt3(TrainerCallback):  # step 3 of 6: the middle of the second epoch (2 batches an epoch)
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    first, _ = batches("resumed", callbacks=[StopAt3()])
    rest, resumed_final = batches("resumed")
    # the trainer fetches the next batch before it stops, so `first` may hold batch 4 as well
    assert len(ours) == 6 and first[:3] == ours[:3] and rest == ours[3:], (first, rest, ours)
    a, b = load_file(ours_final / "model.safetensors"), load_file(resumed_final / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    own = sft_module._audio_sft_trainer_class

    def with_transformers_sampler():
        class Theirs(own()):
            def _get_train_sampler(self, train_dataset=None):
                return Trainer._get_train_sampler(self, train_dataset)
        return Theirs

    monkeypatch.setattr(sft_module, "_audio_sft_trainer_class", with_transformers_sampler)
    theirs, _ = batches("theirs")
    assert theirs == ours
