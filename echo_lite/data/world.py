"""The synthetic audio world: scenes of labelled events with exact onset/offset times.

A scene is a list of events on a 0.1 s grid (tones at named pitches, rising/falling
chirps, countable knock trains, broadband noise bursts, short melodies in a key and
tempo, spoken digits through espeak-ng when installed), rendered by numpy at 16 kHz.
Everything is a pure function of a seed, so the same scene and the same samples come
back on every run. The classes are chosen to be far apart in a 128-mel spectrogram
(TINY_MODEL_NOTES.md): a ~1M-parameter model can learn to tell them apart.

Times are kept in integer deciseconds while sampling, so onsets and offsets are exact
one-decimal numbers (`<seg>3.2, 4.0</seg>` names them without rounding).
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np

from echo_lite.audio import resample
from echo_lite.config import SAMPLE_RATE, DataSpec

log = logging.getLogger(__name__)

KINDS = ("tone", "chirp", "knocks", "noise", "melody", "speech")

# 8 pitches over ~2.3 octaves (C4..E6): at least 3 mel bins apart in Whisper's 128-mel scale.
TONE_PITCHES: dict[str, float] = {
    "C4": 261.63, "E4": 329.63, "G4": 392.00, "C5": 523.25,
    "E5": 659.26, "G5": 783.99, "C6": 1046.50, "E6": 1318.51,
}
CHIRP_LOW_HZ = (300.0, 500.0)  # a chirp sweeps between a low end drawn here ...
CHIRP_HIGH_HZ = (2000.0, 3200.0)  # ... and a high end drawn here, up or down
KNOCK_COUNTS = (2, 3, 4, 5, 6)
KNOCK_INTERVALS_DS = (2, 3, 4)  # 0.2-0.4 s between knocks: countable by ear and by eye
KNOCK_RESONANCE_HZ = 900.0
MELODY_BPMS = (80, 100, 120, 140, 160)
MELODY_KEYS: dict[str, tuple[str, tuple[int, ...]]] = {  # key -> (tonic, scale steps in semitones)
    "C major": ("C4", (0, 2, 4, 5, 7, 9, 11, 12)), "G major": ("G4", (0, 2, 4, 5, 7, 9, 11, 12)),
    "F major": ("F4", (0, 2, 4, 5, 7, 9, 11, 12)), "A minor": ("A4", (0, 2, 3, 5, 7, 8, 10, 12)),
    "D minor": ("D4", (0, 2, 3, 5, 7, 8, 10, 12)), "E minor": ("E4", (0, 2, 3, 5, 7, 8, 10, 12)),
}
MELODY_NOTES = (3, 8)  # notes per melody (fewer when the tempo would make it longer than 3 s)
SPEECH_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_VOICE, ESPEAK_RATE_WPM, ESPEAK_SR = "en", 150, 22_050

GAIN = {"tone": 0.30, "chirp": 0.30, "knocks": 0.55, "noise": 0.12, "melody": 0.30, "speech": 0.50}
RAMP_S = 0.01  # fade in/out of every event: no clicks at the edges (knocks are clicks on purpose)

_NOTE_INDEX = {"C": 0, "C#": 1, "D": 2, "D#": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "G#": 8, "A": 9, "A#": 10, "B": 11}
_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


class WorldError(ValueError):
    """A scene or event that cannot be built or read; the message names what is wrong."""


def note_hz(name: str) -> float:
    """`note_hz('A4')` -> 440.0 (equal temperament)."""
    pitch, octave = name[:-1], int(name[-1])
    if pitch not in _NOTE_INDEX:
        raise WorldError(f"note {name!r}: unknown pitch name {pitch!r}")
    midi = 12 * (octave + 1) + _NOTE_INDEX[pitch]
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _note_name(midi: int) -> str:
    return f"{_NAMES[midi % 12]}{midi // 12 - 1}"


def _ds(x: float) -> int:
    return int(round(x * 10))


def _s(ds: int) -> float:
    return round(ds / 10, 1)


@dataclass(frozen=True)
class Event:
    kind: str  # "tone" | "chirp" | "knocks" | "noise" | "melody" | "speech" (adapters add "sound", "chord")
    label: str  # short human text used in answers, e.g. "C5 tone", "rising chirp", "3 knocks"
    onset: float  # seconds, exact, on a 0.1 s grid (spans are written with one decimal)
    offset: float
    attrs: dict = field(default_factory=dict)  # kind-specific: pitch, direction, count, key, bpm, word, ...

    def __post_init__(self):
        if not (0 <= self.onset < self.offset):
            raise WorldError(f"event {self.label!r}: need 0 <= onset < offset, got ({self.onset}, {self.offset})")

    @property
    def span(self) -> tuple[float, float]:
        return (self.onset, self.offset)

    @property
    def duration(self) -> float:
        return round(self.offset - self.onset, 3)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "onset": self.onset, "offset": self.offset,
                "attrs": dict(self.attrs)}

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        try:
            return cls(str(d["kind"]), str(d["label"]), float(d["onset"]), float(d["offset"]),
                       dict(d.get("attrs") or {}))
        except KeyError as err:
            raise WorldError(f"event {d!r}: missing field {err}") from None


@dataclass(frozen=True)
class Scene:
    scene_id: str
    duration: float
    events: tuple[Event, ...]  # sorted by onset
    seed: int
    meta: dict = field(default_factory=dict)  # real sources: audio path, caption, source name

    def __post_init__(self):
        for e in self.events:
            if e.offset > self.duration + 1e-6:
                raise WorldError(f"scene {self.scene_id}: event {e.label!r} ends at {e.offset} s, "
                                 f"after the clip ({self.duration} s)")
        if any(a.onset > b.onset for a, b in zip(self.events, self.events[1:], strict=False)):
            raise WorldError(f"scene {self.scene_id}: events are not sorted by onset")

    def to_dict(self) -> dict:
        d = {"scene_id": self.scene_id, "duration": self.duration, "seed": self.seed,
             "events": [e.to_dict() for e in self.events]}
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        try:
            events = tuple(sorted((Event.from_dict(e) for e in d["events"]), key=lambda e: (e.onset, e.offset)))
            return cls(str(d["scene_id"]), float(d["duration"]), events, int(d.get("seed", 0)),
                       dict(d.get("meta") or {}))
        except KeyError as err:
            raise WorldError(f"scene {d.get('scene_id', '?')!r}: missing field {err}") from None

    def events_at(self, t: float) -> list[Event]:
        """Events sounding at time `t` (onset <= t < offset)."""
        return [e for e in self.events if e.onset <= t < e.offset]

    def labels(self) -> list[str]:
        """Distinct event labels, in order of first onset."""
        return list(dict.fromkeys(e.label for e in self.events))


def label_vocabulary() -> list[str]:
    """Every label the synthetic world can produce (used to spot events cited but absent)."""
    labels = [f"{p} tone" for p in TONE_PITCHES] + ["rising chirp", "falling chirp", "noise burst"]
    labels += [f"{c} knocks" for c in KNOCK_COUNTS] + [f"{k} melody" for k in MELODY_KEYS]
    labels += [f"spoken {w}" for w in SPEECH_WORDS]
    return labels


# --------------------------------------------------------------------------------------
# Speech through espeak-ng (optional).
# --------------------------------------------------------------------------------------
def speech_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=1)
def _log_speech_skipped() -> None:
    log.warning("espeak-ng is not installed: speech events are skipped (apt-get install espeak-ng)")


@functools.lru_cache(maxsize=64)
def spoken_word(word: str) -> np.ndarray:
    """`word` spoken by espeak-ng at 16 kHz, silence trimmed, peak-normalised (cached per word)."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise WorldError(f"cannot speak {word!r}: espeak-ng is not installed")
    out = subprocess.run([exe, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_RATE_WPM), "--stdout", word],
                         capture_output=True, check=True, timeout=30)
    wav, sr = sf.read(io.BytesIO(out.stdout), dtype="float32")
    wav = resample(wav, int(sr), SAMPLE_RATE, name=f"espeak-ng {word!r}")
    loud = np.flatnonzero(np.abs(wav) > 0.02 * np.abs(wav).max())
    wav = wav[loud[0]: loud[-1] + 1]
    return (wav / np.abs(wav).max()).astype(np.float32)


# --------------------------------------------------------------------------------------
# Sampling a scene.
# --------------------------------------------------------------------------------------
def _weights(kinds, spec: DataSpec) -> tuple[list[str], np.ndarray]:
    table = dict(spec.kind_weights)
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise WorldError(f"unknown event kind(s) {unknown}; choose from {list(KINDS)}")
    if "speech" in kinds and not speech_available():
        _log_speech_skipped()
        kinds = [k for k in kinds if k != "speech"]
    if not kinds:
        raise WorldError("no event kind left to sample (speech needs espeak-ng)")
    w = np.array([table.get(k, 1.0 / len(KINDS)) for k in kinds], dtype=float)
    return kinds, w / w.sum()


def _sample_event_body(kind: str, rng: np.random.Generator, spec: DataSpec) -> tuple[int, str, dict]:
    """(length in deciseconds, label, attrs) of one event of `kind`: all but where it sits."""
    lo, hi = _ds(spec.event_seconds[0]), _ds(spec.event_seconds[1])
    if kind == "tone":
        name = str(rng.choice(list(TONE_PITCHES)))
        return int(rng.integers(lo, hi + 1)), f"{name} tone", {"pitch": name, "hz": TONE_PITCHES[name]}
    if kind == "chirp":
        direction = str(rng.choice(["rising", "falling"]))
        f_lo, f_hi = float(rng.uniform(*CHIRP_LOW_HZ)), float(rng.uniform(*CHIRP_HIGH_HZ))
        f0, f1 = (f_lo, f_hi) if direction == "rising" else (f_hi, f_lo)
        length = int(rng.integers(max(lo, 5), min(hi, 20) + 1))
        return length, f"{direction} chirp", {"direction": direction, "f_start": round(f0, 1), "f_end": round(f1, 1)}
    if kind == "knocks":
        interval = int(rng.choice(KNOCK_INTERVALS_DS))
        counts = [c for c in KNOCK_COUNTS if lo <= c * interval <= hi]
        count = int(rng.choice(counts))
        return count * interval, f"{count} knocks", {"count": count, "interval": _s(interval)}
    if kind == "noise":
        return int(rng.integers(lo, min(hi, 20) + 1)), "noise burst", {"color": "white"}
    if kind == "melody":
        key = str(rng.choice(list(MELODY_KEYS)))
        bpm = int(rng.choice(MELODY_BPMS))
        beat = 60.0 / bpm
        n_max = min(MELODY_NOTES[1], int(spec.event_seconds[1] / beat))
        n = int(rng.integers(MELODY_NOTES[0], n_max + 1))
        tonic, steps = MELODY_KEYS[key]
        degree = int(rng.integers(0, 3))
        degrees = [degree]
        for _ in range(n - 1):  # a stepwise walk over the scale: sounds like a tune
            degree = int(np.clip(degree + rng.choice([-2, -1, 1, 1, 2]), 0, len(steps) - 1))
            degrees.append(degree)
        base = 12 * (int(tonic[-1]) + 1) + _NOTE_INDEX[tonic[:-1]]
        notes = [_note_name(base + steps[d]) for d in degrees]
        length = int(np.ceil(n * beat * 10 - 1e-9))
        return length, f"{key} melody", {"key": key, "bpm": bpm, "notes": notes}
    if kind == "speech":
        word = str(rng.choice(SPEECH_WORDS))
        length = int(np.ceil(len(spoken_word(word)) / SAMPLE_RATE * 10 - 1e-9))
        return max(length, lo), f"spoken {word}", {"word": word}
    raise WorldError(f"unknown event kind {kind!r}")


def sample_scene(seed: int, duration: tuple[float, float] = DataSpec.clip_seconds, kinds=None,
                 n_events: int | None = None, spec: DataSpec | None = None, overlap_prob: float | None = None,
                 scene_id: str | None = None) -> Scene:
    """A random scene, a pure function of its arguments.

    duration: (min, max) seconds, or a single number for a fixed length.
    kinds: event kinds to draw from (default: all; speech only with espeak-ng).
    n_events: how many events (default: drawn from the duration and `spec.events_per_second`);
      fewer come back when they cannot fit with `spec.min_gap_s` between them.
    overlap_prob: chance of one extra event laid over another (default `spec.overlap_prob`).
    """
    spec = spec or DataSpec()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE4E]))
    kinds, weights = _weights(kinds or KINDS, spec)
    if isinstance(duration, (int, float)):
        total = _ds(duration)
    else:
        lo, hi = _ds(duration[0]), _ds(duration[1])
        if not 0 < lo <= hi:
            raise WorldError(f"duration range {duration}: need 0 < min <= max")
        total = int(rng.integers(lo, hi + 1))
    if total < _ds(spec.event_seconds[0]) + 2:
        raise WorldError(f"duration {_s(total)} s is too short for an event")
    if n_events is None:
        rate = rng.uniform(*spec.events_per_second)
        n_events = int(np.clip(round(total / 10 * rate), 1, spec.max_events))
    if n_events < 1:
        raise WorldError(f"n_events must be >= 1, got {n_events}")
    drawn = [str(rng.choice(kinds, p=weights)) for _ in range(n_events)]
    bodies = [(kind, *_sample_event_body(kind, rng, spec)) for kind in drawn]
    gap = _ds(spec.min_gap_s)
    while len(bodies) > 1 and sum(b[1] for b in bodies) + gap * (len(bodies) + 1) > total:
        bodies.pop()  # too many for the clip: keep the ones that fit
    if bodies[0][1] + 2 > total:  # a single event longer than the clip
        kind, length, label, attrs = bodies[0]
        if kind not in ("tone", "chirp", "noise"):  # only these can be shortened without changing their label
            raise WorldError(f"duration {_s(total)} s cannot hold a {label}")
        bodies = [(kind, total - 2, label, attrs)]
    free = total - sum(b[1] for b in bodies) - gap * (len(bodies) - 1)
    slack = rng.multinomial(free, rng.dirichlet(np.ones(len(bodies) + 1)))  # silence before/between/after
    events, t = [], int(slack[0])
    for i, (kind, length, label, attrs) in enumerate(bodies):
        events.append(Event(kind, label, _s(t), _s(t + length), attrs))
        t += length + gap + int(slack[i + 1])
    p_overlap = spec.overlap_prob if overlap_prob is None else overlap_prob
    if rng.random() < p_overlap:
        extra = _overlapping_event(events, kinds, rng, spec)
        if extra is not None:
            events.append(extra)
    events.sort(key=lambda e: (e.onset, e.offset))
    return Scene(scene_id or f"scene-{int(seed):08d}", _s(total), tuple(events), int(seed))


def _overlapping_event(events: list[Event], kinds: list[str], rng: np.random.Generator,
                       spec: DataSpec) -> Event | None:
    """One extra event inside a long-enough host, so it overlaps that host only."""
    min_len = _ds(spec.event_seconds[0])
    hosts = [e for e in events if _ds(e.duration) >= 2 * min_len + 2]
    layered = [k for k in ("noise", "knocks", "tone") if k in kinds]
    if not hosts or not layered:
        return None
    host = hosts[int(rng.integers(len(hosts)))]
    options = [k for k in layered if k != host.kind] or layered
    kind = str(rng.choice(options))
    for _ in range(8):
        length, label, attrs = _sample_event_body(kind, rng, spec)
        if length <= _ds(host.duration) - 2 and not (kind == "tone" and label == host.label):
            start = _ds(host.onset) + int(rng.integers(1, _ds(host.duration) - length + 1))
            return Event(kind, label, _s(start), _s(start + length), attrs)
    return None


# --------------------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------------------
def _ramp(wav: np.ndarray, ramp_s: float = RAMP_S) -> np.ndarray:
    n = min(int(ramp_s * SAMPLE_RATE), len(wav) // 2)
    if n > 0:
        r = np.linspace(0.0, 1.0, n, dtype=np.float32)
        wav[:n] *= r
        wav[-n:] *= r[::-1]
    return wav


def _render_knocks(n: int, count: int, interval: float, rng: np.random.Generator) -> np.ndarray:
    knock_n = int(0.06 * SAMPLE_RATE)
    t = np.arange(knock_n) / SAMPLE_RATE
    out = np.zeros(n, dtype=np.float32)
    for k in range(count):
        click = rng.standard_normal(knock_n) * np.exp(-t / 0.003)  # broadband attack: a vertical stripe
        body = np.sin(2 * np.pi * KNOCK_RESONANCE_HZ * t) * np.exp(-t / 0.015)  # short wooden ring
        start = int(round(k * interval * SAMPLE_RATE))
        piece = (0.6 * click + body)[: n - start]
        out[start:start + len(piece)] += piece
    return out / max(1e-9, float(np.abs(out).max()))


def _render_melody(n: int, bpm: int, notes: list[str]) -> np.ndarray:
    beat_n = int(round(60.0 / bpm * SAMPLE_RATE))
    t = np.arange(beat_n) / SAMPLE_RATE
    env = np.exp(-t / (0.35 * beat_n / SAMPLE_RATE)) * np.minimum(1.0, t / 0.005)  # plucked: attack, decay
    out = np.zeros(n, dtype=np.float32)
    for k, name in enumerate(notes):
        f = note_hz(name)
        note = (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t) + 0.3 * np.sin(6 * np.pi * f * t)) * env
        start = k * beat_n
        piece = note[: max(0, n - start)]
        out[start:start + len(piece)] = piece
    return out / max(1e-9, float(np.abs(out).max()))


def render_event(event: Event, seed: int = 0) -> np.ndarray:
    """The event alone: `event.duration` seconds of 16 kHz mono float32 (deterministic given `seed`)."""
    n = int(round((event.offset - event.onset) * SAMPLE_RATE))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE7E]))
    a, t = event.attrs, np.arange(n) / SAMPLE_RATE
    if event.kind == "tone":
        wav = np.sin(2 * np.pi * float(a["hz"]) * t)
    elif event.kind == "chirp":  # exponential sweep: equal time per octave, a straight line on the mel axis
        f0, f1, dur = float(a["f_start"]), float(a["f_end"]), n / SAMPLE_RATE
        k = np.log(f1 / f0) / dur
        wav = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1.0) / k)
    elif event.kind == "knocks":
        wav = _render_knocks(n, int(a["count"]), float(a["interval"]), rng)
    elif event.kind == "noise":
        wav = rng.standard_normal(n)
    elif event.kind == "melody":
        wav = _render_melody(n, int(a["bpm"]), list(a["notes"]))
    elif event.kind == "speech":
        if not speech_available():
            _log_speech_skipped()
            return np.zeros(n, dtype=np.float32)
        word = spoken_word(str(a["word"]))[:n]
        wav = np.zeros(n, dtype=np.float32)
        wav[:len(word)] = word
    else:
        raise WorldError(f"event {event.label!r}: kind {event.kind!r} cannot be rendered")
    wav = np.asarray(wav, dtype=np.float32) * GAIN[event.kind]
    return wav if event.kind == "knocks" else _ramp(wav)


def render_scene(scene: Scene, spec: DataSpec | None = None) -> np.ndarray:
    """The whole clip: 16 kHz mono float32, deterministic given the scene."""
    spec = spec or DataSpec()
    n = int(round(scene.duration * SAMPLE_RATE))
    rng = np.random.default_rng(np.random.SeedSequence([scene.seed, 0xB6]))
    wav = (spec.background_noise_rms * rng.standard_normal(n)).astype(np.float32)
    for i, e in enumerate(scene.events):
        piece = render_event(e, seed=scene.seed * 1000 + i)
        start = int(round(e.onset * SAMPLE_RATE))
        wav[start:start + len(piece)] += piece[: n - start]
    return np.clip(wav, -1.0, 1.0)
