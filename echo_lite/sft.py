"""Stage 1: supervised fine-tuning that teaches the model to localise (ECHO_METHOD.md section 4).

TRL's `SFTTrainer` does the training loop, checkpoints and resume; TRL has no audio
support, so this module adds what it lacks: a collator that builds the prompt with the
clip's audio tokens, optionally inserts each cited clip after its `</seg>` (masked from
the loss; the paper kept `<seg>` as plain text), and returns `input_features` /
`feature_attention_mask` for every clip of every sample. The loss is on the response
only; the audio tower is frozen; LoRA (language model only) or full fine-tuning.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echo_lite.audio import AudioFeaturizer, audio_token_count, cut_span, load_audio
from echo_lite.config import AUDIO_TOKENS_PER_SECOND, IM_END, SAMPLE_RATE, SEG_CLOSE, Preset, get_preset
from echo_lite.model import apply_lora, expand_text_depth, freeze_audio_tower, load_preset_model
from echo_lite.prompts import audio_insert_text, build_prompt
from echo_lite.segments import format_segment, parse_segments, validate_segment

IGNORE_INDEX = -100


class SFTDataError(ValueError):
    """An SFT item that cannot be used; the message names the item and the field."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt and runtime-inserted audio tokens
    clips: list[np.ndarray]  # the full clip first, then each inserted clip in order


def _response_pieces(response: str) -> list[str]:
    """Split a response after every `</seg>`: where the runtime would insert a clip."""
    pieces, last = [], 0
    for tag in parse_segments(response):
        if tag.error is None:
            pieces.append(response[last:tag.end_char])
            last = tag.end_char
    pieces.append(response[last:])
    return pieces


def _declines(item_id: str, piece: int, fraction: float) -> bool:
    """Whether the `piece`-th cited span of an item is shown declined: a fixed draw per
    (item, span), the same in every epoch and every run."""
    if fraction <= 0:  # the default: no hashing per sample
        return False
    digest = hashlib.blake2b(f"{item_id}:{piece}".encode(), digest_size=8).digest()  # well mixed, unlike crc32
    return int.from_bytes(digest, "big") / 2**64 < fraction


def encode_example(tokenizer, item: dict, wav: np.ndarray, preset: Preset, insert_cited_clips: bool) -> EncodedExample:
    """Token ids and labels of one item; pieces are tokenized separately at each `</seg>` so the
    ids match what the interleaved runtime produces when it stops there and resumes."""
    for key in ("question", "choices", "response"):
        if not item.get(key):
            raise SFTDataError(f"item {item.get('id', '?')!r}: field {key!r} is missing or empty")
    prompt = build_prompt(item["question"], item["choices"], [audio_token_count(len(wav))])
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    clips = [wav]
    pieces = _response_pieces(item["response"]) if insert_cited_clips else [item["response"]]
    duration = len(wav) / SAMPLE_RATE
    for i, piece in enumerate(pieces):
        declined = (insert_cited_clips and i < len(pieces) - 1
                    and _declines(item.get("id", ""), i, preset.sft.declined_tag_fraction))
        if declined:  # the tag becomes one the runtime declines; its tokens are not learned
            tag = parse_segments(piece)[-1]
            piece = piece[:tag.start_char] + format_segment(tag.span[0], tag.span[0])
            enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            ids += enc["input_ids"]
            labels += [IGNORE_INDEX if a >= tag.start_char else t
                       for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
            continue
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids
        if i == len(pieces) - 1 or not piece.endswith(SEG_CLOSE):
            continue
        decision = validate_segment(parse_segments(piece)[-1], duration, len(clips) - 1, preset.segments)
        if not decision.accepted:  # the runtime would leave this tag as text: so does SFT
            continue
        clip = cut_span(wav, *decision.applied, min_s=preset.segments.min_clip_s)
        insert = tokenizer(audio_insert_text(audio_token_count(len(clip))), add_special_tokens=False)["input_ids"]
        ids += insert
        labels += [IGNORE_INDEX] * len(insert)
        clips.append(clip)
    end = tokenizer(IM_END, add_special_tokens=False)["input_ids"]  # learn to stop
    ids += end
    labels += end
    return EncodedExample(ids, labels, clips)


class AudioSFTCollator:
    """Batches items `{id, audio, question, choices, response}` into thinker inputs.

    `audio` is a path relative to `data_root`; paths that escape the root are refused.
    """

    def __init__(self, tokenizer, preset: Preset, data_root: str | Path, n_mels: int,
                 insert_cited_clips: bool | None = None, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.preset = preset
        self.root = Path(data_root).resolve()
        self.featurizer = AudioFeaturizer(n_mels)
        self.insert = preset.sft.insert_cited_clips if insert_cited_clips is None else insert_cited_clips
        self.max_length = max_length or preset.sft.max_length

    def load_wav(self, item: dict) -> np.ndarray:
        rel = item.get("audio")
        if not rel:
            raise SFTDataError(f"item {item.get('id', '?')!r}: no 'audio' path")
        path = (self.root / rel).resolve()
        if self.root not in path.parents:
            raise SFTDataError(f"item {item.get('id', '?')!r}: audio path {rel!r} escapes the data root {self.root}")
        return load_audio(path)

    def encode(self, item: dict) -> EncodedExample:
        ex = encode_example(self.tokenizer, item, self.load_wav(item), self.preset, self.insert)
        if len(ex.input_ids) > self.max_length:
            raise SFTDataError(f"item {item.get('id', '?')!r}: {len(ex.input_ids)} tokens exceed max_length "
                               f"{self.max_length} (truncating would cut audio placeholders)")
        return ex

    def __call__(self, items: list[dict]) -> dict:
        examples = [self.encode(it) for it in items]
        width = max(len(e.input_ids) for e in examples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):  # right padding; the thinker derives positions from the mask
            n = len(e.input_ids)
            input_ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            attention[i, :n] = 1
        feats = self.featurizer([c for e in examples for c in e.clips])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, **feats}


def _audio_sft_trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class AudioSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is the thinker's own causal-LM loss.

        TRL 1.16 computes the loss through a fused LM head that runs `model.base_model`; for the
        Qwen2.5-Omni thinker that is the whole model, so it breaks. The plain `Trainer` loss
        (the model's cross-entropy over `labels`) is the same quantity.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            sampler = _resumable_length_grouped_sampler_class()
            return sampler(self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset["length"])

    return AudioSFTTrainer


def _resumable_length_grouped_sampler_class():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class ResumableLengthGroupedSampler(LengthGroupedSampler):
        """transformers' LengthGroupedSampler, made to resume exactly. Theirs draws each epoch's order
        from the global RNG as it stands when the epoch starts; a run resumed in a later epoch has
        skipped the earlier epochs' draws, so it batched that epoch differently from an uninterrupted
        run (tests/test_sft.py caught it). This one keeps the global RNG state of the first epoch it
        runs (the same in a fresh and a resumed run: the trainer restores the RNG only after it) and
        replays the draws an uninterrupted run makes before epoch e (each epoch's order, then the next
        epoch's DataLoader seed), so its orders are transformers' own, resumed or not."""

        def __init__(self, batch_size: int, lengths: list[int]):
            super().__init__(batch_size, lengths=list(lengths), generator=torch.Generator())
            self.start_state, self.epoch = None, 0

        def set_epoch(self, epoch: int) -> None:  # the trainer calls it before each epoch
            self.epoch = epoch

        def __iter__(self):
            if self.start_state is None:
                self.start_state = torch.get_rng_state()
            self.generator.set_state(self.start_state)
            for _ in range(self.epoch):
                torch.randperm(len(self.lengths), generator=self.generator)
                torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            return super().__iter__()

    return ResumableLengthGroupedSampler


def approx_tokens(tokenizer, item: dict) -> int:
    """About how many tokens an SFT item encodes to: its text tokenized (prompt and response),
    plus its clip and each cited clip at the audio token rate. Only to group items of similar
    length (`SFTSpec.group_by_length`): the exact count needs every clip read and cut."""
    text = build_prompt(item["question"], item["choices"], [1]) + item["response"]  # one pad: the template
    seconds = float(item.get("duration") or 0.0) + sum(t.span[1] - t.span[0] for t in parse_segments(item["response"]) if t.ok)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + int(seconds * AUDIO_TOKENS_PER_SECOND)


def _trl_config(preset: Preset, out_dir: Path, **overrides):
    from trl import SFTConfig

    s = preset.sft
    lr = s.learning_rate if s.use_lora else s.full_ft_learning_rate
    kwargs = dict(
        output_dir=str(out_dir), learning_rate=lr, num_train_epochs=s.epochs, warmup_steps=s.warmup_ratio,  # a float < 1 is a ratio
        per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, lr_scheduler_type="cosine",
        bf16=s.bf16, gradient_checkpointing=s.gradient_checkpointing, seed=s.seed, data_seed=s.seed,
        logging_steps=5, save_strategy="steps", save_steps=50, save_total_limit=2, report_to="none",
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
        dataloader_num_workers=0, use_cpu=preset.device == "cpu", disable_tqdm=False,
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def run_sft(items: list[dict], data_root: str | Path, out_dir: str | Path, preset: str | Preset = "tiny",
            base: str | Path | None = None, resume: bool = True, callbacks: list | None = None,
            **trainer_overrides) -> Path:
    """Fine-tune the preset's base on `items`; returns the directory of the final model.

    LoRA runs save a PEFT adapter (standard format) in `out_dir/final`; full runs save the
    whole thinker. Checkpoints go to `out_dir/checkpoint-*`; an interrupted run given the
    same arguments resumes from the last one (optimizer, scheduler, RNG and data order).
    """
    from datasets import Dataset
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    preset = get_preset(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(preset.sft.seed)  # LoRA's initial weights come from the global RNG: a re-run must match
    lm = load_sft_base(preset, base)
    model = lm.model
    if preset.sft.freeze_audio_tower:
        freeze_audio_tower(model)
    for name, p in model.named_parameters():  # echo_lite never trains the vision tower
        if "visual" in name:
            p.requires_grad_(False)
    if preset.sft.use_lora:
        model = apply_lora(model, preset.sft)
    collator = AudioSFTCollator(lm.tokenizer, preset, data_root, lm.n_mels)
    dataset = Dataset.from_list([{k: v for k, v in it.items() if k in ("id", "audio", "question", "choices",
                                                                          "response")} for it in items])
    if preset.sft.group_by_length:  # the sampler reads the `length` column (the collator ignores it)
        dataset = dataset.add_column("length", [approx_tokens(lm.tokenizer, it) for it in items])
    args = _trl_config(preset, out_dir, **trainer_overrides)
    trainer = _audio_sft_trainer_class()(model=model, args=args, train_dataset=dataset, data_collator=collator,
                         processing_class=lm.tokenizer, callbacks=callbacks)
    last = get_last_checkpoint(str(out_dir)) if resume and out_dir.exists() else None
    trainer.train(resume_from_checkpoint=last)
    final = out_dir / "final"
    if trainer.is_world_process_zero():
        trainer.save_model(str(final))
        (final / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run's settings are in sft_log.json
        lm.tokenizer.save_pretrained(str(final))
        history = [h for h in trainer.state.log_history if "loss" in h]
        (final / "sft_log.json").write_text(json.dumps({"preset": preset.name, "use_lora": preset.sft.use_lora,
                                                         "steps": trainer.state.global_step, "log": history}, indent=1))
    return final


def load_sft_base(preset: str | Preset = "tiny", base: str | Path | None = None):
    """The model SFT starts from: the base (the preset's, or `base`), grown to
    `SFTSpec.text_layers` blocks when the preset asks (an adapter is merged into the same)."""
    preset = get_preset(preset)
    lm = load_preset_model(preset, base)
    if preset.sft.text_layers:
        expand_text_depth(lm.model, preset.sft.text_layers)
    return lm


def _merged(adapter_dir: Path, preset: str | Preset, base: str | Path | None):
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter directory)")
    lm = load_sft_base(preset, base)
    lm.model = PeftModel.from_pretrained(lm.model, str(adapter_dir)).merge_and_unload().eval()
    return lm


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, preset: str | Preset = "tiny",
                  base: str | Path | None = None) -> Path:
    """Merge a LoRA adapter into its base (the preset's, or `base`) and save a plain thinker
    (safetensors) with its tokenizer."""
    lm = _merged(Path(adapter_dir), preset, base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(str(out_dir), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(out_dir))
    return out_dir


def load_sft_model(path: str | Path, preset: str | Preset = "tiny", base: str | Path | None = None):
    """A fine-tuned thinker ready for inference: an adapter directory is merged on the fly."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        return _merged(path, preset, base)
    return load_preset_model(preset, path)


def steps_per_epoch(n_items: int, preset: Preset) -> int:
    s = preset.sft
    return math.ceil(n_items / (s.per_device_batch_size * s.gradient_accumulation_steps))


def sft_items(split_dir: str | Path) -> list[dict]:
    """The SFT items of a split written by `echo-lite synth` (items with a response)."""
    from echo_lite.data.formats import read_manifest

    items = [dict(vars(it)) for it in read_manifest(Path(split_dir) / "manifest.jsonl")]
    items = [it for it in items if it["response"]]
    if not items:
        raise SFTDataError(f"{split_dir}: no item with a response to fine-tune on")
    return items
