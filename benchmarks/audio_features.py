"""Audio throughput on CPU: WAV → log-mel features, and the Griffin-Lim inverse with its quality.

    .venv/bin/python benchmarks/audio_features.py [--data ../shared/data/fsdd] [--threads N]
        [--inverse-clips 16] [--iters 16 32 64 128]

Prints Markdown tables (rates per wall-clock second and per CPU-second of this process; with
``--threads 1`` on a busy machine the CPU-second figure is the one to compare):
1. clips/s for ``load_audio`` on one FSDD shard (1,000 clips: gzip tar → WAV decode → STFT →
   mel → dB), and for the feature step alone on already decoded waveforms, single and batched;
2. clips/s for ``spectrogram_to_audio`` (NNLS + Griffin-Lim) on FSDD test clips, a batch at a
   time, for plain Griffin-Lim (momentum 0) and fast Griffin-Lim (momentum 0.99), with the mean
   spectral convergence ||M − M̂||_F / ||M||_F of the mel magnitudes (re-analysed output vs input).
Default AudioConfig throughout (8 kHz, n_fft 256, hop 64, 64 mels, 128 frames).
"""

from __future__ import annotations

import argparse
import os
import platform
import tarfile
import time
from datetime import date

import torch

from noisecraft.data import mel
from noisecraft.data.audio import (
    AudioConfig,
    audio_to_spectrogram,
    load_audio,
    load_waveform,
    spectrogram_to_audio,
    spectrogram_to_mel_power,
)


def seconds(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the second is the honest one."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def rates(count: int, times: tuple[float, float]) -> str:
    return f"{count / times[0]:,.1f} | {count / times[1]:,.1f}"


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "fsdd"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--inverse-clips", type=int, default=16)
    parser.add_argument("--iters", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = AudioConfig()
    shard = os.path.join(args.data, "fsdd-0000.tar.gz")

    print(f"noisecraft audio — {date.today()}, torch {torch.__version__}, cpu "
          f"({platform.processor() or platform.machine()}), {args.threads} threads\n")

    load_s = seconds(lambda: load_audio(shard, split="all"))
    with tarfile.open(shard) as tar:
        wavs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".wav")]
    waves = [torch.from_numpy(load_waveform(b, config.sample_rate)) for b in wavs]
    n = config.n_samples
    fixed = torch.stack([torch.nn.functional.pad(w[:n], (0, n - min(len(w), n))) for w in waves])
    decode_s = seconds(lambda: [load_waveform(b, config.sample_rate) for b in wavs])
    single_s = seconds(lambda: [audio_to_spectrogram(w, config) for w in waves])
    batched_s = seconds(lambda: [audio_to_spectrogram(fixed[i:i + 256], config)
                                 for i in range(0, len(fixed), 256)])
    print("| WAV → log-mel (1,000 FSDD clips) | clips/s | clips per CPU-s |")
    print("|---|---:|---:|")
    print(f"| load_audio on one .tar.gz shard (end to end) | {rates(len(wavs), load_s)} |")
    print(f"| WAV bytes → mono float waveform | {rates(len(wavs), decode_s)} |")
    print(f"| waveform → log-mel, one clip per call | {rates(len(wavs), single_s)} |")
    print(f"| waveform → log-mel, 256 clips per call | {rates(len(wavs), batched_s)} |")

    test = load_audio(shard, split="test")
    x = test.x[: args.inverse_clips]
    target = spectrogram_to_mel_power(x, config).sqrt()
    print(f"\n| Griffin-Lim inverse ({len(x)} FSDD test clips, one batch) | iterations | clips/s "
          "| clips per CPU-s | spectral convergence |")
    print("|---|---:|---:|---:|---:|")
    for momentum, name in ((0.0, "Griffin-Lim"), (0.99, "fast Griffin-Lim (α = 0.99)")):
        for n_iter in args.iters:
            out: list[torch.Tensor] = []
            t = seconds(lambda n_iter=n_iter, momentum=momentum, out=out: out.append(
                spectrogram_to_audio(x, config, n_iter=n_iter, momentum=momentum)))
            again = spectrogram_to_mel_power(audio_to_spectrogram(out[0], config), config).sqrt()
            sc = sum(mel.spectral_convergence(target[i], again[i]) for i in range(len(x))) / len(x)
            print(f"| {name} | {n_iter} | {rates(len(x), t)} | {sc:.3f} |")


if __name__ == "__main__":
    main()
