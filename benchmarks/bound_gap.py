"""How tight is the variational bound? Gap to the exact NLL for Gaussian data, ideal denoiser.

Data x_0 ~ N(m, s² I), D = 2, m = (0.3, −0.5), s = 0.4; the model is the exact E[x_0 | x_t]
(``GaussianMixture`` with one component). For each schedule and reverse variance the table gives
the closed-form expected gap E[bound − (−log p(x_0))] (numpy, from the β table) and the Monte-Carlo
estimate from ``losses.prior_kl + Σ_t losses.bound_term`` (continuous decoder) with its standard
error, plus the seconds the T-term bound took. "optimal" is a learned-variance net whose σ² is the
true reverse variance β̃_t + c0² v_t, which leaves only the prior mismatch.

``--write`` puts the table, with date, machine and versions, into BENCHMARKS.md between
``<!-- bound_gap -->`` markers.
"""

import argparse
import math
import os
import platform
import sys
import time
from datetime import date

import numpy as np
import torch
from _report import write_section
from torch import nn

from noisecraft import Denoiser, GaussianMixture, Schedule, losses

M, S, D = np.array([0.3, -0.5]), 0.4, 2


def variances(betas: np.ndarray) -> dict[str, np.ndarray]:
    abar = np.cumprod(1 - betas)
    abar_prev = np.r_[1.0, abar[:-1]]
    mmse = S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
    bt = betas * (1 - abar_prev) / (1 - abar)
    c0 = np.sqrt(abar_prev) * betas / (1 - abar)
    return {"abar": abar, "mmse": mmse, "bt": bt, "c0": c0, "beta": betas,
            "beta_tilde": np.r_[bt[1], bt[1:]], "optimal": bt + c0**2 * mmse}


def expected_gap(betas: np.ndarray, choice: str) -> float:
    v = variances(betas)
    var_p, bt, c0, mmse = v[choice], v["bt"], v["c0"], v["mmse"]
    kl = 0.5 * (np.log(var_p[1:]) - np.log(bt[1:]) + bt[1:] / var_p[1:] - 1
                + c0[1:] ** 2 * mmse[1:] / var_p[1:])
    decoder = 0.5 * (np.log(2 * np.pi * var_p[0]) + mmse[0] / var_p[0])
    a_T = v["abar"][-1]
    prior = 0.5 * np.sum(a_T * (M**2 + S**2) + (1 - a_T) - 1 - np.log(1 - a_T))
    return float(D * (kl.sum() + decoder) + prior - 0.5 * D * math.log(2 * math.pi * math.e * S**2))


class OptimalVariance(nn.Module):
    def __init__(self, sched: Schedule, betas: np.ndarray):
        super().__init__()
        self.mean = GaussianMixture([1.0], torch.tensor(M)[None], S).net(sched, "x0")
        v = variances(betas)
        f = (np.log(v["optimal"]) - np.log(v["beta_tilde"])) / (np.log(betas) - np.log(v["beta_tilde"]))
        self.register_buffer("raw", torch.tensor(2 * f - 1))

    def forward(self, x_t, t):
        raw = self.raw[t.round().long() - 1][:, None].expand_as(x_t)
        return torch.cat([self.mean(x_t, t), raw.to(x_t.dtype)], dim=1)


def monte_carlo(sched: Schedule, betas: np.ndarray, choice: str, n: int) -> tuple[float, float, float]:
    gm = GaussianMixture([1.0], torch.tensor(M)[None], S)
    if choice == "optimal":
        den, variance = Denoiser(OptimalVariance(sched, betas), sched, "x0", learned_variance=True), None
    else:
        den, variance = Denoiser(gm.net(sched, "x0"), sched, "x0"), choice
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(n, g)
    start = time.perf_counter()
    total = losses.prior_kl(sched, x0)
    for t in range(1, sched.T + 1):
        total = total + losses.bound_term(den, x0, t, generator=g, variance=variance, discrete=False)
    seconds = time.perf_counter() - start
    gap = (total + gm.log_prob(x0)).numpy()
    return float(gap.mean()), float(gap.std() / math.sqrt(n)), seconds


def table(n: int) -> str:
    schedules = [("linear T=20, β 0.02→0.5", Schedule.linear(20, 0.02, 0.5)),
                 ("linear T=100, β 1e-3→0.1", Schedule.linear(100, 1e-3, 0.1)),
                 ("cosine T=100", Schedule.cosine(100)),
                 ("linear T=1000 (DDPM)", Schedule.linear(1000))]
    lines = ["| schedule | σ² | expected gap (nats/example) | MC gap ± SE | bits/dim gap | "
             f"T-term bound, n={n} (s) |", "|---|---|---:|---:|---:|---:|"]
    for name, sched in schedules:
        betas = sched.betas.numpy()
        for choice in ("beta", "beta_tilde", "optimal"):
            exp = expected_gap(betas, choice)
            if sched.T <= 100:
                mc, se, sec = monte_carlo(sched, betas, choice, n)
                mc_text, sec_text = f"{mc:.4f} ± {se:.4f}", f"{sec:.1f}"
            else:
                mc_text, sec_text = "—", "—"
            line = (f"| {name} | {choice} | {exp:.4f} | {mc_text} | {exp / (D * math.log(2)):.4f} | "
                    f"{sec_text} |")
            print(line, flush=True)
            lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="examples for the Monte-Carlo gap")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (f"## Variational bound vs exact NLL (Gaussian data) — {date.today()}\n\n"
              f"{platform.machine()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f} "
              f"at start), Python {sys.version.split()[0]}, torch {torch.__version__}, numpy "
              f"{np.__version__}. x_0 ~ N((0.3, −0.5), 0.4² I), ideal denoiser, continuous decoder.\n"
              f"Command: `.venv/bin/python benchmarks/bound_gap.py --n {args.n}`\n")
    print(header)
    body = table(args.n)
    if args.write:
        write_section("bound_gap", header + "\n" + body)


if __name__ == "__main__":
    main()
