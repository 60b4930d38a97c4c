"""Figures of the data side: a scene (waveform, mel spectrogram, labelled timeline), the filter
funnel, the question-type mix and the clip lengths (used by notebooks/02_data_synthesis)."""

from __future__ import annotations

import numpy as np

from echo_lite.config import FRAMES_PER_SECOND, SAMPLE_RATE
from echo_lite.data.world import KINDS, Scene, render_scene

KIND_COLORS = dict(zip(KINDS, ("tab:blue", "tab:orange", "tab:brown", "tab:gray", "tab:green", "tab:purple"),
                       strict=True))


def plot_scene(scene: Scene, wav: np.ndarray | None = None, spans=(), n_mels: int = 128, title: str | None = None):
    """Waveform, log-mel spectrogram and event timeline on one time axis; `spans` are highlighted."""
    import matplotlib.pyplot as plt

    from echo_lite.audio import AudioFeaturizer

    wav = render_scene(scene) if wav is None else wav
    mel = AudioFeaturizer(n_mels)([wav])["input_features"][0].numpy()
    fig, (ax_w, ax_m, ax_t) = plt.subplots(3, 1, figsize=(12, 6), sharex=True,
                                           gridspec_kw={"height_ratios": [1, 2, 1.2]})
    t = np.arange(len(wav)) / SAMPLE_RATE
    ax_w.plot(t, wav, lw=0.3, color="k")
    ax_w.set_ylabel("wave")
    ax_m.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                extent=(0, mel.shape[1] / FRAMES_PER_SECOND, 0, n_mels))
    ax_m.set_ylabel("mel bin")
    lanes: list[float] = []
    for e in scene.events:
        lane = next((i for i, end in enumerate(lanes) if end <= e.onset), None)  # overlaps get a lane of their own
        if lane is None:
            lanes.append(e.offset)
            lane = len(lanes) - 1
        lanes[lane] = e.offset
        ax_t.broken_barh([(e.onset, e.duration)], (lane + 0.1, 0.8), color=KIND_COLORS.get(e.kind, "tab:cyan"))
        ax_t.text(e.onset + 0.05, lane + 0.5, e.label, va="center", fontsize=7, color="white", clip_on=True)
    ax_t.set_ylim(0, max(1, len(lanes)))
    ax_t.set_yticks([])
    ax_t.set_xlabel("seconds")
    ax_t.set_xlim(0, scene.duration)
    for a, b in spans:
        for ax in (ax_w, ax_m, ax_t):
            ax.axvspan(a, b, color="cyan", alpha=0.25)
    fig.suptitle(title or f"{scene.scene_id}: {scene.duration:.1f} s, {len(scene.events)} events")
    fig.tight_layout()
    return fig


def plot_funnel(stats: dict):
    """Drafted -> QA valid -> CoT valid, and where the items went (with reasons)."""
    import matplotlib.pyplot as plt

    items = stats["items"]
    requested = stats["n_requested"]
    drafted = requested - items["declined"]
    qa_valid = drafted - items["dropped"]
    cot_failed = sum(v for k, v in stats["rl_reasons"].items() if k.startswith("cot:"))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.5))
    stages = ["requested", "drafted", "QA valid", "QA+CoT valid"]
    values = [requested, drafted, qa_valid, qa_valid - cot_failed]
    ax1.barh(stages[::-1], values[::-1], color="tab:blue")
    for y, v in enumerate(values[::-1]):
        ax1.text(v, y, f" {v}", va="center")
    ax1.set_title("filter funnel")
    routes = {"sft": items["sft"], "rl": items["rl"], "eval": items["eval"], "dropped": items["dropped"],
              "declined": items["declined"]}
    ax2.bar(list(routes), list(routes.values()), color=["tab:green", "tab:orange", "tab:purple", "tab:red", "tab:gray"])
    reasons = {**{f"drop: {k}": v for k, v in stats["drop_reasons"].items()},
               **{f"rl: {k}": v for k, v in stats["rl_reasons"].items()}}
    ax2.set_title("routing: " + ", ".join(f"{k} {v}" for k, v in reasons.items()), fontsize=9)
    fig.tight_layout()
    return fig


def plot_mix(stats: dict):
    """Question types per split (stacked) and the clip-length histogram."""
    import matplotlib.pyplot as plt

    qtypes = sorted({q for split in stats["qtypes"].values() for q in split})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    bottom = np.zeros(len(qtypes))
    for split, color in (("sft", "tab:green"), ("rl", "tab:orange"), ("eval", "tab:purple")):
        counts = np.array([stats["qtypes"][split].get(q, 0) for q in qtypes])
        ax1.bar(qtypes, counts, bottom=bottom, label=split, color=color)
        bottom += counts
    ax1.tick_params(axis="x", rotation=45)
    ax1.legend()
    ax1.set_title("question types per split")
    hist = stats["clip_seconds_histogram"]
    ax2.bar(list(hist), list(hist.values()), color="tab:blue")
    ax2.set_xlabel("clip length (s)")
    ax2.set_title("clips")
    fig.tight_layout()
    return fig
