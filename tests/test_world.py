import logging

import numpy as np
import pytest

from echo_lite.config import SAMPLE_RATE, DataSpec
from echo_lite.data.world import (
    KINDS,
    TONE_PITCHES,
    Event,
    Scene,
    WorldError,
    note_hz,
    render_event,
    render_scene,
    sample_scene,
    speech_available,
)


def _on_grid(x: float) -> bool:
    return abs(x * 10 - round(x * 10)) < 1e-9


def _peak_hz(wav: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spec) * SAMPLE_RATE / len(wav))


def test_scenes_are_deterministic_and_differ_by_seed():
    a, b, c = sample_scene(7), sample_scene(7), sample_scene(8)
    assert a == b and a != c
    assert np.array_equal(render_scene(a), render_scene(b))
    assert Scene.from_dict(a.to_dict()) == a


def test_scene_invariants_over_many_seeds():
    spec = DataSpec()
    long_cues = 0
    n_overlapping = 0
    for seed in range(150):
        s = sample_scene(seed)
        assert spec.clip_seconds[0] <= s.duration <= spec.clip_seconds[1] and _on_grid(s.duration)
        assert len(s.events) >= 1
        assert [e.onset for e in s.events] == sorted(e.onset for e in s.events)
        for e in s.events:
            assert e.kind in KINDS
            assert _on_grid(e.onset) and _on_grid(e.offset)
            assert 0 <= e.onset < e.offset <= s.duration
            assert spec.event_seconds[0] - 1e-9 <= e.duration <= spec.event_seconds[1] + 1e-9, e
        pairs = [(x, y) for i, x in enumerate(s.events) for y in s.events[i + 1:] if y.onset < x.offset]
        assert len(pairs) <= 1  # mostly non-overlapping: at most the one layered event
        n_overlapping += len(pairs)
        long_cues += any(e.onset >= 10.0 for e in s.events)
    assert long_cues > 50  # cues after 10 s are common
    assert 15 < n_overlapping < 90  # overlaps exist, but are a minority


def test_sample_scene_arguments():
    s = sample_scene(1, duration=12.0, kinds=["tone"], n_events=5, overlap_prob=0.0)
    assert s.duration == 12.0 and len(s.events) == 5 and all(e.kind == "tone" for e in s.events)
    assert len(render_scene(s)) == 12 * SAMPLE_RATE
    crowded = sample_scene(1, duration=5.0, kinds=["tone"], n_events=40, overlap_prob=0.0)
    assert 1 <= len(crowded.events) < 40  # only what fits
    with pytest.raises(WorldError, match="unknown event kind"):
        sample_scene(1, kinds=["trumpet"])
    with pytest.raises(WorldError, match="duration range"):
        sample_scene(1, duration=(10.0, 5.0))


def test_tone_pitches_are_rendered_and_far_apart_in_mel():
    from echo_lite.audio import AudioFeaturizer

    wavs = []
    for name, hz in TONE_PITCHES.items():
        wav = render_event(Event("tone", f"{name} tone", 0.0, 1.0, {"pitch": name, "hz": hz}))
        assert len(wav) == SAMPLE_RATE and wav.dtype == np.float32
        assert abs(_peak_hz(wav) - hz) < 3
        wavs.append(wav)
    mel = AudioFeaturizer(128)(wavs)["input_features"].numpy()  # (8, 128, frames)
    bins = mel[:, :, 20:80].mean(axis=2).argmax(axis=1)
    assert len(set(bins.tolist())) == 8 and np.diff(np.sort(bins)).min() >= 2, bins


def test_chirps_sweep_the_right_way():
    for direction, f0, f1 in (("rising", 400.0, 2400.0), ("falling", 2400.0, 400.0)):
        wav = render_event(Event("chirp", f"{direction} chirp", 0.0, 1.0,
                                 {"direction": direction, "f_start": f0, "f_end": f1}))
        first, last = _peak_hz(wav[:1600]), _peak_hz(wav[-1600:])
        assert (last > 2 * first) if direction == "rising" else (first > 2 * last)


@pytest.mark.parametrize("count,interval", [(2, 0.4), (3, 0.3), (6, 0.2)])
def test_knock_trains_are_countable(count, interval):
    wav = render_event(Event("knocks", f"{count} knocks", 0.0, count * interval,
                             {"count": count, "interval": interval}), seed=3)
    env = np.abs(wav).reshape(-1, 160).max(axis=1)  # 10 ms frames
    loud = env > 0.5 * env.max()
    onsets = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    assert len(onsets) + int(loud[0]) == count


def test_noise_is_broadband_and_seeded():
    e = Event("noise", "noise burst", 1.0, 2.0, {"color": "white"})
    a, b, c = render_event(e, seed=1), render_event(e, seed=1), render_event(e, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    spec = np.abs(np.fft.rfft(a)) ** 2
    bands = [spec[i * len(spec) // 8:(i + 1) * len(spec) // 8].mean() for i in range(8)]
    assert max(bands) / min(bands) < 1.5  # flat from 0 to 8 kHz


def test_melody_plays_its_notes_at_its_tempo():
    notes = ["C4", "E4", "G4", "C5"]
    e = Event("melody", "C major melody", 0.0, 2.0, {"key": "C major", "bpm": 120, "notes": notes})
    wav = render_event(e)
    beat = SAMPLE_RATE // 2
    for k, name in enumerate(notes):
        assert abs(_peak_hz(wav[k * beat:(k + 1) * beat]) - note_hz(name)) < 4
    assert note_hz("A4") == 440.0


def test_scene_places_events_at_their_times():
    s = sample_scene(11, kinds=["tone"], overlap_prob=0.0)
    wav = render_scene(s)
    for e in s.events:
        inside = wav[int(e.onset * SAMPLE_RATE) + 400: int(e.offset * SAMPLE_RATE) - 400]
        assert abs(_peak_hz(inside) - e.attrs["hz"]) < 3
    silent = np.ones(len(wav), bool)
    for e in s.events:
        silent[int(e.onset * SAMPLE_RATE): int(e.offset * SAMPLE_RATE)] = False
    assert np.sqrt(np.mean(wav[silent] ** 2)) < 0.01  # low background between events


@pytest.mark.skipif(not speech_available(), reason="espeak-ng is not installed")
def test_speech_events_are_spoken_words():
    s = sample_scene(5, kinds=["speech"], n_events=3, overlap_prob=0.0)
    wav = render_scene(s)
    for e in s.events:
        assert e.kind == "speech" and e.label == f"spoken {e.attrs['word']}"
        seg = wav[int(e.onset * SAMPLE_RATE): int(e.offset * SAMPLE_RATE)]
        assert np.sqrt(np.mean(seg ** 2)) > 0.03
        assert np.abs(seg[:int(0.05 * SAMPLE_RATE)]).max() > 0.01  # the word starts at the onset


def test_speech_is_skipped_with_a_logged_reason_without_espeak(monkeypatch, caplog):
    from echo_lite.data import world

    monkeypatch.setenv("PATH", "/nonexistent")  # espeak-ng cannot be found
    world._log_speech_skipped.cache_clear()
    with caplog.at_level(logging.WARNING, logger="echo_lite.data.world"):
        s = sample_scene(5, kinds=["speech", "tone"], n_events=4)
    assert all(e.kind != "speech" for e in s.events)
    assert "espeak-ng is not installed" in caplog.text
    with pytest.raises(WorldError, match="espeak-ng"):
        sample_scene(5, kinds=["speech"])


def test_bad_events_and_scenes_are_named():
    with pytest.raises(WorldError, match="'C5 tone': need 0 <= onset < offset"):
        Event("tone", "C5 tone", 3.0, 2.0, {})
    with pytest.raises(WorldError, match="after the clip"):
        Scene("s", 5.0, (Event("tone", "C5 tone", 4.0, 6.0, {}),), 0)
    with pytest.raises(WorldError, match="missing field 'onset'"):
        Event.from_dict({"kind": "tone", "label": "x", "offset": 1.0})
