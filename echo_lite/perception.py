"""What the tiny base learns to hear, and how that is measured: items, batches, probes.

An `Item` is one training or test question over the synthetic world with a short
answer (an event label or a count), in four families:

- `single`: one event clip (0.3-3 s) -> its label (perception);
- `multi`: two or three clips in the user turn -> the label of the n-th one (a clip is
  read wherever it stands);
- `relisten`: a long scene and a question, then inside the assistant turn the teacher's
  words up to `<seg>a, b</seg>`, the clip cut at [a, b] inserted, and ", this is the" ->
  the label of what that clip holds (what the interleaved runtime will produce);
- `onepass`: a long scene (5-30 s) and a question answered directly (event at a time,
  knocks in a span, what follows an event) - hard for a small model in one pass;
- `span`: a long scene and a question, the teacher's words up to the first number, then
  the model writes the rest of the first cited clause: the question's time copied and
  the event's span (`9.6 seconds, so I listen to <seg>9.5, 11.9</seg>`). Copying a
  time out of the question is what SFT alone did not teach the tiny model (600 steps:
  it wrote "1.3 seconds" for every question).
- `read`: text only, no audio: the question and the teacher's words up to the first
  number -> its words up to `<seg>` (`9.6 seconds, so I listen to`). Copying is learned
  from a short context and then works behind long audio too. Measured on the previous
  base (span family, no `read`): it copied the time in 1/32 span items, and SFT did not
  teach it either (1/80, teacher-forced). From that base, 300 text-only steps took text
  copying to 32/32 in 20 s, and 25 span steps after them took copying behind 10-30 s
  scenes to 26/32. The real thinker inherits this skill from its text LLM; the tiny base
  never saw text alone.

Questions, spans and the teacher's wording come from `data/questions.py` (one place).
Loss and scoring are on the answer tokens only; an item counts as correct when greedy
decoding reproduces the whole answer (argmax at every answer position, one forward).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from echo_lite.audio import AudioFeaturizer, audio_token_count, cut_span
from echo_lite.config import SEG_CLOSE, SEG_OPEN, THINK_OPEN, DataSpec, PretrainSpec
from echo_lite.data.questions import QTYPES, WALK_OPENING, Draft
from echo_lite.data.world import Scene, render_scene, sample_scene
from echo_lite.prompts import AUDIO_SLOT, chat_messages, expand_audio_placeholders, render_chat

ORDINALS = ("first", "second", "third")
SINGLE_QUESTION = "What is heard in this clip?"
MULTI_QUESTION = "What is heard in the {ordinal} clip?"


class PerceptionError(ValueError):
    """An item or batch that cannot be built; the message names what is wrong."""


@dataclass(frozen=True)
class Item:
    """One question with its clips and a short target.

    `assistant_prefix` is text the assistant has already written (teacher-forced); each
    `AUDIO_SLOT` in it is a clip inserted there. `clips` holds the user-turn clips first,
    then the assistant-turn clips, in order of appearance.
    """

    task: str
    question: str
    clips: tuple[np.ndarray, ...]
    n_user_clips: int
    answer: str
    assistant_prefix: str = ""
    end_turn: bool = True  # the target ends the turn (<|im_end|>); False mid-reasoning
    meta: dict = field(default_factory=dict)

    def user_text(self) -> str:
        """System and user turns and the assistant header, audio expanded."""
        text = render_chat(chat_messages(self.question, None, self.n_user_clips, instruction=None))
        return expand_audio_placeholders(text, [audio_token_count(len(c)) for c in self.clips[: self.n_user_clips]])

    def assistant_text(self) -> str:
        """What the assistant already wrote, with its inserted clips expanded."""
        counts = [audio_token_count(len(c)) for c in self.clips[self.n_user_clips:]]
        return expand_audio_placeholders(self.assistant_prefix, counts)

    def prompt_ids(self, tokenizer) -> tuple[list[int], int]:
        """Token ids of everything before the answer, and where the assistant's text starts."""
        user = tokenizer(self.user_text(), add_special_tokens=False).input_ids
        assistant = tokenizer(self.assistant_text(), add_special_tokens=False).input_ids if self.assistant_prefix else []
        return user + assistant, len(user)


# --------------------------------------------------------------------------------------
# Building items from the world.
# --------------------------------------------------------------------------------------
def _scene(seed: int, seconds: tuple[float, float], data: DataSpec, **kw) -> Scene:
    return sample_scene(int(seed), duration=seconds, spec=data, **kw)


def single_item(seed: int, rng: np.random.Generator, spec: PretrainSpec, data: DataSpec) -> Item:
    """One event alone (a 1-event scene cut around the event) -> its label."""
    clip, label = _single_clip(seed, rng, spec, data)
    return Item("single", SINGLE_QUESTION, (clip,), 1, label, meta={"seed": int(seed)})


def _single_clip(seed: int, rng: np.random.Generator, spec: PretrainSpec, data: DataSpec) -> tuple[np.ndarray, str]:
    kinds = dataclasses.replace(data, kind_weights=spec.single_kind_weights)
    scene = _scene(seed, data.event_seconds[1] + 1.0, kinds, n_events=1, overlap_prob=0.0)
    e = scene.events[0]
    pad_a, pad_b = rng.uniform(*spec.single_pad_s, size=2)
    a, b = max(0.0, e.onset - pad_a), min(scene.duration, e.offset + pad_b)
    return cut_span(render_scene(scene, data), a, b), e.label


def multi_item(seed: int, rng: np.random.Generator, spec: PretrainSpec, data: DataSpec) -> Item:
    """Two or three single-event clips in the user turn -> the label of one of them."""
    n = int(rng.integers(spec.multi_clips[0], spec.multi_clips[1] + 1))
    clips, labels = zip(*(_single_clip(seed * 7 + k, rng, spec, data) for k in range(n)), strict=True)
    k = int(rng.integers(n))
    return Item("multi", MULTI_QUESTION.format(ordinal=ORDINALS[k]), tuple(clips), n, labels[k],
                meta={"seed": int(seed), "asked": k})


def _draft(qtype: str, scene: Scene, rng: np.random.Generator, data: DataSpec) -> Draft | None:
    make = QTYPES[qtype][0]
    return make(scene, rng, data)


def _scene_with(qtype: str, seed: int, rng: np.random.Generator, seconds, data: DataSpec,
                tries: int = 500) -> tuple[Scene, Draft, int]:
    """The first scene from `seed` on that can ask `qtype` (seeds are consumed in order). Why 500:
    `overlap` is rare in short scenes, and 50 tries ran out at step 2,031 of a placement round (seed 4);
    more tries change no item that 50 could make (under 1,000, so `walk_item`'s seed blocks stay apart)."""
    for k in range(tries):
        scene = _scene(seed + k, seconds, data)
        draft = _draft(qtype, scene, rng, data)
        if draft is not None:
            return scene, draft, seed + k
    raise PerceptionError(f"no scene from seed {seed} on could ask {qtype!r} in {tries} tries")


def onepass_item(seed: int, rng: np.random.Generator, qtype: str, seconds: tuple[float, float],
                 data: DataSpec) -> Item:
    """A long scene and a question answered at once (no re-listening)."""
    scene, draft, used = _scene_with(qtype, seed, rng, seconds, data)
    return Item("onepass", draft.question, (render_scene(scene, data),), 1, draft.answer,
                meta={"qtype": qtype, "seed": used, "spans": draft.decisive_spans, "n_events": len(scene.events),
                      "labels": [e.label for e in scene.events], "duration": scene.duration})


def _first_number_before(think: str, marker: str, qtype: str) -> tuple[int, int]:
    """(index of the teacher text's first digit, index of its first `marker`); the digit must come first."""
    first_digit = next((i for i, ch in enumerate(think) if ch.isdigit()), None)
    at = think.find(marker)
    if first_digit is None or at < first_digit:
        raise PerceptionError(f"{qtype}: teacher text {think!r} has no number before its first '{marker}'")
    return first_digit, at


def span_item(seed: int, rng: np.random.Generator, qtype: str, seconds: tuple[float, float],
              data: DataSpec) -> Item:
    """Scene + question; the teacher's reasoning up to its first number is given, the model
    writes from there to the end of the first `</seg>` (a time copied, a span localised)."""
    scene, draft, used = _scene_with(qtype, seed, rng, seconds, data)
    think = draft.think
    first_digit, close = _first_number_before(think, SEG_CLOSE, qtype)
    return Item("span", draft.question, (render_scene(scene, data),), 1, think[first_digit:close + len(SEG_CLOSE)],
                assistant_prefix=THINK_OPEN + think[:first_digit], end_turn=False,
                meta={"qtype": qtype, "seed": used, "spans": draft.decisive_spans, "duration": scene.duration})


def walk_item(seed: int, rng: np.random.Generator, qtype: str, seconds: tuple[float, float],
              data: DataSpec, tries: int = 50) -> Item:
    """Scene + a question whose walk chain (`DataSpec.chain` "walk") goes through the clip's sounds;
    the teacher's words up to the walk are given, the model writes the walk through its last
    `</seg>`: each span found as the next sound after the one just written, each named.
    Selection by place is what the tiny thinker learns (docs/localisation.md)."""
    walk_data = dataclasses.replace(data, chain="walk")
    for k in range(tries):  # a walk longer than walk_max_spans falls back to the named chain: next scene
        scene, draft, used = _scene_with(qtype, seed + k * 1000, rng, seconds, walk_data)
        start = draft.think.find(WALK_OPENING)
        if start >= 0:
            break
    else:
        raise PerceptionError(f"no scene from seed {seed} on gave {qtype!r} a walk chain in {tries} tries")
    head = start + len(WALK_OPENING)
    close = draft.think.rfind(SEG_CLOSE)
    return Item("walk", draft.question, (render_scene(scene, data),), 1, draft.think[head:close + len(SEG_CLOSE)],
                assistant_prefix=THINK_OPEN + draft.think[:head], end_turn=False,
                meta={"qtype": qtype, "seed": used, "duration": scene.duration,
                      "all_spans": [e.span for e in sorted(scene.events, key=lambda e: (e.onset, e.offset))]})


def read_item(seed: int, rng: np.random.Generator, qtype: str, data: DataSpec) -> Item:
    """The question alone (no audio); the teacher's words up to the first number are given, the
    model writes on to `<seg>`: the times of the question copied (`7.1 to 10.0:`)."""
    _, draft, used = _scene_with(qtype, seed, rng, data.clip_seconds, data)
    think = draft.think
    first_digit, seg = _first_number_before(think, SEG_OPEN, qtype)
    return Item("read", draft.question, (), 0, think[first_digit:seg].rstrip(),
                assistant_prefix=THINK_OPEN + think[:first_digit], end_turn=False,
                meta={"qtype": qtype, "seed": used})


def split_teacher_clause(think: str, label: str) -> tuple[str, str]:
    """The teacher's first clause around `</seg>`: (text up to and with `</seg>`, words before the label).

    `"... so I listen to <seg>3.0, 4.1</seg>, this is the C5 tone."` ->
    (`"... so I listen to <seg>3.0, 4.1</seg>"`, `", this is the"`).
    """
    head, sep, tail = think.partition(SEG_CLOSE)
    if not sep or f" {label}" not in tail:
        raise PerceptionError(f"teacher text {think!r} has no '{SEG_CLOSE}' followed by the label {label!r}")
    return head + sep, tail[: tail.index(f" {label}")]


def relisten_item(seed: int, rng: np.random.Generator, seconds: tuple[float, float], data: DataSpec,
                  cite: str = "asked", qtype: str = "sound_at_time") -> Item:
    """Scene + question; the assistant cites a span, the clip is inserted, the label follows.

    cite: "asked" (the decisive event: the oracle segment), "other" (another event of the
    scene: what is heard must win over what the question implies), or "random" (a random
    span of the decisive event's length: the control).
    """
    scene, draft, used = _scene_with(qtype, seed, rng, seconds, data)
    wav = render_scene(scene, data)
    (a, b) = draft.decisive_spans[0]
    head, bridge = split_teacher_clause(draft.think, draft.answer)
    asked = next(e for e in scene.events if e.span == (a, b))
    target_event = asked
    if cite == "other":
        others = [e for e in scene.events if e.label != asked.label]
        if others:
            target_event = others[int(rng.integers(len(others)))]
    elif cite == "random":
        length = b - a
        start = round(float(rng.uniform(0.0, max(0.0, scene.duration - length))), 1)
        target_event = None
        span = (start, round(min(scene.duration, start + length), 1))
    elif cite != "asked":
        raise PerceptionError(f"cite must be 'asked', 'other' or 'random', got {cite!r}")
    if target_event is not None:
        span = target_event.span
    from echo_lite.segments import format_segment

    head = head.replace(format_segment(a, b), format_segment(*span))
    clip = cut_span(wav, *span)
    answer = target_event.label if target_event is not None else draft.answer
    return Item("relisten", draft.question, (wav, clip), 1, " " + answer,
                assistant_prefix=THINK_OPEN + head + AUDIO_SLOT + bridge, end_turn=False,
                meta={"qtype": qtype, "seed": used, "cite": cite, "span": span, "asked_label": draft.answer,
                      "labels": [e.label for e in scene.events], "duration": scene.duration})


def reasoning_item(seed: int, rng: np.random.Generator, qtype: str, seconds: tuple[float, float], data: DataSpec,
                   insert: bool) -> Item:
    """A scene, its question, and the rule teacher's whole response as assistant text.

    insert=False: the `<seg>` tags stay plain text (one-pass reasoning); insert=True: the
    clip of each span is inserted right after its `</seg>` (interleaved reasoning).
    Used to measure where attention goes while a response is written (attention.py).
    """
    from echo_lite.prompts import format_response
    from echo_lite.segments import parse_segments

    scene, draft, used = _scene_with(qtype, seed, rng, seconds, data)
    wav = render_scene(scene, data)
    response = format_response(draft.think, draft.answer)
    clips = [wav]
    if insert:
        pieces, last = [], 0
        for tag in parse_segments(response):
            if tag.ok:
                pieces += [response[last:tag.end_char], AUDIO_SLOT]
                clips.append(cut_span(wav, *tag.span))
                last = tag.end_char
        response = "".join(pieces) + response[last:]
    return Item("reasoning", draft.question, tuple(clips), 1, draft.answer, assistant_prefix=response,
                end_turn=False, meta={"qtype": qtype, "seed": used, "inserted": len(clips) - 1,
                                      "duration": scene.duration})


def _weighted(rng: np.random.Generator, table: Sequence[tuple[str, float]]) -> str:
    names, w = zip(*table, strict=True)
    w = np.asarray(w, dtype=float)
    return str(names[int(rng.choice(len(names), p=w / w.sum()))])


def training_batch(step: int, seed: int, spec: PretrainSpec, data: DataSpec) -> list[Item]:
    """The items of one training step: a pure function of (seed, step)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(step), 0x9E7]))
    task = _weighted(rng, spec.curriculum_weights if step < spec.curriculum_steps else spec.task_weights)
    seconds = spec.scene_buckets[int(_weighted(rng, [(str(i), w) for i, (_, w) in enumerate(spec.scene_buckets)]))][0]
    items = []
    for _ in range(spec.batch_size):
        s = int(rng.integers(0, spec.train_seed_range - 100))
        if task == "single":
            items.append(single_item(s, rng, spec, data))
        elif task == "multi":
            items.append(multi_item(s, rng, spec, data))
        elif task == "relisten":
            cite = "other" if rng.random() < spec.relisten_other_fraction else "asked"
            qtype = "tone_at_time" if rng.random() < 0.3 else "sound_at_time"
            items.append(relisten_item(s, rng, seconds, data, cite=cite, qtype=qtype))
        elif task == "onepass":
            items.append(onepass_item(s, rng, _weighted(rng, spec.onepass_qtypes), seconds, data))
        elif task == "span":
            items.append(span_item(s, rng, _weighted(rng, spec.span_qtypes), seconds, data))
        elif task == "read":
            items.append(read_item(s, rng, _weighted(rng, spec.read_qtypes), data))
        elif task == "walk":
            items.append(walk_item(s, rng, _weighted(rng, spec.walk_qtypes), seconds, data))
        else:
            raise PerceptionError(f"unknown task family {task!r} in PretrainSpec.task_weights")
    return items


# --------------------------------------------------------------------------------------
# Tensors.
# --------------------------------------------------------------------------------------
class Collator:
    """Items -> model inputs with labels on the answer tokens only (right padding)."""

    def __init__(self, tokenizer, n_mels: int):
        self.tok = tokenizer
        self.featurizer = AudioFeaturizer(n_mels)
        self.end_id = tokenizer.eos_token_id

    def encode(self, item: Item) -> tuple[list[int], list[int]]:
        prompt, _ = item.prompt_ids(self.tok)
        answer = self.tok(item.answer, add_special_tokens=False).input_ids
        if not answer:
            raise PerceptionError(f"item {item.task}: empty answer")
        return prompt, answer + ([self.end_id] if item.end_turn else [])

    def __call__(self, items: Sequence[Item], device: str | torch.device = "cpu") -> dict:
        if not items:
            raise PerceptionError("no items to collate")
        ids, labels = [], []
        for it in items:
            p, a = self.encode(it)
            ids.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, ids))
        pad = self.tok.pad_token_id
        batch = {
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels]),
        }
        clips = [c for it in items for c in it.clips]
        if clips:  # a batch of text-only items has no audio inputs at all
            batch.update(self.featurizer(clips))
        return {k: v.to(device) for k, v in batch.items()}


def answer_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the answer positions only: (N, vocab), their gold ids (N,), and each one's row (N,).

    The vocabulary projection of every prompt position would cost a fifth of a training
    step on CPU; the thinker has no `logits_to_keep`, so its head is applied here instead.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    head = model.lm_head
    model.lm_head = torch.nn.Identity()
    try:
        hidden = model(**inputs).logits  # the final hidden states, with the head bypassed
    finally:
        model.lm_head = head
    gold = labels[:, 1:]
    mask = gold != -100
    rows = mask.nonzero()[:, 0]
    return head(hidden[:, :-1][mask]), gold[mask], rows


def answer_loss(model, batch: dict) -> torch.Tensor:
    logits, gold, _ = answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits, gold)


def rows_correct(logits: torch.Tensor, gold: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(n_rows,) bool: greedy decoding reproduces every answer token of each row."""
    dev = logits.device
    wrong = torch.zeros(n_rows, dtype=torch.long, device=dev).index_add_(0, rows, (logits.argmax(-1) != gold).long())
    has = torch.zeros(n_rows, dtype=torch.long, device=dev).index_add_(0, rows, torch.ones_like(rows))
    return ((wrong == 0) & (has > 0)).cpu()


@torch.no_grad()
def score_items(model, collate: Collator, items: Sequence[Item], batch_size: int = 16) -> list[bool]:
    """Greedy exact-answer correctness of each item (model in eval mode, restored after)."""
    was_training = model.training
    model.eval()
    out: list[bool] = []
    for i in range(0, len(items), batch_size):
        batch = collate(items[i:i + batch_size], device=next(model.parameters()).device)
        logits, gold, rows = answer_logits(model, batch)
        out += rows_correct(logits, gold, rows, len(batch["input_ids"])).tolist()
    model.train(was_training)
    return out


# --------------------------------------------------------------------------------------
# Probes: held-out perception questions with chance beside them.
# --------------------------------------------------------------------------------------
PROBES = {  # probe name -> question type of data/questions.py (answers are open, not multiple choice)
    "label_at_time": "sound_at_time",
    "count_in_span": "knock_count",
    "order": "what_follows",
}


def probe_items(name: str, n: int, spec: PretrainSpec, data: DataSpec, offset: int = 0) -> list[Item]:
    """`n` held-out one-pass items of probe `name` (scene seeds from `spec.probe_seed_offset`)."""
    if name not in PROBES:
        raise PerceptionError(f"unknown probe {name!r}; choose from {sorted(PROBES)}")
    base = spec.probe_seed_offset + 100_000 * (list(PROBES).index(name) + 1) + offset
    items, seed = [], base
    rng = np.random.default_rng(np.random.SeedSequence([base, 0xB0BE]))
    while len(items) < n:
        it = onepass_item(seed, rng, PROBES[name], spec.probe_seconds, data)
        items.append(it)
        seed = it.meta["seed"] + 1
    return items


def fine_detail_items(n: int, spec: PretrainSpec, data: DataSpec, cite: str | None) -> list[Item]:
    """The fine-detail set ("which tone at t" in 10-30 s scenes): one-pass (`cite=None`) or
    with a clip inserted (`cite` = "asked" for the oracle segment, "random" for the control).
    The same scenes and questions in every condition."""
    base = spec.probe_seed_offset + 900_000
    items, seed = [], base
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([base, k]))
        if cite is None:
            it = onepass_item(seed, rng, "tone_at_time", spec.fine_detail_seconds, data)
        else:
            it = relisten_item(seed, rng, spec.fine_detail_seconds, data, cite=cite, qtype="tone_at_time")
        items.append(it)
        seed = it.meta["seed"] + 1
    return items


def time_copy_items(n: int, spec: PretrainSpec, data: DataSpec) -> list[Item]:
    """Held-out span items (5-15 s scenes) cut to the part that copies the question's time(s):
    scored by greedy exact match, they measure copying behind the audio (`9.6 seconds, so I
    listen to`), what the `read` family is for."""
    base = spec.probe_seed_offset + 800_000
    qtypes = [q for q, _ in spec.read_qtypes]
    items, seed = [], base
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([base, k]))
        it = span_item(seed, rng, qtypes[k % len(qtypes)], spec.probe_seconds, data)
        items.append(dataclasses.replace(it, task="copy", answer=it.answer[: it.answer.index(SEG_OPEN)].rstrip()))
        seed = it.meta["seed"] + 1
    return items


def chance_level(items: Sequence[Item]) -> float:
    """Accuracy of the best constant answer on these items (>= 1 / number of answers)."""
    counts = Counter(it.answer.strip() for it in items)
    return max(counts.values()) / len(items)


def present_label_baseline(items: Sequence[Item]) -> float:
    """Expected accuracy of naming a random event of the clip: perception without timing."""
    vals = [it.meta["labels"].count(it.answer.strip()) / len(it.meta["labels"]) for it in items]
    return float(np.mean(vals))


@dataclass
class ProbeResult:
    name: str
    n: int
    accuracy: float
    chance: float
    present_label: float

    @property
    def ratio(self) -> float:
        return self.accuracy / self.chance if self.chance > 0 else float("inf")


def run_probes(model, collate: Collator, spec: PretrainSpec, data: DataSpec, n: int | None = None,
               names: Sequence[str] = tuple(PROBES)) -> dict[str, ProbeResult]:
    n = n or spec.probe_items
    out = {}
    for name in names:
        items = probe_items(name, n, spec, data)
        acc = float(np.mean(score_items(model, collate, items)))
        out[name] = ProbeResult(name, n, acc, chance_level(items), present_label_baseline(items))
    return out


def one_pass_vs_oracle(model, collate: Collator, spec: PretrainSpec, data: DataSpec, n: int,
                       conditions: Sequence[str | None] = (None, "random", "asked"),
                       progress: Callable | None = None) -> dict[str, dict]:
    """Accuracy on the fine-detail set per condition: one-pass, random segment, oracle segment."""
    names = {None: "one_pass", "random": "random_segment", "asked": "oracle_segment"}
    out: dict = {}
    for cite in conditions:
        items = fine_detail_items(n, spec, data, cite)
        ok = score_items(model, collate, items)
        out[names[cite]] = {"accuracy": float(np.mean(ok)), "n": n, "correct": ok}
        out["chance"] = chance_level(items)  # the same questions in every condition
        if progress:
            progress(names[cite], out[names[cite]]["accuracy"])
    return out


@torch.no_grad()
def generate_answer(model, tokenizer, item: Item, max_new_tokens: int = 8) -> str:
    """Greedy continuation of an item's prompt (what the model says, not a score)."""
    from echo_lite.config import PLACEHOLDER_TOKENS

    ids, _ = item.prompt_ids(tokenizer)
    feats = AudioFeaturizer(model.config.audio_config.num_mel_bins)(list(item.clips))
    input_ids = torch.tensor([ids], device=model.device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         **{k: v.to(model.device) for k, v in feats.items()}, max_new_tokens=max_new_tokens,
                         do_sample=False, suppress_tokens=[tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDER_TOKENS])
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
