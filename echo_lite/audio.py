"""Audio: load, resample, cut by seconds, mel features, audio-token counts.

Everything the model hears goes through here, so the sample rate, the frame rate and
the token-count formula are applied in one place (values from `config`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from echo_lite.config import HOP_LENGTH, SAMPLE_RATE


class AudioError(ValueError):
    """Bad audio input; the message names the input and what is wrong."""


def _check_waveform(wav: np.ndarray, name: str) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim == 2:  # (frames, channels) as soundfile returns it -> mono
        wav = wav.mean(axis=1)
    if wav.ndim != 1:
        raise AudioError(f"{name}: expected a mono or (samples, channels) waveform, got shape {wav.shape}")
    if wav.size == 0:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    if not np.issubdtype(wav.dtype, np.number):
        raise AudioError(f"{name}: samples are {wav.dtype}, not numbers")
    wav = wav.astype(np.float32, copy=False)
    bad = ~np.isfinite(wav)
    if bad.any():
        raise AudioError(f"{name}: {int(bad.sum())} sample(s) are NaN or infinite (first at index {int(np.argmax(bad))})")
    return wav


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, name: str = "waveform") -> np.ndarray:
    if not isinstance(orig_sr, (int, np.integer)) or orig_sr <= 0:
        raise AudioError(f"{name}: sample rate must be a positive integer, got {orig_sr!r}")
    wav = _check_waveform(wav, name)
    if orig_sr == target_sr:
        return wav
    import librosa  # imported lazily: its first use compiles with numba (~10 s)

    return librosa.resample(wav, orig_sr=int(orig_sr), target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read wav/flac/ogg/mp3 as mono float32 at `sr` Hz, or raise `AudioError` naming `path`."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: audio file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    import soundfile as sf

    try:
        wav, file_sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as sf_err:  # libsndfile cannot read it: try librosa's audioread path (mp3 etc.)
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():  # librosa warns about its own fallback; we report below
                warnings.simplefilter("ignore")
                wav, file_sr = librosa.load(str(path), sr=None, mono=True)
        except Exception:
            raise AudioError(f"{path}: not a readable audio file ({sf_err})") from None
    return resample(_check_waveform(wav, str(path)), int(file_sr), sr, name=str(path))


def write_audio(path: str | Path, wav: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write a 16-bit PCM WAV atomically (a half-written file never has the final name)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), _check_waveform(wav, str(path)), sr, subtype="PCM_16", format="WAV")
    tmp.replace(path)
    return path


def duration_s(wav: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    return len(wav) / sr


def cut_span(wav: np.ndarray, start: float, end: float, sr: int = SAMPLE_RATE, min_s: float = 0.0) -> np.ndarray:
    """Samples of `wav` between `start` and `end` seconds, the end clamped to the clip.

    Raises `AudioError` for spans that do not lie in the clip or are shorter than
    `min_s` after clamping (the runtime validates spans first; this is the last guard).
    """
    if not (math.isfinite(start) and math.isfinite(end)):
        raise AudioError(f"span ({start}, {end}): times must be finite numbers")
    if start < 0 or end <= start:
        raise AudioError(f"span ({start}, {end}): need 0 <= start < end")
    dur = len(wav) / sr
    if start >= dur:
        raise AudioError(f"span ({start}, {end}): starts after the clip ends ({dur:.2f} s)")
    end = min(end, dur)
    if end - start < min_s - 1e-9:
        raise AudioError(f"span ({start}, {end}): {end - start:.3f} s is shorter than the minimum {min_s} s")
    return wav[int(round(start * sr)): int(round(end * sr))]


def num_frames(n_samples: int) -> int:
    """Mel frames WhisperFeatureExtractor yields for `n_samples` (100 per second)."""
    return n_samples // HOP_LENGTH


def audio_token_count(n_samples: int) -> int:
    """Audio tokens the thinker produces for a clip: two stride-2 stages, 25 per second.

    tokens = ((frames - 1) // 2 + 1 - 2) // 2 + 1; 10 s -> 1000 frames -> 250 tokens.
    """
    frames = num_frames(n_samples)
    if frames < 1:
        return 0
    return max(0, ((frames - 1) // 2 + 1 - 2) // 2 + 1)


class AudioFeaturizer:
    """Log-mel features for a list of clips, without the processor (it needs torchvision).

    Pads to the longest clip in the batch: the thinker strips padding through
    `feature_attention_mask`, so padding to 30 s would only cost time. A clip's features
    do not depend on the clips batched with it (tested).
    """

    def __init__(self, n_mels: int = 128, sr: int = SAMPLE_RATE):
        from transformers import WhisperFeatureExtractor

        self.sr = sr
        self.extractor = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=sr, hop_length=HOP_LENGTH)

    def __call__(self, wavs: list[np.ndarray]) -> dict:
        """-> {'input_features': (B, n_mels, T) float32, 'feature_attention_mask': (B, T) long}."""
        import torch

        if len(wavs) == 0:
            raise AudioError("no clips given to the featurizer")
        checked = []
        for i, w in enumerate(wavs):
            w = _check_waveform(w, f"clip {i}")
            if audio_token_count(len(w)) < 1:
                raise AudioError(f"clip {i}: {len(w)} samples is too short to yield an audio token")
            checked.append(w)
        # One clip at a time, each followed by zeros: the STFT's last window then sees the same
        # samples whatever the clip is batched with (zeros, as in the real processor's 30 s
        # padding). Batched, a clip's last frame saw a neighbour's padding or a reflection,
        # so its audio tokens moved by up to 0.1 with the batch and recorded log-probs
        # drifted from GRPO's teacher-forced ones.
        tail = np.zeros(self.extractor.n_fft, np.float32)
        per_clip = []
        for w in checked:
            f = self.extractor([np.concatenate([w, tail])], sampling_rate=self.sr, padding="longest",
                               truncation=False, return_tensors="np")["input_features"][0]
            per_clip.append(f[:, :num_frames(len(w))])
        width = max(f.shape[1] for f in per_clip)
        feats = torch.zeros((len(per_clip), per_clip[0].shape[0], width), dtype=torch.float32)
        mask = torch.zeros((len(per_clip), width), dtype=torch.long)
        for i, f in enumerate(per_clip):
            feats[i, :, :f.shape[1]] = torch.from_numpy(f)
            mask[i, :f.shape[1]] = 1
        return {"input_features": feats, "feature_attention_mask": mask}
