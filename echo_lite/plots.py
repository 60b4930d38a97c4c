"""The course's figures and audio players, one look for every notebook.

- `plot_clip`: waveform + log-mel spectrogram, labelled events and shaded re-listened spans;
- `plot_curves`: training curves from a per-step log;
- `plot_bars`: a bar table (accuracy per condition) with an optional chance line;
- `audio_player` / `audio_players`: playable clips that stay in the saved notebook.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

from echo_lite.config import FRAMES_PER_SECOND, SAMPLE_RATE

SPAN_COLORS = ("#e4572e", "#29335c", "#f3a712", "#a8c686", "#669bbc", "#8e5572", "#4c956c", "#d1495b")


def _plt():
    import matplotlib.pyplot as plt  # inline in notebooks; Agg on headless machines

    return plt


KIND_COLORS = {"tone": "tab:blue", "chirp": "tab:orange", "knocks": "tab:brown", "noise": "tab:gray",
               "melody": "tab:green", "speech": "tab:purple"}


def _field(ev, key):
    return ev[key] if isinstance(ev, Mapping) else getattr(ev, key)


def plot_clip(wav: np.ndarray, events: Sequence = (), spans: Sequence[tuple[float, float]] = (),
              title: str = "", sr: int = SAMPLE_RATE, span_labels: Sequence[str] | None = None, n_mels: int = 128):
    """Waveform, the model's log-mel features and the event timeline on one time axis; `spans`
    (seconds, e.g. the re-listened ones) are shaded and labelled.

    `events`: dicts or objects with `label`, `onset`, `offset` (and optionally `kind`); overlapping
    events get lanes of their own.
    """
    from echo_lite.audio import AudioFeaturizer

    plt = _plt()
    dur = len(wav) / sr
    mel = AudioFeaturizer(n_mels)([wav])["input_features"][0].numpy()
    fig, (ax_w, ax_m, ax_t) = plt.subplots(3, 1, figsize=(12, 6), sharex=True,
                                           gridspec_kw={"height_ratios": [1, 2, 1.2]})
    step = max(1, len(wav) // 40000)  # plot at most ~40k points
    ax_w.plot(np.arange(0, len(wav), step) / sr, wav[::step], lw=0.3, color="k")
    ax_w.set_ylabel("wave")
    ax_m.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, mel.shape[1] / FRAMES_PER_SECOND, 0, n_mels))
    ax_m.set_ylabel("mel bin")
    lanes: list[float] = []
    for ev in events:
        on, off = float(_field(ev, "onset")), float(_field(ev, "offset"))
        lane = next((i for i, end in enumerate(lanes) if end <= on), None)
        if lane is None:
            lanes.append(off)
            lane = len(lanes) - 1
        lanes[lane] = off
        kind = _field(ev, "kind") if (isinstance(ev, Mapping) and "kind" in ev) or hasattr(ev, "kind") else ""
        ax_t.broken_barh([(on, off - on)], (lane + 0.1, 0.8), color=KIND_COLORS.get(kind, "tab:cyan"))
        ax_t.text(on + 0.05, lane + 0.5, str(_field(ev, "label")), va="center", fontsize=7, color="white", clip_on=True)
    ax_t.set_ylim(0, max(1, len(lanes)))
    ax_t.set_yticks([])
    ax_t.set_xlabel("seconds")
    ax_t.set_xlim(0, dur)
    for k, (a, b) in enumerate(spans):
        color = SPAN_COLORS[k % len(SPAN_COLORS)]
        for ax in (ax_w, ax_m, ax_t):
            ax.axvspan(a, b, color=color, alpha=0.3)
        label = span_labels[k] if span_labels else f"re-listen {k + 1}: {a:.1f}-{b:.1f} s"
        ax_w.text(a, ax_w.get_ylim()[1], label, fontsize=8, color=color, va="bottom")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(log: Sequence[Mapping], keys: Sequence[str], x: str = "step", title: str = "", smooth: int = 1):
    """One panel per key of a per-step log (a list of dicts); `smooth` = moving-average window."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
    xs = np.array([row.get(x, i) for i, row in enumerate(log)], dtype=float)
    for ax, key in zip(axes[0], keys):
        ys = np.array([row.get(key, np.nan) for row in log], dtype=float)
        ax.plot(xs, ys, color="#bbb", lw=1)
        if smooth > 1 and len(ys) >= smooth:
            ax.plot(xs[smooth - 1:], np.convolve(ys, np.ones(smooth) / smooth, mode="valid"), color="#29335c", lw=2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_bars(values: Mapping[str, float], title: str = "", ylabel: str = "accuracy", chance: float | None = None,
              errors: Mapping[str, float] | None = None):
    """A bar per entry, the value printed on top; a dashed line at `chance`."""
    plt = _plt()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names)), 3.2))
    yerr = [errors[n] for n in names] if errors else None
    bars = ax.bar(range(len(names)), [values[n] for n in names], yerr=yerr, color=SPAN_COLORS[: len(names)])
    for b, n in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{values[n]:.2f}", ha="center", va="bottom")
    if chance is not None:
        ax.axhline(chance, ls="--", color="#555", lw=1)
        ax.text(len(names) - 0.5, chance, "chance", ha="right", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def wav_bytes(wav: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1, 1), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_player(wav: np.ndarray, label: str = "", sr: int = SAMPLE_RATE):
    """A playable clip with a caption: an HTML5 audio element, kept in the saved notebook so
    readers can play it on the web too."""
    import base64

    from IPython.display import HTML

    b64 = base64.b64encode(wav_bytes(wav, sr)).decode()
    return HTML(f'<div style="display:inline-block;margin:4px"><div style="font-size:12px">{label}</div>'
                f'<audio controls src="data:audio/wav;base64,{b64}"></audio></div>')


def audio_players(clips: Sequence[np.ndarray], labels: Sequence[str], sr: int = SAMPLE_RATE):
    """Several clips side by side."""
    from IPython.display import HTML

    return HTML("".join(audio_player(c, lab, sr).data for c, lab in zip(clips, labels)))
