import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from echo_lite.config import SAMPLE_RATE  # noqa: E402
from echo_lite.plots import audio_player, audio_players, plot_bars, plot_clip, plot_curves, wav_bytes  # noqa: E402


def test_figures_draw_what_they_are_given():
    wav = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    fig = plot_clip(wav, events=[{"label": "A4 tone", "onset": 0.5, "offset": 1.5, "kind": "tone"}], spans=[(1.0, 2.0)], title="t")
    assert len(fig.axes) == 3
    assert any(t.get_text() == "A4 tone" for t in fig.axes[2].texts)
    assert any("re-listen 1: 1.0-2.0 s" in t.get_text() for t in fig.axes[0].texts)
    fig = plot_curves([{"step": i, "reward": i / 10} for i in range(10)], ["reward"], smooth=3)
    assert len(fig.axes[0].lines) == 2
    fig = plot_bars({"one pass": 0.2, "oracle": 0.9}, chance=0.125)
    assert [round(p.get_height(), 2) for p in fig.axes[0].patches] == [0.2, 0.9]


def test_audio_players_embed_real_wav():
    wav = np.zeros(1600, np.float32)
    assert wav_bytes(wav)[:4] == b"RIFF"
    html = audio_player(wav, "clip").data
    assert "data:audio/wav;base64,UklGR" in html and "clip" in html
    assert audio_players([wav, wav], ["a", "b"]).data.count("<audio") == 2
