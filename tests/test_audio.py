"""Audio: WAV I/O, resampling, the mel filterbank, log-mel features, their inverse, load_audio.

References are computed another way: WAV bytes are packed by hand with struct, the filterbank
by np.interp over the mel formulas written out here, the log-mel features by numpy framing and
np.fft.rfft, labels by reading the shards with tarfile.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tarfile
import wave

import numpy as np
import pytest
import torch

from noisecraft.data import audio, mel, wav
from noisecraft.data.audio import load_audio
from noisecraft.data.mel import (
    AudioConfig,
    audio_to_spectrogram,
    spectrogram_to_audio,
    spectrogram_to_mel_power,
)
from noisecraft.data.wav import load_waveform, read_wav, resample, write_wav
from noisecraft.errors import DataError

SMALL = AudioConfig(n_mels=32, frames=32)  # 31 hops of 64 samples ≈ 0.25 s: quick to build and invert


def _wav_bytes(frames: np.ndarray, width: int, rate: int, extensible: bool = False) -> bytes:
    """A RIFF/WAVE PCM file packed by hand; ``frames`` are integer sample codes (n, channels).

    ``extensible`` writes the WAVE_FORMAT_EXTENSIBLE header (tag 0xFFFE, PCM sub-format GUID).
    """
    frames = np.atleast_2d(np.asarray(frames).T).T
    n, channels = frames.shape
    if width == 1:
        data = bytes(int(v) for v in frames.ravel())
    elif width == 3:
        data = b"".join(struct.pack("<i", int(v))[:3] for v in frames.ravel())
    else:
        data = struct.pack(f"<{frames.size}{'h' if width == 2 else 'i'}", *frames.ravel().tolist())
    tag = 0xFFFE if extensible else 1
    block = channels * width
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, 8 * width)
    if extensible:
        pcm_guid = struct.pack("<IHH", 1, 0x0000, 0x0010) + bytes.fromhex("800000aa00389b71")
        fmt += struct.pack("<HHI", 22, 8 * width, 0) + pcm_guid
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _tone(freq: float, rate: int, n: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x) * 32767).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# WAV files and resampling


@pytest.mark.parametrize("width,codes,expected", [
    (1, [0, 128, 255], [-1.0, 0.0, 127 / 128]),
    (2, [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
    (3, [-(2**23), -1, 2**22, 2**23 - 1], [-1.0, -1 / 2**23, 0.5, (2**23 - 1) / 2**23]),
    (4, [-(2**31), 2**30, -(2**30)], [-1.0, 0.5, -0.5]),
])
def test_read_wav_decodes_each_pcm_width(tmp_path, width, codes, expected):
    path = tmp_path / f"w{width}.wav"
    path.write_bytes(_wav_bytes(np.array(codes), width, 8000))
    samples, rate = read_wav(path)
    assert rate == 8000 and samples.shape == (1, len(codes)) and samples.dtype == np.float32
    np.testing.assert_allclose(samples[0], expected, rtol=0, atol=1e-7)


def test_extensible_24_bit_wav(tmp_path):
    # WAVE_FORMAT_EXTENSIBLE, as most tools write 24-bit files; Python 3.11's wave refuses it.
    codes = np.array([[-(2**23), 2**22], [2**23 - 1, -1]])
    path = tmp_path / "ext24.wav"
    path.write_bytes(_wav_bytes(codes, 3, 16000, extensible=True))
    samples, rate = read_wav(path)
    assert rate == 16000
    np.testing.assert_allclose(samples, codes.T / 2**23, rtol=0, atol=1e-7)


def test_float_wav_falls_back_to_scipy(tmp_path):
    # IEEE-float WAV (format 3) is not PCM, so the stdlib wave module refuses it before Python 3.12.
    from scipy.io import wavfile

    x = np.stack([_tone(300, 8000, 500), _tone(900, 8000, 500, 0.25)], axis=1)
    wavfile.write(tmp_path / "float.wav", 8000, x)
    samples, rate = read_wav(tmp_path / "float.wav")
    assert rate == 8000
    np.testing.assert_array_equal(samples, x.T)
    cut = (tmp_path / "float.wav").read_bytes()[:1000]
    with pytest.raises(DataError, match="cut-float.wav"):
        read_wav(cut, name="cut-float.wav")


def test_multichannel_is_averaged_to_mono(tmp_path):
    left, right = _pcm16(_tone(300, 8000, 400)), _pcm16(_tone(700, 8000, 400, 0.25))
    path = tmp_path / "stereo.wav"
    path.write_bytes(_wav_bytes(np.stack([left, right], axis=1), 2, 8000))
    samples, _ = read_wav(path)
    np.testing.assert_allclose(samples, np.stack([left, right]) / 32768, atol=1e-7)
    np.testing.assert_allclose(load_waveform(path, 8000), (left + right) / 2 / 32768, atol=1e-6)


def test_write_wav_round_trips_within_one_quantisation_step(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 1000)).astype(np.float32)
    write_wav(tmp_path / "out.wav", torch.from_numpy(x), 16000)
    with wave.open(str(tmp_path / "out.wav"), "rb") as w:
        header = (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes())
    assert header == (2, 2, 16000, 1000)
    back, rate = read_wav(tmp_path / "out.wav")
    assert rate == 16000
    # Half a step of rounding to 1/32767, plus reading back with the 1/32768 scale: under 1.5 steps.
    np.testing.assert_allclose(back, x, atol=1.5 / 32767)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # the atomic write cleaned up


def test_write_wav_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "a.wav", np.array([0.0, np.nan]), 8000)
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(tmp_path / "a.wav", np.zeros(4), 0)
    with pytest.raises(ValueError, match="shape"):
        write_wav(tmp_path / "a.wav", np.zeros((1, 2, 3)), 8000)


def test_corrupt_and_truncated_wav_raise_data_error_naming_the_file(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a wav file at all")
    with pytest.raises(DataError, match="junk.wav"):
        read_wav(junk)
    good = _wav_bytes(_pcm16(_tone(440, 8000, 800)), 2, 8000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.wav: truncated WAV file: header says 800 frames"):
        read_wav(cut)
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "missing.wav")


@pytest.mark.parametrize("orig_rate", [16000, 11025, 22050])
def test_resample_keeps_a_tone_in_band(orig_rate):
    # A 440 Hz sine sampled at orig_rate must become the same sine sampled at 8 kHz. Away from the
    # ends (the FIR's transients) the polyphase filter's passband ripple bounds the error well below 1 %.
    x = _tone(440, orig_rate, orig_rate)  # one second
    y = resample(x, orig_rate, 8000)
    assert y.shape == (8000,)
    expected = _tone(440, 8000, 8000)
    np.testing.assert_allclose(y[400:-400], expected[400:-400], atol=5e-3)


def test_resample_removes_content_above_the_new_nyquist():
    # 6 kHz cannot exist at 8 kHz (Nyquist 4 kHz); without the anti-alias filter it would fold to
    # 2 kHz at full amplitude (RMS 0.35). The Kaiser FIR stops it to well under 1 % of that.
    y = resample(_tone(6000, 16000, 16000), 16000, 8000)
    assert np.sqrt(np.mean(y[400:-400] ** 2)) < 3e-3


# ---------------------------------------------------------------------------------------------
# Mel scale and filterbank


def test_mel_scales_match_their_definitions():
    # Slaney: 3 f / 200 below 1 kHz, 27 mels per factor 6.4 above; HTK: 2595 log10(1 + f/700).
    np.testing.assert_allclose(mel.hz_to_mel([0.0, 200.0, 1000.0, 6400.0]), [0.0, 3.0, 15.0, 42.0],
                               atol=1e-9)
    np.testing.assert_allclose(mel.hz_to_mel(2000.0), 15 + 27 * math.log(2) / math.log(6.4), rtol=1e-12)
    np.testing.assert_allclose(mel.hz_to_mel(700.0, "htk"), 2595 * math.log10(2), rtol=1e-12)
    f = np.array([0.0, 55.0, 999.0, 1000.0, 1001.0, 3999.0])
    for scale in ("slaney", "htk"):
        np.testing.assert_allclose(mel.mel_to_hz(mel.hz_to_mel(f, scale), scale), f, atol=1e-9)
    with pytest.raises(ValueError, match="'bark'"):
        mel.hz_to_mel(1.0, "bark")


def _reference_filterbank(sr, n_fft, n_mels, f_min, f_max, scale):
    """Triangles built by np.interp through (lower, 0), (centre, 1), (upper, 0) on the mel grid."""
    if scale == "htk":
        to_mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
        to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    else:
        to_mel = lambda f: 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)  # noqa: E731
        to_hz = lambda m: 200 * m / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)  # noqa: E731
    edges = [to_hz(m) for m in np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2)]
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    rows = [np.interp(freqs, edges[k:k + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
            for k in range(n_mels)]
    return np.array(rows), np.array(edges)


@pytest.mark.parametrize("scale,sr,n_fft,n_mels,f_min,f_max", [
    ("slaney", 8000, 256, 64, 0.0, 4000.0),
    ("slaney", 16000, 512, 40, 50.0, 7600.0),
    ("htk", 8000, 512, 40, 0.0, 4000.0),
])
def test_filterbank_matches_independent_triangles_and_partitions_unity(scale, sr, n_fft, n_mels, f_min,
                                                                        f_max):
    fb = mel.mel_filterbank(sr, n_fft, n_mels, f_min, f_max, scale).double().numpy()
    ref, edges = _reference_filterbank(sr, n_fft, n_mels, f_min, f_max, scale)
    np.testing.assert_allclose(fb, ref, atol=1e-6)
    # Peaks at the mel-spaced centres: every filter's maximum sits on the FFT bin nearest its centre.
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    nearest = np.abs(freqs[None, :] - edges[1:-1, None]).argmin(axis=1)
    assert np.all(fb[np.arange(n_mels), nearest] == fb.max(axis=1))
    # Between the first and last centre, neighbouring triangles sum to exactly one.
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])
    np.testing.assert_allclose(fb[:, inside].sum(axis=0), 1.0, atol=1e-6)


def test_filterbank_rejects_filters_with_no_fft_bin():
    with pytest.raises(ValueError, match="mel filter 0 .* no FFT bin"):
        mel.mel_filterbank(8000, 64, 64)
    with pytest.raises(ValueError, match="f_max"):
        mel.mel_filterbank(8000, 256, 32, f_max=5000.0)


# ---------------------------------------------------------------------------------------------
# Log-mel features


def _reference_log_mel(w: np.ndarray, c: AudioConfig) -> np.ndarray:
    """The whole forward pipeline in float64 numpy: frame, window, rfft, filterbank, dB, scale."""
    w = np.pad(w[: c.n_samples].astype(np.float64), (0, max(0, c.n_samples - len(w))))
    padded = np.pad(w, c.n_fft // 2)  # centred frames, zero padding
    left = (c.n_fft - c.win_length) // 2
    window = np.zeros(c.n_fft)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.win_length) / c.win_length)  # periodic Hann
    window[left:left + c.win_length] = hann
    frames = np.stack([padded[i * c.hop_length:i * c.hop_length + c.n_fft] for i in range(c.frames)])
    power = np.abs(np.fft.rfft(frames * window, axis=1) / window.sum()) ** 2
    f_max = c.f_max or c.sample_rate / 2
    fb, _ = _reference_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, f_max, c.mel_scale)
    db = 10 * np.log10(np.maximum(fb @ power.T, 10 ** (c.min_db / 10)))
    return np.clip(2 * (db - c.min_db) / (c.max_db - c.min_db) - 1, -1, 1)


@pytest.mark.parametrize("config", [SMALL, AudioConfig(n_fft=512, win_length=400, hop_length=100,
                                                          n_mels=40, f_min=60.0, frames=20, min_db=-70,
                                                          max_db=-5)])
def test_log_mel_matches_a_numpy_reference(config):
    rng = np.random.default_rng(1)
    n = config.n_samples + 500  # longer than a clip: the crop is part of what is compared
    w = (0.3 * rng.standard_normal(n) * np.linspace(0, 1, n)).astype(np.float32)
    x = audio_to_spectrogram(torch.from_numpy(w), config)
    assert x.shape == (1, config.n_mels, config.frames) and x.dtype == torch.float32
    # float32 STFT against float64: power to ~1e-6 relative, i.e. ~4e-6 dB, ~1e-7 after the
    # 2/(max_db − min_db) scaling (measured 3e-7); 1e-5 leaves 30x room for other BLAS kernels
    np.testing.assert_allclose(x[0].numpy(), _reference_log_mel(w, config), atol=1e-5)


def test_sine_level_and_silence():
    # STFT scaling: a sine of amplitude A on an FFT bin has magnitude A/2 there, whatever the window.
    c = SMALL
    freq = 40 * c.sample_rate / c.n_fft  # exactly bin 40
    sine = torch.from_numpy(_tone(freq, c.sample_rate, c.n_samples, 0.8))
    spec = mel.stft(sine, c.n_fft, c.hop_length, c.win_length)
    np.testing.assert_allclose(spec.abs()[40, 4:-4].numpy(), 0.4, rtol=1e-4)
    assert torch.all(audio_to_spectrogram(torch.zeros(c.n_samples), c) == -1.0)


def test_clips_are_cropped_at_the_end_and_padded_with_silence():
    c = SMALL
    noise = np.random.default_rng(2).standard_normal(c.n_samples + 1000).astype(np.float32)
    w = 0.1 * torch.from_numpy(noise)
    assert torch.equal(audio_to_spectrogram(w, c), audio_to_spectrogram(w[: c.n_samples], c))
    short = w[:1000]
    padded = torch.cat([short, torch.zeros(c.n_samples - 1000)])
    assert torch.equal(audio_to_spectrogram(short, c), audio_to_spectrogram(padded, c))
    batch = audio_to_spectrogram(torch.stack([w[: c.n_samples], padded]), c)
    assert batch.shape == (2, 1, c.n_mels, c.frames)
    # Batched and single STFTs may sum in another order: equal to float32 rounding, not bitwise.
    np.testing.assert_allclose(batch[1].numpy(), audio_to_spectrogram(padded, c).numpy(), atol=1e-5)


def test_audio_config_round_trips_json_and_names_bad_keys():
    c = AudioConfig(n_mels=40, f_max=3800.0, mel_scale="htk")
    assert AudioConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="'n_mel'"):
        AudioConfig.from_dict({"n_mel": 40})
    with pytest.raises(ValueError, match="hop_length"):
        AudioConfig(hop_length=200)
    with pytest.raises(ValueError, match="min_db"):
        AudioConfig(min_db=0.0, max_db=-10.0)
    with pytest.raises(ValueError, match="n_fft"):
        AudioConfig(n_fft=64, win_length=64, hop_length=16)  # 64 mels cannot fit 33 bins


# ---------------------------------------------------------------------------------------------
# The inverse


def test_mel_power_to_linear_is_a_nonnegative_least_squares_fit():
    # A non-negative spectrum S has mel power M = F S exactly, so the NNLS optimum has zero residual;
    # the clamped pseudo-inverse, its starting point, does not. We ask the refinement to get close.
    fb = SMALL.filterbank().double()
    s_true = torch.from_numpy(np.random.default_rng(3).gamma(0.5, size=(fb.shape[1], 16)))
    m = fb @ s_true
    s_hat = mel.mel_power_to_linear(m, fb)
    assert (s_hat >= 0).all()
    clamped = (torch.linalg.pinv(fb) @ m).clamp_min(0)
    residual = torch.linalg.norm(fb @ s_hat - m) / torch.linalg.norm(m)
    assert residual < 0.02
    assert residual < 0.2 * torch.linalg.norm(fb @ clamped - m) / torch.linalg.norm(m)


def _mel_magnitude(x: torch.Tensor, c: AudioConfig) -> torch.Tensor:
    return spectrogram_to_mel_power(x, c).sqrt()


def test_griffin_lim_reconstructs_a_chirp_and_tones():
    # Tones at 440 and 1250 Hz plus a 200→3000 Hz linear chirp, 1 s at 8 kHz (the default config).
    # Spectral convergence of the mel magnitudes ||M − M̂|| / ||M||: measured 0.049 after 64 fast
    # Griffin-Lim iterations, 0.093 for plain Griffin-Lim and 0.31 after one iteration (random phase).
    # Deterministic (seeded phases), so the bounds only leave room for float rounding across builds.
    c = AudioConfig()
    t = np.arange(c.n_samples) / c.sample_rate
    chirp = 0.2 * np.sin(2 * np.pi * (200 * t + 0.5 * (2800 / t[-1]) * t**2))
    tones = _tone(440, c.sample_rate, c.n_samples, 0.3) + _tone(1250, c.sample_rate, c.n_samples, 0.1)
    w = tones + chirp
    x = audio_to_spectrogram(torch.from_numpy(w.astype(np.float32)), c)
    target = _mel_magnitude(x, c)

    def convergence(n_iter, momentum):
        y = spectrogram_to_audio(x, c, n_iter=n_iter, momentum=momentum)
        assert y.shape == (c.n_samples,)
        return mel.spectral_convergence(target, _mel_magnitude(audio_to_spectrogram(y, c), c))

    first, fast, plain = convergence(1, 0.99), convergence(64, 0.99), convergence(64, 0.0)
    assert fast < 0.1
    assert fast < 0.5 * first
    assert fast < plain  # the momentum of Perraudin et al. converges faster than Griffin-Lim


def test_spectrogram_to_audio_batches_and_checks_its_input():
    c = SMALL
    x = audio_to_spectrogram(torch.from_numpy(_tone(500, 8000, c.n_samples)), c)
    one = spectrogram_to_audio(x, c, n_iter=4)
    both = spectrogram_to_audio(torch.stack([x, x]), c, n_iter=4)
    assert both.shape == (2, c.n_samples)
    assert torch.equal(spectrogram_to_audio(x, c, n_iter=4), one)  # seeded phases: reproducible
    with pytest.raises(ValueError, match=r"\(1, 32, frames\)"):
        spectrogram_to_audio(torch.zeros(1, 40, 32), c)
    with pytest.raises(ValueError, match="NaN"):
        spectrogram_to_audio(torch.full((1, 32, 32), float("nan")), c)


# ---------------------------------------------------------------------------------------------
# Datasets


def _fsdd_reference(shard: str, keys: list[str]) -> dict[str, tuple[int, bytes, dict]]:
    with tarfile.open(shard) as tar:
        return {k: (int(tar.extractfile(f"{k}.cls").read()), tar.extractfile(f"{k}.wav").read(),
                    json.loads(tar.extractfile(f"{k}.json").read())) for k in keys}


def test_fsdd_test_split_from_the_shard_folder(shared_data):
    folder = os.path.join(shared_data, "fsdd")
    ds = load_audio(folder, split="test")
    # README: the test split is exactly fsdd_000000 … fsdd_000299, all in fsdd-0000.tar.gz.
    assert ds.keys == [f"fsdd_{i:06d}" for i in range(300)]
    assert ds.info == {"kind": "audio", "channels": 1, "image_size": (64, 128), "height": 64,
                       "width": 128, "num_classes": 10, "count": 300, "classes": None,
                       "sample_rate": 8000}
    assert ds.skipped == 0
    picks = ["fsdd_000000", "fsdd_000123", "fsdd_000299"]
    ref = _fsdd_reference(os.path.join(folder, "fsdd-0000.tar.gz"), picks)
    for key in picks:
        item = ds[ds.keys.index(key)]
        label, wav_bytes, meta = ref[key]
        assert item["label"] == label == meta["digit"] and meta["split"] == "test"
        assert item["caption"] == ""
        with wave.open(io.BytesIO(wav_bytes)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
        np.testing.assert_allclose(item["x"][0].numpy(), _reference_log_mel(pcm, ds.audio_config),
                                   atol=1e-5)  # float32 vs float64, as in test_log_mel_matches...
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["x"].shape == (8, 1, 64, 128) and batch["label"].dtype == torch.int64
    assert -1.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0


def test_fsdd_brace_pattern_split_and_options(shared_data):
    pattern = os.path.join(shared_data, "fsdd", "fsdd-{0001..0002}.tar.gz")
    with pytest.raises(DataError, match=r"no samples in split 'test'; the data has \['train'\]"):
        load_audio(pattern, split="test")
    first = os.path.join(shared_data, "fsdd", "fsdd-0000.tar.gz")
    ds = load_audio(first, split="train", n_mels=32, frames=64)
    assert len(ds) == 700 and ds.x.shape == (700, 1, 32, 64)
    assert ds.audio_config == AudioConfig(n_mels=32, frames=64) and ds.info["image_size"] == (32, 64)
    assert sorted(set(ds.labels)) == list(range(10))
    with pytest.raises(ValueError, match="'image_size'"):
        load_audio(pattern, image_size=32)
    with pytest.raises(DataError, match="shard .*fsdd-0003.tar.gz not found"):
        load_audio(os.path.join(shared_data, "fsdd", "fsdd-{0001..0009}.tar.gz"))


def _write_pcm16(path, samples: np.ndarray, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_wav_bytes(_pcm16(samples), 2, rate))


def test_folder_labels_from_subfolders_with_resampling(tmp_path):
    _write_pcm16(tmp_path / "dog" / "a.wav", _tone(300, 8000, 2000))
    _write_pcm16(tmp_path / "cat" / "deep" / "b.wav", _tone(600, 16000, 4000), rate=16000)
    ds = load_audio(tmp_path, config=SMALL)
    assert ds.keys == ["cat/deep/b", "dog/a"] and ds.labels == [0, 1]
    assert ds.info["classes"] == ["cat", "dog"] and ds.info["num_classes"] == 2
    expected = audio_to_spectrogram(torch.from_numpy(resample(_pcm16(_tone(600, 16000, 4000)) / 32768,
                                                              16000, 8000)), SMALL)
    np.testing.assert_allclose(ds[0]["x"].numpy(), expected.numpy(), atol=1e-5)
    with pytest.raises(DataError, match="no split information"):
        load_audio(tmp_path, split="test", config=SMALL)


def test_flat_folder_labels_from_leading_digits_or_none(tmp_path):
    for name in ("7_jackson_32.wav", "10_theo_1.wav"):
        _write_pcm16(tmp_path / "digits" / name, _tone(400, 8000, 1000))
    ds = load_audio(tmp_path / "digits", config=SMALL)
    assert dict(zip(ds.keys, ds.labels, strict=True)) == {"10_theo_1": 10, "7_jackson_32": 7}
    assert ds.info["num_classes"] == 11
    _write_pcm16(tmp_path / "digits" / "hello.wav", _tone(400, 8000, 1000))
    assert load_audio(tmp_path / "digits", config=SMALL).labels == [-1, -1, -1]
    single = load_audio(tmp_path / "digits" / "hello.wav", config=SMALL)
    assert single.keys == ["hello"] and single.info["num_classes"] == 0
    _write_pcm16(tmp_path / "digits" / "sub" / "x.wav", _tone(400, 8000, 1000))
    with pytest.raises(DataError, match="lies at the top"):
        load_audio(tmp_path / "digits", config=SMALL)


def test_bad_file_raises_or_is_skipped_with_a_count(tmp_path):
    _write_pcm16(tmp_path / "0_good.wav", _tone(400, 8000, 1000))
    (tmp_path / "1_bad.wav").write_bytes(b"RIFF\x00\x00junk")
    with pytest.raises(DataError, match="1_bad.wav"):
        load_audio(tmp_path, config=SMALL)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable audio file\(s\); first: .*1_bad.wav"):
        ds = load_audio(tmp_path, config=SMALL, skip_bad=True)
    assert ds.keys == ["0_good"] and ds.skipped == 1


def _write_shard(path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shards_captions_splits_and_bad_members(tmp_path):
    wav = _wav_bytes(_pcm16(_tone(500, 8000, 1500)), 2, 8000)
    split = lambda s: json.dumps({"split": s}).encode()  # noqa: E731
    _write_shard(tmp_path / "a-0.tar.gz", {
        "s0": {"cls": b"3", "json": split("train"), "txt": b"a tone\n", "wav": wav},
        "s1": {"cls": b"5", "json": split("valid"), "wav": wav},
    })
    _write_shard(tmp_path / "a-1.tar.gz", {
        "s2": {"cls": b"1", "json": split("train"), "wav": wav},
        "s3": {"json": split("train"), "wav": wav[:60]},  # truncated WAV
        "s4": {"json": split("train"), "txt": b"no audio"},
    })
    pattern = str(tmp_path / "a-{0..1}.tar.gz")
    with pytest.raises(DataError, match=r"a-1.tar.gz:s4: sample has no .wav member"):
        load_audio(pattern, config=SMALL)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = load_audio(pattern, config=SMALL, skip_bad=True)
    assert ds.keys == ["s0", "s2"] and ds.labels == [3, 1] and ds.captions == ["a tone", ""]
    assert ds.info["num_classes"] == 6 and ds.skipped == 2  # labels 3, 5, 1 before the split
    with pytest.warns(UserWarning):
        assert load_audio(pattern, config=SMALL, skip_bad=True, split="valid").keys == ["s1"]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes((tmp_path / "a-0.tar.gz").read_bytes()[:100])
    with pytest.raises(DataError, match="broken.tar.gz: not a readable"):
        load_audio(broken, config=SMALL)


def test_codec_and_features_stay_importable_from_data_audio():
    """data.audio finds clips; the codec (wav) and features (mel) are re-exported, not copied."""
    for name in audio.__all__:
        home = wav if hasattr(wav, name) else mel if hasattr(mel, name) else audio
        assert getattr(audio, name) is getattr(home, name), name
    assert not hasattr(wav, "AudioConfig") and not hasattr(mel, "read_wav")
