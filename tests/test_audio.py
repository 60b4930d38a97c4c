import numpy as np
import pytest
import soundfile as sf
import torch

from echo_lite.audio import (
    AudioError,
    AudioFeaturizer,
    audio_token_count,
    cut_span,
    load_audio,
    num_frames,
    resample,
    write_audio,
)
from echo_lite.config import SAMPLE_RATE


@pytest.mark.parametrize("fmt,ext,subtype", [("WAV", "wav", "PCM_16"), ("FLAC", "flac", "PCM_16"),
                                             ("OGG", "ogg", "VORBIS"), ("MP3", "mp3", "MPEG_LAYER_III")])
def test_load_formats_as_mono_16k(tmp_path, fmt, ext, subtype):
    sr = 22050
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.3
    path = tmp_path / f"clip.{ext}"
    try:
        sf.write(path, stereo, sr, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError) as err:  # pragma: no cover - depends on libsndfile build
        pytest.skip(f"this libsndfile cannot write {fmt}: {err}")
    wav = load_audio(path)
    assert wav.ndim == 1 and wav.dtype == np.float32
    assert abs(len(wav) - SAMPLE_RATE) < 0.02 * SAMPLE_RATE  # 1 s at 16 kHz (mp3 adds codec padding)
    # still a 440 Hz tone after resampling
    spec = np.abs(np.fft.rfft(wav[:SAMPLE_RATE // 2]))
    assert abs(np.argmax(spec) * 2 - 440) <= 4


def test_bad_files_are_named(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: empty file"):
        load_audio(empty)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="corrupt.wav: not a readable audio file"):
        load_audio(corrupt)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all")
    with pytest.raises(AudioError, match="notes.wav"):
        load_audio(text)
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="zero.wav"):
        load_audio(zero)
    nan = tmp_path / "nan.wav"
    data = np.zeros(1600, dtype=np.float32)
    data[100] = np.nan
    sf.write(nan, data, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: 1 sample.* NaN or infinite .*index 100"):
        load_audio(nan)


def test_resample_rejects_bad_rates():
    with pytest.raises(AudioError, match="sample rate must be a positive integer"):
        resample(np.zeros(100, dtype=np.float32), 0)
    with pytest.raises(AudioError, match="sample rate"):
        resample(np.zeros(100, dtype=np.float32), 44100.5)
    out = resample(np.zeros(8000, dtype=np.float32), 8000)
    assert len(out) == 16000


def test_write_is_atomic_and_round_trips(tmp_path, tone):
    path = write_audio(tmp_path / "a" / "tone.wav", tone)
    assert not (tmp_path / "a" / "tone.wav.tmp").exists()
    back = load_audio(path)
    assert np.allclose(back, tone, atol=1e-3)


def test_cut_span_clamps_and_refuses(tone):
    assert len(cut_span(tone, 1.0, 2.5)) == int(1.5 * SAMPLE_RATE)
    assert len(cut_span(tone, 9.5, 12.0)) == int(0.5 * SAMPLE_RATE)  # clamped to the clip
    with pytest.raises(AudioError, match="starts after the clip ends"):
        cut_span(tone, 11.0, 12.0)
    with pytest.raises(AudioError, match="need 0 <= start < end"):
        cut_span(tone, 3.0, 2.0)
    with pytest.raises(AudioError, match="shorter than the minimum 0.2"):
        cut_span(tone, 9.9, 12.0, min_s=0.2)
    with pytest.raises(AudioError, match="finite"):
        cut_span(tone, float("nan"), 1.0)


def test_token_count_formula():
    assert num_frames(10 * SAMPLE_RATE) == 1000
    assert audio_token_count(10 * SAMPLE_RATE) == 250
    assert audio_token_count(SAMPLE_RATE) == 25
    assert audio_token_count(3200) == 5  # the 0.2 s minimum clip
    assert audio_token_count(0) == 0


@pytest.mark.parametrize("seconds", [0.2, 0.73, 1.0, 2.5, 10.0, 13.37])
def test_token_count_matches_the_real_encoder(tiny_model, seconds):
    wav = np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
    feats = AudioFeaturizer(tiny_model.config.audio_config.num_mel_bins)([wav])
    with torch.no_grad():
        out = tiny_model.get_audio_features(**feats).last_hidden_state
    assert out.shape[0] == audio_token_count(len(wav))


def test_featurizer_pads_to_longest_and_checks_input():
    fz = AudioFeaturizer(128)
    out = fz([np.zeros(3 * SAMPLE_RATE, np.float32), np.zeros(5 * SAMPLE_RATE, np.float32)])
    assert out["input_features"].shape == (2, 128, 500)
    assert out["feature_attention_mask"].sum(-1).tolist() == [300, 500]
    with pytest.raises(AudioError, match="clip 1: .*NaN"):
        fz([np.zeros(1600, np.float32), np.full(1600, np.nan, np.float32)])
    with pytest.raises(AudioError, match="clip 0: 100 samples is too short"):
        fz([np.zeros(100, np.float32)])
    with pytest.raises(AudioError, match="no clips"):
        fz([])


@pytest.mark.parametrize("n_short", [3 * SAMPLE_RATE + 123, 9600])  # a partial last hop; a whole number of hops
def test_a_clips_audio_tokens_do_not_depend_on_its_batch(tiny_model, n_short):
    """A clip batched with a longer one gives the same features and audio tokens as alone.
    Padded together, the extractor's mask kept a half-empty last frame and the last STFT
    window saw the neighbour's padding instead of a reflection (0.07-0.1 apart on the
    tiny encoder), so recorded log-probs drifted from GRPO's teacher-forced ones."""
    rng = np.random.default_rng(0)
    short = rng.standard_normal(n_short).astype(np.float32) * 0.1
    long = rng.standard_normal(7 * SAMPLE_RATE + 77).astype(np.float32) * 0.1
    fz = AudioFeaturizer(tiny_model.config.audio_config.num_mel_bins)
    alone, together = fz([short]), fz([short, long])
    n = num_frames(len(short))
    assert alone["feature_attention_mask"].sum().item() == n
    assert together["feature_attention_mask"].sum(-1).tolist() == [n, num_frames(len(long))]
    assert torch.equal(alone["input_features"][0], together["input_features"][0, :, :n])
    with torch.no_grad():
        a = tiny_model.get_audio_features(**alone).last_hidden_state
        b = tiny_model.get_audio_features(**fz([long])).last_hidden_state
        ab = tiny_model.get_audio_features(**together).last_hidden_state
    assert torch.allclose(torch.cat([a, b]), ab, atol=1e-5)
