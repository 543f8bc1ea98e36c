"""Round-trip PSNR of deterministic inversion: decode(encode(x_0)) against x_0, per solver and steps.

    python benchmarks/inversion.py RUN_DIR [--n 64] [--steps 10 25 50 100] [--write]

Encodes held-out examples of the run's own data (its test split) to x_T with
``noisecraft.encode`` and decodes them with the same solver on the same grid
(``noisecraft.decode``); prints PSNR in dB for data in [−1, 1] (peak-to-peak 2), the network
evaluations of the round trip, and the wall time per image. ``--write`` puts the table into
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from noisecraft.editing import ENCODERS, decode, encode, psnr  # noqa: E402
from noisecraft.explain import count_calls, held_out  # noqa: E402
from noisecraft.run import load_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=64, help="held-out examples (default 64)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--samplers", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    x0, labels = held_out(run, args.n)
    cond = {} if labels is None else {"labels": labels}
    lines = [f"inversion round trip — {datetime.date.today()}, torch {torch.__version__}, "
             f"{platform.processor() or platform.machine()}, threads {torch.get_num_threads()}; "
             f"run {run.config.data.spec} ({tuple(run.shape)}, T = {run.schedule.T}, "
             f"{run.schedule.to_dict().get('kind', 'custom')} schedule, step {run.step}), "
             f"{x0.shape[0]} held-out examples",
             "",
             "| solver | steps | NFE (encode + decode) | PSNR mean (dB) | PSNR min (dB) | ms / image |",
             "| --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines))
    for sampler in args.samplers:
        for steps in args.steps:
            den = count_calls(run.denoiser)
            start = time.perf_counter()
            x_T = encode(den, x0, run.schedule, steps, sampler, **cond)
            back = decode(den, x_T, run.schedule, steps, sampler, **cond)
            ms = 1000 * (time.perf_counter() - start) / x0.shape[0]
            db = psnr(back, x0)
            line = (f"| {sampler} | {steps} | {den.calls} | {db.mean().item():.2f} | "
                    f"{db.min().item():.2f} | {ms:.1f} |")
            lines.append(line)
            print(line, flush=True)
    if args.write:
        cmd = "python benchmarks/inversion.py " + " ".join(sys.argv[1:])
        write_section("inversion", "## Inversion round trip (`noisecraft.encode` / `decode`)\n\n"
                      f"`{cmd}`\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
