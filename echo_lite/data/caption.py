"""The caption step: a text "simulation" of a clip for the QA teacher (ECHO_METHOD.md section 3).

The paper asks Qwen2.5-Omni for three views of each clip - a general description, the
speech content, the musical elements - and merges them with the event timestamps and
the duration. `MetadataCaptioner` writes the three views from the scene's metadata
(exact, offline); `ThinkerCaptioner` asks a thinker model (Qwen2.5-Omni on a GPU, or
any preset's model) for them. Either way the timeline and duration come from metadata.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from echo_lite.data.world import Event, Scene

# The paper's three views, as questions to a captioning model.
VIEW_PROMPTS = {
    "description": "Describe this audio clip in general: which sounds are there and how do they change over time?",
    "speech": "What is said in this audio clip? Write the spoken words, or 'none' if nobody speaks.",
    "music": "Describe the musical elements of this clip (instruments, key, tempo, melody), or 'none' if there is no music.",
}
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


@dataclass(frozen=True)
class Caption:
    description: str
    speech: str
    music: str
    timeline: tuple[tuple[float, float, str], ...]  # (onset, offset, label), sorted
    duration: float
    extra: dict = field(default_factory=dict)

    def simulation(self) -> str:
        """The text the teacher reads instead of the audio."""
        lines = [f"Duration: {self.duration:.1f} s", f"Description: {self.description}",
                 f"Speech: {self.speech}", f"Music: {self.music}", "Events (start-end in seconds: sound):"]
        lines += [f"- {a:.1f}-{b:.1f}: {label}" for a, b, label in self.timeline]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"description": self.description, "speech": self.speech, "music": self.music,
                "timeline": [list(t) for t in self.timeline], "duration": self.duration, "extra": dict(self.extra)}


class Captioner(Protocol):
    name: str

    def __call__(self, scene: Scene, wav: np.ndarray | None = None) -> Caption: ...


def timeline(scene: Scene) -> tuple[tuple[float, float, str], ...]:
    return tuple((e.onset, e.offset, e.label) for e in scene.events)


def _count(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "es" if word.endswith(("sh", "ch", "s")) else word + "s"


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].upper() in "AEFHILMNORSX" and phrase[1:2] in (" ", "") or phrase[:1] in "aeiou"
            else "a ") + phrase


_KIND_WORDS = {"tone": "steady tone", "chirp": "chirp", "knocks": "knock train", "noise": "noise burst",
               "melody": "short melody", "speech": "spoken word", "chord": "chord", "sound": "sound"}


def describe(scene: Scene) -> str:
    """A general description written from metadata."""
    if scene.meta.get("caption"):
        return str(scene.meta["caption"])
    kinds = Counter(e.kind for e in scene.events if e.kind != "music")
    if not kinds:
        return f"A {scene.duration:.1f} s clip of near silence."
    parts = [f"{_count(n)} {_plural(_KIND_WORDS.get(k, k), n)}" for k, n in kinds.most_common()]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    first, last = scene.events[0], scene.events[-1]
    overlap = any(b.onset < a.offset for i, a in enumerate(scene.events) for b in scene.events[i + 1:])
    return (f"A {scene.duration:.1f} s clip with {listed} over quiet background noise; it begins with the "
            f"{first.label} and ends with the {last.label}" + ("; two sounds overlap." if overlap else "."))


def speech_view(events: list[Event]) -> str:
    words = [str(e.attrs["word"]) for e in events if e.kind == "speech" and "word" in e.attrs]
    speakers = [e for e in events if e.kind == "sound" and "speech" in e.label]
    if words:
        return "A synthetic voice says " + ", ".join(f'"{w}"' for w in words) + "."
    if speakers:
        return f"Speech is heard ({len(speakers)} segment(s)); the words are not transcribed."
    return "none"


def music_view(events: list[Event]) -> str:
    parts = []
    for e in events:
        a = e.attrs
        if e.kind == "melody":
            parts.append(f"{_a(a['key'])} melody at {a['bpm']} bpm ({' '.join(a['notes'])})")
        elif e.kind == "music":
            bits = [a.get("caption") or "music"]
            if a.get("key"):
                bits.append(f"key {a['key']}")
            if a.get("bpm"):
                bits.append(f"{float(a['bpm']):.0f} bpm")
            parts.append(", ".join(bits))
        elif e.kind == "chord":
            parts.append(f"{a.get('chord', e.label)} chord from {e.onset:.1f} s")
    return "; ".join(parts) + "." if parts else "none"


class MetadataCaptioner:
    """The three views written from metadata: exact, offline, deterministic."""

    name = "metadata"

    def __call__(self, scene: Scene, wav: np.ndarray | None = None) -> Caption:
        events = list(scene.events)
        return Caption(describe(scene), speech_view(events), music_view(events), timeline(scene), scene.duration)


class ThinkerCaptioner:
    """The three views from a thinker model listening to the clip (Qwen2.5-Omni in the paper).

    `lm` is an `echo_lite.model.LoadedModel`; each view is one greedy generation. The
    timeline and the duration still come from the metadata, as in the paper.
    """

    name = "thinker"

    def __init__(self, lm, max_new_tokens: int = 96, prompts: dict[str, str] | None = None):
        from echo_lite.audio import AudioFeaturizer

        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.prompts = dict(prompts or VIEW_PROMPTS)
        self.featurizer = AudioFeaturizer(lm.n_mels)

    def _ask(self, wav: np.ndarray, question: str) -> str:
        import torch

        from echo_lite.audio import audio_token_count
        from echo_lite.prompts import build_prompt

        tok = self.lm.tokenizer
        prompt = build_prompt(question, None, [audio_token_count(len(wav))], instruction=None)
        enc = tok(prompt, return_tensors="pt").to(self.lm.device)
        feats = {k: v.to(self.lm.device) for k, v in self.featurizer([wav]).items()}
        with torch.no_grad():
            out = self.lm.model.generate(**enc, **feats, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         suppress_tokens=self.lm.placeholder_ids())
        return tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True).strip()

    def __call__(self, scene: Scene, wav: np.ndarray | None = None) -> Caption:
        if wav is None:
            raise ValueError(f"scene {scene.scene_id}: the thinker captioner needs the clip's audio")
        views = {k: self._ask(wav, q) for k, q in self.prompts.items()}
        return Caption(views["description"], views["speech"], views["music"], timeline(scene), scene.duration,
                       {"captioner": self.name})
