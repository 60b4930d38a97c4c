"""Figures of the data side: a scene (waveform, mel spectrogram, labelled timeline), the filter
funnel, the question-type mix and the clip lengths (used by notebooks/02_data_synthesis)."""

from __future__ import annotations

import numpy as np

from echo_lite.data.world import Scene, render_scene
from echo_lite.plots import plot_clip


def plot_scene(scene: Scene, wav: np.ndarray | None = None, spans=(), n_mels: int = 128, title: str | None = None):
    """A scene's waveform, mel spectrogram and event timeline (`plots.plot_clip`); `spans` shaded."""
    wav = render_scene(scene) if wav is None else wav
    return plot_clip(wav, scene.events, spans, title or f"{scene.scene_id}: {scene.duration:.1f} s, "
                     f"{len(scene.events)} events", n_mels=n_mels, span_labels=[f"{a:.1f}-{b:.1f} s" for a, b in spans])


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
