"""Can a tiny thinker trained from scratch learn to write where a sound is? (issue 6, docs/localisation.md)

    PYTHONPATH=. python benchmarks/locate_learnability.py --task one_tone --steps 2000
    PYTHONPATH=. python benchmarks/locate_learnability.py --task named_tone --steps 1200 [--text-layers 4]
    PYTHONPATH=. python benchmarks/locate_learnability.py --task named_tone --steps 1200 --question-first

The shipped recipe's localisation is weak (named IoU 0.26 after SFT). This isolates the step from
audio to `<seg>a, b</seg>`, with nothing else to learn, so that the part that fails can be named.
A fresh tiny thinker (the preset's architecture and initialisation, the pretraining recipe's
optimiser and batch) is trained on one task and scored every `--eval-every` steps by the mean IoU
of its greedy span on 60 held-out items (printed as JSON lines, after the IoU of the best constant
span, which a model that ignores the audio could reach):
  one_tone:   one tone (0.5-2 s, one of 8 pitches) in a 5-10 s clip of faint noise;
              "When do you hear the tone?"
  one_sound:  one sound of the synthetic world (any kind) alone in a 5-10 s scene; "When do you hear
              the sound?" (knock runs and melodies have silences inside them);
  named_tone: 2-4 tones (`--tones`) of distinct named pitches in an 8-18 s clip; "When do you hear the E4 tone?"
  mixed:      named_tone items, with one_tone items and "Which tone is this?" (the pitch's name) first
              (the first 300 steps) and in 30 % of the later steps: the parts taught before the whole.
`--question-first` writes the question before the clip; `--text-layers` changes the depth.
Every item is a pure function of the seeds: the run gives the same figures on every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from echo_lite.audio import audio_token_count
from echo_lite.config import SAMPLE_RATE, DataSpec, get_preset
from echo_lite.data.world import render_scene, sample_scene
from echo_lite.model import build_tiny_thinker, load_tokenizer
from echo_lite.perception import Collator, Item, answer_loss, generate_answer
from echo_lite.prompts import chat_messages, expand_audio_placeholders, render_chat
from echo_lite.segments import format_segment, parse_segments, segment_iou


class QuestionFirstItem(Item):
    """The same item with the question written before the clip in the user turn (`--question-first`):
    the audio tokens can then attend to the question, so each can mark itself as the sound asked about."""

    def user_text(self) -> str:
        messages = chat_messages(self.question, None, self.n_user_clips, instruction=None)  # as Item.user_text
        messages[1]["content"].reverse()  # [audio..., text] -> [text, audio...]
        text = render_chat(messages)
        return expand_audio_placeholders(text, [audio_token_count(len(c)) for c in self.clips[: self.n_user_clips]])


# Whole hertz, not world.note_hz: the committed curves were measured with these (C4 262 against 261.63).
NOTES = {"C4": 262, "D4": 294, "E4": 330, "F4": 349, "G4": 392, "A4": 440, "B4": 494, "C5": 523}
NOISE_RMS, TONE_AMPLITUDE, RAMP_S = 0.003, 0.3, 0.02


def add_tone(wav: np.ndarray, onset: float, offset: float, hz: float) -> None:
    """A sine from onset to offset (seconds), 20 ms ramps, added in place (cut at the clip's end)."""
    t = np.arange(int((offset - onset) * SAMPLE_RATE)) / SAMPLE_RATE
    env = np.minimum(1.0, np.minimum(t, (offset - onset) - t) / RAMP_S)
    a = int(onset * SAMPLE_RATE)
    m = min(len(t), len(wav) - a)
    wav[a:a + m] += TONE_AMPLITUDE * env[:m] * np.sin(2 * np.pi * hz * t[:m])


def one_tone_clip(rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float], str]:
    """A 5-10 s clip with one tone of random pitch and length: (wav, span, pitch name)."""
    length, dur = float(rng.uniform(5, 10)), float(rng.uniform(0.5, 2.0))
    onset = round(float(rng.uniform(0, length - dur - 0.2)), 1)
    offset = round(onset + dur, 1)
    name = str(rng.choice(list(NOTES)))
    wav = NOISE_RMS * rng.standard_normal(int(length * SAMPLE_RATE))
    add_tone(wav, onset, offset, NOTES[name])
    return wav.astype(np.float32), (onset, offset), name


def _where_is_the_tone(wav: np.ndarray, span: tuple[float, float]) -> Item:
    return Item("one_tone", "When do you hear the tone?", (wav,), 1, format_segment(*span), meta={"span": span})


def one_tone_item(rng: np.random.Generator) -> Item:
    wav, span, _ = one_tone_clip(rng)
    return _where_is_the_tone(wav, span)


def tone_part_item(rng: np.random.Generator) -> Item:
    """A part of the named task on a one-tone clip: where the tone is, or which tone it is (even odds)."""
    wav, span, name = one_tone_clip(rng)
    return _where_is_the_tone(wav, span) if rng.random() < 0.5 else Item("tone_name", "Which tone is this?", (wav,), 1, name)


def one_sound_item(rng: np.random.Generator, data: DataSpec) -> Item:
    """One sound of the synthetic world (any kind: knock runs, melodies, chirps, speech ...) alone in a
    5-10 s scene; "When do you hear the sound?" """
    scene = sample_scene(int(rng.integers(2**31)), duration=(5.0, 10.0), spec=data, n_events=1, overlap_prob=0.0)
    e = scene.events[0]
    span = (e.onset, min(e.offset, scene.duration))
    return Item("one_sound", "When do you hear the sound?", (render_scene(scene, data),), 1, format_segment(*span),
                meta={"span": span, "kind": e.kind})


def named_tone_item(rng: np.random.Generator, n_tones=(2, 4), seconds=(8.0, 18.0)) -> Item:
    """2-4 tones of distinct pitches, 0.2 s or more apart; the question names one of them."""
    length = float(rng.uniform(*seconds))
    k = int(rng.integers(n_tones[0], n_tones[1] + 1))
    names = list(rng.choice(list(NOTES), size=k, replace=False))
    durs = rng.uniform(0.5, 2.0, size=k)
    gaps = rng.dirichlet(np.ones(k + 1)) * (length - durs.sum() - 0.2 * (k + 1)) + 0.2
    wav = NOISE_RMS * rng.standard_normal(int(length * SAMPLE_RATE))
    spans, t0 = [], gaps[0]
    for j in range(k):
        onset, offset = round(float(t0), 1), round(float(t0 + durs[j]), 1)
        spans.append((onset, offset))
        add_tone(wav, onset, offset, NOTES[names[j]])
        t0 = t0 + durs[j] + gaps[j + 1]
    q = int(rng.integers(k))
    return Item("named_tone", f"When do you hear the {names[q]} tone?", (wav.astype(np.float32),), 1,
                format_segment(*spans[q]), meta={"span": spans[q]})


def training_items(task: str, rng: np.random.Generator, step: int, batch: int, data: DataSpec,
                   n_tones=(2, 4)) -> list[Item]:
    if task == "one_sound":
        return [one_sound_item(rng, data) for _ in range(batch)]
    if task == "one_tone":
        return [one_tone_item(rng) for _ in range(batch)]
    if task == "named_tone":
        return [named_tone_item(rng, n_tones) for _ in range(batch)]
    # mixed: the parts (where is the one tone, which tone is it) first, then mostly the whole
    draw = rng.random()
    if step < 300 or draw < 0.3:
        return [tone_part_item(rng) for _ in range(batch)]
    return [named_tone_item(rng, n_tones) for _ in range(batch)]


def held_out(task: str, n: int, data: DataSpec, n_tones=(2, 4)) -> list[Item]:
    make = {"one_tone": one_tone_item, "one_sound": lambda rng: one_sound_item(rng, data)}.get(
        task, lambda rng: named_tone_item(rng, n_tones))
    return [make(np.random.default_rng(10_000 + k)) for k in range(n)]


def span_iou(model, tok, items: list[Item]) -> float:
    """Mean IoU of the first well-formed span of each greedy answer (0 where there is none)."""
    ious = []
    for it in items:
        tags = [t for t in parse_segments(generate_answer(model, tok, it, max_new_tokens=16)) if t.ok]
        ious.append(segment_iou(tags[0].span, it.meta["span"]) if tags else 0.0)
    return float(np.mean(ious))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("one_tone", "one_sound", "named_tone", "mixed"), default="one_tone")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--held-out", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the model's initialisation and the training items")
    p.add_argument("--tones", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"),
                   help="how many tones a named_tone clip holds")
    p.add_argument("--question-first", action="store_true", help="write the question before the clip (QuestionFirstItem)")
    p.add_argument("--json", default=None, help="also write the curve to this JSON file")
    p.add_argument("--text-layers", type=int, default=None, help="text blocks (default: the preset's base, 2)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    preset = get_preset("tiny")
    spec = preset.pretrain
    tok = load_tokenizer("tiny")
    arch = dataclasses.replace(preset.model, seed=args.seed, text_layers=args.text_layers or preset.model.text_layers)
    model = build_tiny_thinker(tok, arch).train()
    collate = Collator(tok, model.config.audio_config.num_mel_bins)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    layout = (lambda it: QuestionFirstItem(**vars(it))) if args.question_first else (lambda it: it)
    held = [layout(it) for it in held_out(args.task, args.held_out, preset.data, tuple(args.tones))]
    spans = np.array([it.meta["span"] for it in held])
    const = tuple(spans.mean(0))  # the best a span that ignores the audio does, about
    const_iou = round(float(np.mean([segment_iou(const, s) for s in spans])), 3)
    print(json.dumps({"task": args.task, "text_layers": arch.text_layers, "question_first": args.question_first,
                      "constant_span_iou": const_iou}))
    rng, rows, losses, t0 = np.random.default_rng(args.seed), [], [], time.perf_counter()
    for step in range(1, args.steps + 1):
        items = training_items(args.task, rng, step - 1, spec.batch_size, preset.data, tuple(args.tones))
        loss = answer_loss(model, collate([layout(it) for it in items]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                iou = span_iou(model, tok, held)
            model.train()
            rows.append({"step": step, "seconds": round(time.perf_counter() - t0),
                         "loss": round(float(np.mean(losses[-args.eval_every:])), 3), "held_out_iou": round(iou, 3)})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": args.task, "text_layers": arch.text_layers, "question_first": args.question_first,
                       "tones": list(args.tones) if args.task in ("named_tone", "mixed") else None,
                       "seed": args.seed, "threads": args.threads, "constant_span_iou": const_iou, "curve": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
