"""MMAU and MMAR: loaders for their metadata files, prediction files in the fields their
official scorers read, and scorers that follow the official matching rule.

Matching (MMAU's `string_match`, which MMAR's scorer reuses): the prediction's words must
include every word of the answer and none of the words that only the wrong options have.
Unlike the Echo authors' matcher there is no fallback to the first option, and unlike
MMAR's scorer a row without a prediction is not skipped: it counts as wrong, and both
are reported separately (`unmatched`, `missing`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MMAU_KEY = "model_prediction"  # MMAU's evaluation.py reads this key
MMAR_KEY = "answer_prediction"  # MMAR's scorer reads this key (older versions: model_prediction)
MMAU_TASKS = ("sound", "music", "speech")
MMAR_MODALITIES = ("sound", "music", "speech", "sound-music", "sound-speech", "music-speech", "sound-music-speech")


class BenchmarkFormatError(ValueError):
    """A benchmark or prediction file that does not have the expected shape; names file and row."""


@dataclass(frozen=True)
class BenchItem:
    id: str
    audio: Path  # resolved, inside the benchmark's root
    question: str
    choices: tuple[str, ...]
    answer: str
    group: str  # MMAU task / MMAR modality
    raw: dict = field(default_factory=dict, compare=False)


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line or index, row) pairs of a JSON list or a JSONL file."""
    if not path.exists():
        raise BenchmarkFormatError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise BenchmarkFormatError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchmarkFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    return list(enumerate(data))


def _item(path: Path, where, row: dict, root: Path, audio_key: str, group_key: str, groups: Sequence[str]) -> BenchItem:
    if not isinstance(row, dict):
        raise BenchmarkFormatError(f"{path}:{where}: expected an object, got {type(row).__name__}")
    for key in ("id", audio_key, "question", "choices", "answer", group_key):
        if key not in row:
            raise BenchmarkFormatError(f"{path}:{where}: item {row.get('id', '?')!r} lacks the field {key!r}")
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise BenchmarkFormatError(f"{path}:{where}: item {row['id']!r}: 'choices' must be a list of >= 2 strings")
    group = str(row[group_key]).lower()
    if group not in groups:
        raise BenchmarkFormatError(f"{path}:{where}: item {row['id']!r}: {group_key} {row[group_key]!r} not in {groups}")
    audio = (root / row[audio_key]).resolve()
    if root.resolve() not in audio.parents:
        raise BenchmarkFormatError(f"{path}:{where}: item {row['id']!r}: audio path {row[audio_key]!r} escapes {root}")
    return BenchItem(str(row["id"]), audio, row["question"], tuple(choices), row["answer"], group, row)


def load_mmau(path: str | Path, split: str = "test-mini") -> list[BenchItem]:
    """MMAU items from its JSON (`mmau-test-mini.json` / `mmau-test.json`, or a directory holding it).
    Audio paths (`audio_id`, e.g. `./test-mini-audios/x.wav`) are relative to the file's folder."""
    path = Path(path)
    if path.is_dir():
        path = path / f"mmau-{split}.json"
    return [_item(path, w, r, path.parent, "audio_id", "task", MMAU_TASKS) for w, r in _read_rows(path)]


def load_mmar(path: str | Path) -> list[BenchItem]:
    """MMAR items from `MMAR-meta.jsonl` (or `MMAR-meta.json`, or a directory holding either).
    Audio paths (`audio_path`) are relative to the file's folder."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("MMAR-meta.jsonl", "MMAR-meta.json") if (path / n).exists()),
                    path / "MMAR-meta.jsonl")
    return [_item(path, w, r, path.parent, "audio_path", "modality", MMAR_MODALITIES) for w, r in _read_rows(path)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """The official MMAU/MMAR rule: all answer words in the prediction, no word of a wrong option
    (words shared with the answer excepted)."""
    pred, ans = _words(prediction or ""), _words(answer)
    if not pred:
        return False
    wrong = set()
    for c in choices:
        cw = _words(c)
        if cw != ans:
            wrong |= cw - ans
    return ans <= pred and pred.isdisjoint(wrong)


def write_predictions(items: Sequence[BenchItem], predictions: dict[str, str | None], path: str | Path,
                      bench: str) -> Path:
    """The benchmark's own rows plus the prediction key its scorer reads (MMAR: both keys, since
    the scorer's key changed between versions). Written atomically."""
    keys = {"mmau": (MMAU_KEY,), "mmar": (MMAR_KEY, MMAU_KEY)}[bench]
    rows = [{**it.raw, **{k: predictions.get(it.id) for k in keys}} for it in items]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def _score(rows: list[tuple[object, dict]], key: str, group_key: str, groups: Sequence[str], path: Path) -> dict:
    total, correct = defaultdict(int), defaultdict(int)
    unmatched = missing = 0
    for where, row in rows:
        for k in ("answer", "choices", group_key):
            if k not in row:
                raise BenchmarkFormatError(f"{path}:{where}: row {row.get('id', '?')!r} lacks the field {k!r}")
        g = str(row[group_key]).lower()
        total[g] += 1
        pred = row.get(key)
        if pred is None or not str(pred).strip():
            missing += 1
            continue
        if string_match(row["answer"], str(pred), row["choices"]):
            correct[g] += 1
        elif not any(string_match(c, str(pred), row["choices"]) for c in row["choices"]):
            unmatched += 1
    per_group = {g: (100.0 * correct[g] / total[g]) for g in groups if total[g]}
    n = sum(total.values())
    return {"per_group": per_group, "counts": {g: total[g] for g in groups if total[g]},
            "micro": 100.0 * sum(correct.values()) / n if n else 0.0,
            "macro": sum(per_group.values()) / len(per_group) if per_group else 0.0,
            "n": n, "unmatched": unmatched, "missing": missing}


def score_mmau(path: str | Path) -> dict:
    """Accuracy (%) per task (sound/music/speech), `macro` = their mean (the paper's Avg), `micro`."""
    path = Path(path)
    return _score(_read_rows(path), MMAU_KEY, "task", MMAU_TASKS, path)


def score_mmar(path: str | Path) -> dict:
    """Accuracy (%) per modality group, `micro` over all items and `macro` = the unweighted mean of
    the 7 group accuracies (the paper's "Avg")."""
    path = Path(path)
    return _score(_read_rows(path), MMAR_KEY, "modality", MMAR_MODALITIES, path)
