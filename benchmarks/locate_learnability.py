"""Can a tiny thinker trained from scratch learn to write where a sound is? (issue 6, docs/localisation.md)

    PYTHONPATH=. python benchmarks/locate_learnability.py --task one_tone --steps 2000
    PYTHONPATH=. python benchmarks/locate_learnability.py --task named_tone --steps 1200 [--text-layers 4]
    PYTHONPATH=. python benchmarks/locate_learnability.py --task named_tone --steps 1200 --question-first
    PYTHONPATH=. python benchmarks/locate_learnability.py --task named_tone --tones 2 2 --seconds 5 8 --steps 4000
    PYTHONPATH=. python benchmarks/locate_learnability.py --task named_sound --steps 1200 --init base

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
  named_tone: 2-4 tones (`--tones`) of distinct named pitches in an 8-18 s clip (`--seconds`);
              "When do you hear the E4 tone?"
  mixed:      named_tone items, with one_tone items and "Which tone is this?" (the pitch's name) first
              (the first 300 steps) and in 30 % of the later steps: the parts taught before the whole.
  named_sound: 2-4 sounds of the world of distinct kinds in an 8-18 s scene (`--tones`, `--seconds`);
              "When do you hear the knocks?"
              (selection by kind, as the eval split's questions name sounds).
  walk:       2-4 sounds of the world in an 8-18 s scene (`--tones`, `--seconds`); "When is each sound heard?"
              -> every span in order of onset; the j-th span is scored against the j-th sound.
For the tasks with several sounds each evaluation also scores the span against the nearest sound of the clip
(`any_sound_iou`): a model that finds a sound but not the named one scores high there and low on the named one.
`--question-first` writes the question before the clip; `--text-layers` changes the depth, `--audio-window` the
encoder's attention window (one window over the whole clip puts an absolute time in every audio frame); `--init base` starts
from the shipped pretrained base (data/tiny_base) instead of a fresh model; `--curriculum` trains the named tasks
on fewer sounds in shorter clips first (2 in 5-8 s, then 2-3 in 7-12 s, each a third of the steps); `--paired` asks
about two sounds of every training clip in the same batch, so that only the name tells the two answers apart;
`--by-order` names the sound by its place ("the second tone", "the second sound"): whether the model can select by any word.
Every item is a pure function of the seeds: the run gives the same figures on every run.

`--device cuda --workers 12` runs the same training on a GPU, with the batches made by 12 worker processes
(a batch's items then come from a generator seeded by (seed, step), so the stream does not depend on the
number of workers, but it is not the single-process stream of the committed CPU curves). One step of the tiny
thinker is ~0.35 s on 2 CPU cores; this is for runs of many thousand steps.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import time

import numpy as np
import torch

from echo_lite.audio import audio_token_count
from echo_lite.config import SAMPLE_RATE, DataSpec, get_preset
from echo_lite.data.world import render_scene, sample_scene
from echo_lite.model import build_tiny_thinker, load_preset_model, load_tokenizer
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
    return Item("one_tone", "When do you hear the tone?", (wav,), 1, format_segment(*span), meta={"span": span, "all_spans": [span]})


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
                meta={"span": span, "all_spans": [span], "kind": e.kind})


def _asked(rng: np.random.Generator, k: int, asks: int) -> list[int]:
    """Which of a clip's k sounds the questions name: one at random, or `asks` distinct ones (`--paired`)."""
    return [int(rng.integers(k))] if asks == 1 else [int(q) for q in rng.choice(k, size=asks, replace=False)]


ORDINALS = ("first", "second", "third", "fourth")


def named_tone_items(rng: np.random.Generator, n_tones=(2, 4), seconds=(8.0, 18.0), asks: int = 1,
                     by_order: bool = False) -> list[Item]:
    """2-4 tones of distinct pitches, 0.2 s or more apart; each question names one of them, by its pitch
    ("the E4 tone") or by its place (`by_order`: "the second tone")."""
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
    wav = wav.astype(np.float32)
    return [Item("named_tone", f"When do you hear the {ORDINALS[q] if by_order else names[q]} tone?", (wav,), 1,
                 format_segment(*spans[q]), meta={"span": spans[q], "all_spans": spans}) for q in _asked(rng, k, asks)]


def named_tone_item(rng: np.random.Generator, n_tones=(2, 4), seconds=(8.0, 18.0), by_order: bool = False) -> Item:
    return named_tone_items(rng, n_tones, seconds, by_order=by_order)[0]


SOUND_NOUNS = {"tone": "tone", "chirp": "chirp", "knocks": "knocks", "noise": "noise", "melody": "melody",
               "speech": "word"}


def scene_of(rng: np.random.Generator, data: DataSpec, k: int, seconds, distinct_kinds: bool = False):
    """A scene of the world with exactly k sounds, none overlapping (of k kinds with `distinct_kinds`),
    redrawn until it holds them (a few draws)."""
    while True:
        scene = sample_scene(int(rng.integers(2**31)), duration=seconds, spec=data, n_events=k, overlap_prob=0.0)
        if len(scene.events) == k and (not distinct_kinds or len({e.kind for e in scene.events}) == k):
            return scene


def named_sound_items(rng: np.random.Generator, data: DataSpec, n_sounds=(2, 4), seconds=(8.0, 18.0),
                      asks: int = 1, by_order: bool = False) -> list[Item]:
    """2-4 sounds of the world, of distinct kinds, in one scene; each question names one by its kind
    ("the knocks") or by its place in time (`by_order`: "the second sound")."""
    k = int(rng.integers(n_sounds[0], n_sounds[1] + 1))
    scene = scene_of(rng, data, k, seconds, distinct_kinds=True)
    events = sorted(scene.events, key=lambda e: e.onset)  # the places of `by_order`
    spans = [(e.onset, min(e.offset, scene.duration)) for e in events]
    wav = render_scene(scene, data)
    return [Item("named_sound", f"When do you hear the {ORDINALS[q] + ' sound' if by_order else SOUND_NOUNS[events[q].kind]}?",
                 (wav,), 1, format_segment(*spans[q]), meta={"span": spans[q], "all_spans": spans})
            for q in _asked(rng, k, asks)]


def named_sound_item(rng: np.random.Generator, data: DataSpec, n_sounds=(2, 4), seconds=(8.0, 18.0),
                     by_order: bool = False) -> Item:
    return named_sound_items(rng, data, n_sounds, seconds, by_order=by_order)[0]


def walk_item(rng: np.random.Generator, data: DataSpec, n_sounds=(2, 4), seconds=(8.0, 18.0)) -> Item:
    """2-4 sounds of the world in one scene; "When is each sound heard?" -> every span, in order of onset.

    The walk a chain of thought can take through a clip: each span is found as the next sound after the
    one just written, which asks for no name at all (selection by place, which the tiny thinker learns)."""
    scene = scene_of(rng, data, int(rng.integers(n_sounds[0], n_sounds[1] + 1)), seconds)
    spans = [(e.onset, min(e.offset, scene.duration)) for e in sorted(scene.events, key=lambda e: e.onset)]
    return Item("walk", "When is each sound heard?", (render_scene(scene, data),), 1,
                " ".join(format_segment(*sp) for sp in spans), meta={"span": spans[0], "all_spans": spans, "walk": True})


def stage_of(step: int, steps: int, n_sounds: tuple[int, int], curriculum: bool, seconds=(8.0, 18.0)):
    """(how many sounds, clip seconds) for a training step: the eval's own, or the curriculum's stage."""
    if curriculum and step < steps / 3:
        return (2, 2), (5.0, 8.0)  # the shortest that fits two 2 s sounds and their gaps
    if curriculum and step < 2 * steps / 3:
        return (2, min(3, n_sounds[1])), (7.0, 12.0)
    return n_sounds, seconds


def training_items(task: str, rng: np.random.Generator, step: int, batch: int, data: DataSpec,
                   n_tones=(2, 4), steps: int = 0, curriculum: bool = False, seconds=(8.0, 18.0),
                   paired: bool = False, by_order: bool = False) -> list[Item]:
    n, seconds = stage_of(step, steps, n_tones, curriculum, seconds)
    asks = 2 if paired else 1  # --paired: half the clips, each asked about two of its sounds
    if task == "named_sound":
        return [it for _ in range(batch // asks) for it in named_sound_items(rng, data, n, seconds, asks, by_order)]
    if task == "walk":
        return [walk_item(rng, data, n, seconds) for _ in range(batch)]
    if task == "named_tone":
        return [it for _ in range(batch // asks) for it in named_tone_items(rng, n, seconds, asks, by_order)]
    if task == "one_sound":
        return [one_sound_item(rng, data) for _ in range(batch)]
    if task == "one_tone":
        return [one_tone_item(rng) for _ in range(batch)]
    # mixed: the parts (where is the one tone, which tone is it) first, then mostly the whole
    draw = rng.random()
    if step < 300 or draw < 0.3:
        return [tone_part_item(rng) for _ in range(batch)]
    return [named_tone_item(rng, n_tones) for _ in range(batch)]


def held_out(task: str, n: int, data: DataSpec, n_tones=(2, 4), seconds=(8.0, 18.0), by_order: bool = False) -> list[Item]:
    make = {"one_tone": one_tone_item, "one_sound": lambda rng: one_sound_item(rng, data),
            "named_sound": lambda rng: named_sound_item(rng, data, n_tones, seconds, by_order),
            "walk": lambda rng: walk_item(rng, data, n_tones, seconds)}.get(
        task, lambda rng: named_tone_item(rng, n_tones, seconds, by_order))
    return [make(np.random.default_rng(10_000 + k)) for k in range(n)]


def span_iou(model, tok, items: list[Item]) -> dict:
    """Mean IoU of the first well-formed span of each greedy answer (0 where there is none): against the
    asked-for sound (`held_out_iou`) and, where a clip holds several, against the nearest one (`any_sound_iou`)."""
    if items and items[0].meta.get("walk"):
        return walk_iou(model, tok, items)
    named, nearest = [], []
    for it in items:
        tags = [t for t in parse_segments(generate_answer(model, tok, it, max_new_tokens=16)) if t.ok]
        span = tags[0].span if tags else None
        named.append(segment_iou(span, it.meta["span"]) if span else 0.0)
        nearest.append(max(segment_iou(span, s) for s in it.meta["all_spans"]) if span else 0.0)
    out = {"held_out_iou": round(float(np.mean(named)), 3)}
    if all(len(it.meta["all_spans"]) > 1 for it in items):
        out["any_sound_iou"] = round(float(np.mean(nearest)), 3)
    return out


def walk_iou(model, tok, items: list[Item]) -> dict:
    """Walk items: the j-th well-formed span of each greedy answer against the j-th sound (0 where the answer
    stops short), averaged over the sounds (`held_out_iou`); each cited span against its nearest sound
    (`any_sound_iou`); and the spans cited per sound present (`cited_per_sound`)."""
    by_place, nearest, ratio = [], [], []
    for it in items:
        gold = it.meta["all_spans"]
        text = generate_answer(model, tok, it, max_new_tokens=12 * len(gold) + 8)
        spans = [t.span for t in parse_segments(text) if t.ok]
        by_place += [segment_iou(spans[j], g) if j < len(spans) else 0.0 for j, g in enumerate(gold)]
        nearest += [max(segment_iou(sp, g) for g in gold) for sp in spans]
        ratio.append(len(spans) / len(gold))
    return {"held_out_iou": round(float(np.mean(by_place)), 3),
            "any_sound_iou": round(float(np.mean(nearest)) if nearest else 0.0, 3),
            "cited_per_sound": round(float(np.mean(ratio)), 3)}


_WORKER: dict = {}


def laid_out(args, item: Item) -> Item:
    """The item with the question where `--question-first` puts it."""
    return QuestionFirstItem(**vars(item)) if args.question_first else item


def step_items(args, rng: np.random.Generator, step: int, batch: int, data: DataSpec) -> list[Item]:
    """The laid-out training items of a step (0-based) under the run's options."""
    return [laid_out(args, it) for it in training_items(args.task, rng, step, batch, data, tuple(args.tones), args.steps,
                                                        args.curriculum, tuple(args.seconds), args.paired, args.by_order)]


def _worker_init(args) -> None:
    """A batch-making process: one thread, its own collator (the featurizer is the costly part)."""
    torch.set_num_threads(1)
    preset = get_preset("tiny")
    _WORKER.update(args=args, data=preset.data, batch=preset.pretrain.batch_size,
                   collate=Collator(load_tokenizer("tiny"), preset.model.n_mels))


def _worker_batch(step: int) -> dict:
    """The collated batch of a training step (0-based), from a generator seeded by (seed, step)."""
    w = _WORKER
    return w["collate"](step_items(w["args"], np.random.default_rng([w["args"].seed, step]), step, w["batch"], w["data"]))


def prefetched_batches(args, n_steps: int):
    """The batches of steps 0..n_steps-1 in order, made by `args.workers` processes a few steps ahead.

    The pool is forked here, at the call, before any CUDA call (the children never touch the GPU)."""
    pool = multiprocessing.get_context("fork").Pool(args.workers, _worker_init, (args,))
    ahead = collections.deque(pool.apply_async(_worker_batch, (s,)) for s in range(min(n_steps, 3 * args.workers)))

    def batches():
        nxt = len(ahead)
        try:
            while ahead:
                batch = ahead.popleft().get()
                if nxt < n_steps:
                    ahead.append(pool.apply_async(_worker_batch, (nxt,)))
                    nxt += 1
                yield batch
        finally:
            pool.terminate()
    return batches()


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("one_tone", "one_sound", "named_tone", "mixed", "named_sound", "walk"),
                   default="one_tone")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--held-out", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the model's initialisation and the training items")
    p.add_argument("--tones", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"),
                   help="how many tones a named_tone clip holds")
    p.add_argument("--seconds", type=float, nargs=2, default=(8.0, 18.0), metavar=("MIN", "MAX"),
                   help="clip length of named_tone and named_sound items (>= 5 s: two 2 s sounds and their gaps)")
    p.add_argument("--question-first", action="store_true", help="write the question before the clip (QuestionFirstItem)")
    p.add_argument("--audio-window", type=int, default=None,
                   help="the encoder's n_window in mel frames (default the preset's 100: 2 s windows; 1500: one 30 s window)")
    p.add_argument("--by-order", action="store_true",
                   help="named tasks: the question names the sound by its place (\"the second tone\", \"the second sound\"), not its pitch or kind")
    p.add_argument("--paired", action="store_true",
                   help="named tasks: each training clip is asked about two of its sounds, in the same batch")
    p.add_argument("--init", choices=("fresh", "base"), default="fresh",
                   help="a fresh model (the preset's initialisation), or the shipped pretrained base")
    p.add_argument("--curriculum", action="store_true", help="named tasks: fewer sounds in shorter clips first")
    p.add_argument("--json", default=None, help="also write the curve to this JSON file")
    p.add_argument("--device", default="cpu", help="train and evaluate here (cuda on a GPU machine)")
    p.add_argument("--workers", type=int, default=0,
                   help="make the batches in this many processes (0: in this one, the committed curves' stream)")
    p.add_argument("--text-layers", type=int, default=None, help="text blocks (default: the preset's base, 2)")
    args = p.parse_args(argv)
    if args.seconds[0] < 5.0 or args.seconds[0] > args.seconds[1]:
        p.error(f"--seconds {args.seconds}: need 5 <= MIN <= MAX")
    if args.by_order and args.task not in ("named_tone", "named_sound"):
        p.error("--by-order is an option of the named tasks (named_tone, named_sound)")
    if (args.curriculum or args.paired) and args.task not in ("named_tone", "named_sound"):
        p.error("--curriculum and --paired are options of the named tasks (named_tone, named_sound)")

    if args.workers < 0:
        p.error(f"--workers {args.workers}: need 0 or more")
    batches = prefetched_batches(args, args.steps) if args.workers else None  # fork before the model exists
    torch.set_num_threads(args.threads)
    preset = get_preset("tiny")
    spec = preset.pretrain
    tok = load_tokenizer("tiny")
    arch = dataclasses.replace(preset.model, seed=args.seed, text_layers=args.text_layers or preset.model.text_layers,
                               audio_n_window=args.audio_window or preset.model.audio_n_window)
    if args.init == "base":
        if args.text_layers or args.seed or args.audio_window:
            p.error("--init base starts from the shipped base: its depth and weights are fixed")
        model = load_preset_model(preset).model.train()
    else:
        model = build_tiny_thinker(tok, arch).train()
    model.to(args.device)
    collate = Collator(tok, model.config.audio_config.num_mel_bins)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    held = [laid_out(args, it) for it in held_out(args.task, args.held_out, preset.data, tuple(args.tones), tuple(args.seconds),
                                          args.by_order)]
    spans = np.array([it.meta["span"] for it in held])
    const = tuple(spans.mean(0))  # the best a span that ignores the audio does, about
    const_iou = round(float(np.mean([segment_iou(const, s) for s in spans])), 3)
    head = {"task": args.task, "text_layers": arch.text_layers, "audio_window": arch.audio_n_window,
            "question_first": args.question_first,
            "tones": list(args.tones) if args.task in ("named_tone", "mixed", "named_sound", "walk") else None,
            "seconds": list(args.seconds) if args.task in ("named_tone", "named_sound", "walk") else None,
            "init": args.init, "curriculum": args.curriculum, "paired": args.paired, "by_order": args.by_order, "seed": args.seed, "threads": args.threads,
            "device": args.device, "workers": args.workers,
            "constant_span_iou": const_iou}
    print(json.dumps(head))
    rng, rows, losses, t0 = np.random.default_rng(args.seed), [], [], time.perf_counter()
    for step in range(1, args.steps + 1):
        if batches is not None:
            batch = {k: v.to(args.device, non_blocking=True) for k, v in next(batches).items()}
        else:
            batch = collate(step_items(args, rng, step - 1, spec.batch_size, preset.data), device=args.device)
        loss = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                ious = span_iou(model, tok, held)
            model.train()
            rows.append({"step": step, "seconds": round(time.perf_counter() - t0),
                         "loss": round(float(np.mean(losses[-args.eval_every:])), 3), **ious})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**head, "curve": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
