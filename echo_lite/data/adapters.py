"""Read the paper's real metadata formats into the world's `Scene`/`Event` objects.

- AudioSet-Strong: a TSV with a header `segment_id  start_time_seconds  end_time_seconds
  label` (one row per event; `label` is an ontology id such as `/m/09x0r`), and a
  label-name map `mid_to_display_name.tsv` (`/m/09x0r<TAB>Speech`, no header).
- MusicBench: JSON lines (one object per clip) with `location`, `main_caption`, `key`,
  `bpm`, `chords` + `chords_time`, `beats` (`[[beat times], [beat positions]]`), and the
  control sentences `prompt_*`.

Times are rounded to the world's 0.1 s grid (spans are written with one decimal);
the exact times stay in `attrs`. A malformed row is an error naming the file and line;
an audio file that is asked for and missing is an error naming it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from echo_lite.data.world import Event, Scene

AUDIOSET_COLUMNS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_CLIP_S = 10.0  # both sources cut 10 s clips


class AdapterError(ValueError):
    """Malformed metadata; the message starts with `file:line`."""


def _grid(x: float) -> float:
    return round(round(x * 10) / 10, 1)


def _number(value, what: str, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise AdapterError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise AdapterError(f"{where}: {what} {value!r} is not finite")
    return x


def _find_audio(audio_root: Path | None, stem: str, where: str, require: bool) -> tuple[str | None, float | None]:
    """(path, duration) of the clip's audio, if `audio_root` is given."""
    if audio_root is None:
        return None, None
    candidates = [audio_root / stem] if Path(stem).suffix else [audio_root / (stem + e) for e in AUDIO_EXTENSIONS]
    for path in candidates:
        if path.is_file():
            import soundfile as sf

            try:
                info = sf.info(str(path))
                return str(path), info.frames / info.samplerate
            except Exception:  # unreadable by libsndfile (e.g. mp3 on old builds): duration unknown
                return str(path), None
    if require:
        raise AdapterError(f"{where}: audio file not found: {candidates[0]}"
                           + (f" (also tried {', '.join(p.suffix for p in candidates[1:])})" if len(candidates) > 1 else ""))
    return None, None


def _clip_events(raw: list[tuple[float, float, str, str, dict]], duration: float) -> list[Event]:
    events = []
    for onset, offset, kind, label, attrs in raw:
        on, off = _grid(max(0.0, onset)), _grid(min(offset, duration))
        if off <= on:  # shorter than the grid step: keep it as one 0.1 s cell
            off = round(on + 0.1, 1)
        if off > duration:
            continue
        events.append(Event(kind, label, on, off, {**attrs, "onset_exact": onset, "offset_exact": offset}))
    return sorted(events, key=lambda e: (e.onset, e.offset))


# --------------------------------------------------------------------------------------
# AudioSet-Strong
# --------------------------------------------------------------------------------------
def read_label_map(path: str | Path) -> dict[str, str]:
    """`mid_to_display_name.tsv` (or any `id<TAB>name` file, with or without a header) -> {id: name}."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: label map not found")
    names: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise AdapterError(f"{path}:{lineno}: expected 2 tab-separated fields (id, name), got {len(row)}")
            mid, name = row[0].strip(), row[1].strip()
            if lineno == 1 and mid.lower() in ("mid", "id", "label"):
                continue  # a header
            if not mid or not name:
                raise AdapterError(f"{path}:{lineno}: empty id or name")
            names[mid] = name
    return names


def read_audioset_strong(tsv: str | Path, label_map: dict[str, str] | str | Path, audio_root: str | Path | None = None,
                         require_audio: bool = True, clip_duration: float = DEFAULT_CLIP_S) -> list[Scene]:
    """AudioSet-Strong TSV -> one Scene per segment id (events sorted; kind "sound").

    With `audio_root`, each segment's audio (`<segment_id>.wav|flac|...`) is located
    and its duration read; a missing file is an error naming it (or skipped when
    `require_audio=False`).
    """
    tsv = Path(tsv)
    if not tsv.is_file():
        raise AdapterError(f"{tsv}: AudioSet-Strong TSV not found")
    names = label_map if isinstance(label_map, dict) else read_label_map(label_map)
    root = Path(audio_root) if audio_root is not None else None
    rows: dict[str, list] = {}
    first_line: dict[str, int] = {}
    with tsv.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != AUDIOSET_COLUMNS:
            raise AdapterError(f"{tsv}:1: expected the header {'<TAB>'.join(AUDIOSET_COLUMNS)}, got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            where = f"{tsv}:{lineno}"
            if not row or not "".join(row).strip():
                continue
            if len(row) != 4:
                raise AdapterError(f"{where}: expected 4 tab-separated fields, got {len(row)}")
            seg, start, end, mid = (c.strip() for c in row)
            if not seg:
                raise AdapterError(f"{where}: empty segment_id")
            onset = _number(start, "start_time_seconds", where)
            offset = _number(end, "end_time_seconds", where)
            if onset < 0 or offset <= onset:
                raise AdapterError(f"{where}: need 0 <= start < end, got ({onset}, {offset})")
            if mid not in names:
                raise AdapterError(f"{where}: label {mid!r} is not in the label map")
            rows.setdefault(seg, []).append((onset, offset, "sound", names[mid].lower(), {"mid": mid}))
            first_line.setdefault(seg, lineno)
    scenes = []
    for seg, raw in rows.items():
        path, dur = _find_audio(root, seg, f"{tsv}:{first_line[seg]}", require_audio)
        if root is not None and path is None:
            continue
        duration = _grid(dur) if dur else clip_duration
        meta = {"source": "audioset_strong", "segment_id": seg}
        if path:
            meta["audio_path"] = path
        scenes.append(Scene(seg, duration, tuple(_clip_events(raw, duration)), 0, meta))
    return scenes


# --------------------------------------------------------------------------------------
# MusicBench
# --------------------------------------------------------------------------------------
def _key_text(value, where: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(v.strip() for v in value if v.strip())
    raise AdapterError(f"{where}: key {value!r} is neither a string nor a list of strings")


def _musicbench_scene(obj: dict, where: str, root: Path | None, require_audio: bool, clip_duration: float) -> Scene | None:
    if not isinstance(obj, dict):
        raise AdapterError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for name in ("location", "chords", "chords_time"):
        if name not in obj:
            raise AdapterError(f"{where}: missing field {name!r}")
    location = obj["location"]
    if not isinstance(location, str) or not location.strip():
        raise AdapterError(f"{where}: location {location!r} is not a file name")
    chords, times = obj["chords"], obj["chords_time"]
    if not isinstance(chords, list) or not isinstance(times, list) or len(chords) != len(times):
        raise AdapterError(f"{where}: chords and chords_time must be lists of equal length")
    if any(not isinstance(c, str) for c in chords):
        raise AdapterError(f"{where}: chords must be strings, got {chords!r}")
    times = [_number(t, "chords_time", where) for t in times]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        raise AdapterError(f"{where}: chords_time is not sorted: {times}")
    bpm = _number(obj["bpm"], "bpm", where) if obj.get("bpm") is not None else None
    key = _key_text(obj["key"], where) if obj.get("key") is not None else ""
    beats = obj.get("beats") or [[], []]
    if not (isinstance(beats, list) and len(beats) == 2 and all(isinstance(b, list) for b in beats)):
        raise AdapterError(f"{where}: beats must be [[beat times], [beat positions]]")
    beat_times = [_number(b, "beat time", where) for b in beats[0]]
    path, dur = _find_audio(root, location, where, require_audio)
    if root is not None and path is None:
        return None
    duration = _grid(dur) if dur else clip_duration
    raw = []
    for i, (chord, t) in enumerate(zip(chords, times, strict=True)):
        end = times[i + 1] if i + 1 < len(times) else duration
        if t >= duration or end <= t:
            continue
        raw.append((t, end, "chord", f"{chord} chord", {"chord": chord}))
    music = {"key": key, "bpm": bpm, "beats": beat_times, "beat_positions": list(beats[1]),
             "caption": str(obj.get("main_caption") or "")}
    raw.insert(0, (0.0, duration, "music", f"{key} music".strip() if key else "music", music))
    meta = {"source": "musicbench", "location": location, "caption": music["caption"],
            "controls": [str(obj[k]) for k in ("prompt_ch", "prompt_bt", "prompt_bpm", "prompt_key") if obj.get(k)]}
    if path:
        meta["audio_path"] = path
    return Scene(Path(location).stem, duration, tuple(_clip_events(raw, duration)), 0, meta)


def read_musicbench(path: str | Path, audio_root: str | Path | None = None, require_audio: bool = True,
                    clip_duration: float = DEFAULT_CLIP_S) -> list[Scene]:
    """MusicBench JSON (one object per line, or one JSON array) -> one Scene per clip.

    Events: one "music" event over the clip (key, bpm, beat times, caption in attrs)
    and one "chord" event per chord change.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: MusicBench JSON not found")
    root = Path(audio_root) if audio_root is not None else None
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = [(f"{path}:item {i}", obj) for i, obj in enumerate(json.loads(text))]
        except json.JSONDecodeError as err:
            raise AdapterError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise AdapterError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    scenes = [_musicbench_scene(obj, where, root, require_audio, clip_duration) for where, obj in rows]
    return [s for s in scenes if s is not None]
