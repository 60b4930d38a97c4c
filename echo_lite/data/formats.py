"""The dataset item schema and its two forms on disk (later stages read these).

A split directory (`DIR/sft`, `DIR/rl`, `DIR/eval`) holds:

- `audio/<scene_id>.wav` - 16 kHz mono PCM WAV clips;
- `manifest.jsonl` - one JSON object per item (append-only; audio paths relative to
  the split directory, never escaping it);
- `hf/` - the same items as a Hugging Face `datasets.Dataset` (`save_to_disk`), with
  the audio embedded through an `Audio(sampling_rate=16000, decode=False)` feature
  (datasets 5 decodes audio through torchcodec, which the CPU stack lacks; decode the
  bytes with `item_audio`), and `events` / `query` as JSON strings.

Item fields:

| field | type | meaning |
|---|---|---|
| id | str | unique item id, `<scene_id>-q<k>` |
| audio | str | clip path relative to the split directory |
| duration | float | clip length, seconds |
| question | str | the question text (the prompt is built by `prompts.build_prompt`) |
| choices | list[str] | option texts |
| answer | str | one of `choices` |
| response | str | `<think>...</think><answer>...</answer>` with `<seg>` spans (SFT); "" for RL-only items |
| qtype | str | question type (`questions.QTYPES`, or "other" from an LLM) |
| events | list[dict] | the clip's events (`Event.to_dict`) |
| decisive_spans | list[[a, b]] | spans the answer depends on (oracle segments, grounding rewards) |
| cited_spans | list[[a, b]] | spans the response cites ([] when there is no response) |
| split | str | sft / rl / eval |
| seed | int | the scene's seed (re-renders the clip: `sample_scene(seed)`) |
| scene_id | str | the clip's id |
| query | dict | structured question parameters the rule check re-solves ({} for LLM items) |
| teacher | str | "rule" or "llm:<model>" |
| route | str | why the item is in its split ("" for SFT; e.g. "cot:seg_misplaced", "sampled" for RL) |
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from echo_lite.config import SAMPLE_RATE

SPLITS = ("sft", "rl", "eval")
MANIFEST = "manifest.jsonl"
HF_DIR = "hf"
AUDIO_DIR = "audio"


class FormatError(ValueError):
    """A malformed item or manifest; the message names the file and line (or the item)."""


@dataclass(frozen=True)
class Item:
    id: str
    audio: str
    duration: float
    question: str
    choices: list[str]
    answer: str
    response: str
    qtype: str
    events: list[dict]
    decisive_spans: list[list[float]]
    cited_spans: list[list[float]]
    split: str
    seed: int
    scene_id: str = ""
    query: dict = field(default_factory=dict)
    teacher: str = "rule"
    route: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "item") -> "Item":
        if not isinstance(d, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise FormatError(f"{where}: missing field(s) {missing}")
        unknown = sorted(set(d) - names)
        if unknown:
            raise FormatError(f"{where}: unknown field(s) {unknown}")
        item = cls(**d)
        item.validate(where)
        return item

    def validate(self, where: str = "item") -> None:
        def bad(msg):
            raise FormatError(f"{where} ({self.id!r}): {msg}")

        if not isinstance(self.id, str) or not self.id:
            bad("id must be a non-empty string")
        for name in ("question", "answer", "response", "qtype", "scene_id", "teacher", "route"):
            if not isinstance(getattr(self, name), str):
                bad(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.events, list) or not all(isinstance(e, dict) for e in self.events):
            bad("events must be a list of event objects")
        if not isinstance(self.query, dict):
            bad("query must be an object")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            bad(f"seed {self.seed!r} must be an integer")
        check_relative(self.audio, where)
        if not isinstance(self.duration, (int, float)) or not self.duration > 0:
            bad(f"duration {self.duration!r} must be a positive number")
        if not isinstance(self.choices, list) or len(self.choices) < 2 or not all(isinstance(c, str) for c in self.choices):
            bad("choices must be a list of at least two strings")
        if self.answer not in self.choices:
            bad(f"answer {self.answer!r} is not one of the choices")
        if self.split not in SPLITS:
            bad(f"split {self.split!r} is not one of {SPLITS}")
        for name in ("decisive_spans", "cited_spans"):
            for span in getattr(self, name):
                if (not isinstance(span, (list, tuple)) or len(span) != 2
                        or not all(isinstance(x, (int, float)) for x in span) or not 0 <= span[0] < span[1]):
                    bad(f"{name} holds {span!r}, not a [start, end] pair with 0 <= start < end")
                if span[1] > self.duration + 1e-6:
                    bad(f"{name} holds {span!r}, which ends after the clip ({self.duration} s)")


def check_relative(rel: str, where: str = "item") -> str:
    """A manifest audio path: relative, and not escaping its root. Returns it unchanged."""
    if not isinstance(rel, str) or not rel:
        raise FormatError(f"{where}: audio path {rel!r} must be a non-empty string")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or ":" in p.parts[0]:
        raise FormatError(f"{where}: audio path {rel!r} is absolute; manifests hold paths relative to the data root")
    if ".." in p.parts:
        raise FormatError(f"{where}: audio path {rel!r} escapes the data root")
    return rel


def resolve_audio(root: str | Path, rel: str, where: str = "item") -> Path:
    """The file a manifest path points to, refusing anything outside `root` (symlinks included)."""
    check_relative(rel, where)
    root = Path(root).resolve()
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise FormatError(f"{where}: audio path {rel!r} resolves to {path}, outside the data root {root}")
    if not path.is_file():
        raise FormatError(f"{where}: audio file not found: {path}")
    return path


# --------------------------------------------------------------------------------------
# The JSONL manifest: append-only, a torn last line is dropped (it never finished).
# --------------------------------------------------------------------------------------
def repair_tail(path: str | Path) -> int:
    """Cut an unfinished last line (no trailing newline) left by a killed writer; returns bytes cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


def append_jsonl(path: str | Path, records: list[str]) -> None:
    """Append finished lines and make them durable before returning."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(r + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def read_manifest(path: str | Path, check_audio: bool = True) -> list[Item]:
    """Items of a split's manifest, each validated; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: manifest not found")
    items, seen = [], set()
    lines = path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if lineno == len(lines):  # no trailing newline: a torn line from a killed writer
            raise FormatError(f"{where}: unfinished last line (run the stage again to repair it)")
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            raise FormatError(f"{where}: not valid JSON ({err.msg})") from None
        item = Item.from_dict(d, where)
        if item.id in seen:
            raise FormatError(f"{where}: item id {item.id!r} appears twice")
        seen.add(item.id)
        if check_audio:
            resolve_audio(path.parent, item.audio, where)
        items.append(item)
    return items


def manifest_ids(path: str | Path) -> set[str]:
    """Ids already written to a manifest (after cutting a torn last line)."""
    path = Path(path)
    if not path.exists():
        return set()
    repair_tail(path)
    return {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


# --------------------------------------------------------------------------------------
# Hugging Face datasets.
# --------------------------------------------------------------------------------------
def hf_features(audio_as_path: bool = False):
    from datasets import Audio, Features, List, Value

    span = List(List(Value("float64")))
    # Audio.encode_example needs torchcodec even for a path; a string column cast to Audio does not
    audio = Value("string") if audio_as_path else Audio(sampling_rate=SAMPLE_RATE, decode=False)
    return Features({
        "id": Value("string"), "audio": audio, "duration": Value("float64"),
        "question": Value("string"), "choices": List(Value("string")), "answer": Value("string"),
        "response": Value("string"), "qtype": Value("string"), "events": Value("string"),
        "decisive_spans": span, "cited_spans": span, "split": Value("string"), "seed": Value("int64"),
        "scene_id": Value("string"), "query": Value("string"), "teacher": Value("string"), "route": Value("string"),
    })


def save_hf_split(split_dir: str | Path, progress: bool = False) -> Path:
    """Write `split_dir/hf` from the split's manifest (replaced atomically)."""
    import shutil

    import datasets
    from datasets import Dataset

    if not progress:
        datasets.disable_progress_bars()

    split_dir = Path(split_dir)
    items = read_manifest(split_dir / MANIFEST)
    rows = {f.name: [] for f in fields(Item)}
    for it in items:
        for name in rows:
            value = getattr(it, name)
            if name == "audio":
                value = str(resolve_audio(split_dir, it.audio))
            elif name in ("events", "query"):
                value = json.dumps(value, sort_keys=True)
            rows[name].append(value)
    ds = Dataset.from_dict(rows, features=hf_features(audio_as_path=True)).cast(hf_features())
    out, tmp = split_dir / HF_DIR, split_dir / (HF_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def load_hf_split(split_dir: str | Path):
    from datasets import load_from_disk

    path = Path(split_dir) / HF_DIR
    if not path.is_dir():
        raise FormatError(f"{path}: no saved dataset here")
    return load_from_disk(str(path))


def item_audio(row: dict) -> np.ndarray:
    """Decode an HF row's embedded audio (16 kHz mono float32)."""
    import io

    import soundfile as sf

    audio = row["audio"]
    if not audio or not audio.get("bytes"):
        raise FormatError(f"item {row.get('id')!r}: no embedded audio bytes")
    wav, sr = sf.read(io.BytesIO(audio["bytes"]), dtype="float32")
    if sr != SAMPLE_RATE:
        raise FormatError(f"item {row.get('id')!r}: audio is {sr} Hz, expected {SAMPLE_RATE}")
    return wav
