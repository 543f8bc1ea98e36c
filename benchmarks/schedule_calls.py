"""Per-call CPU cost of Schedule.marginal / log_snr / posterior_coefficients.

These run once or twice per sampler step and per training batch, on tiny tensors, so their cost
is dispatcher overhead and host syncs rather than arithmetic. Prints one row per call.

    .venv/bin/python benchmarks/schedule_calls.py
"""

from __future__ import annotations

import timeit

import torch

from noisecraft import Schedule


def main() -> None:
    torch.set_num_threads(1)
    sched = Schedule.linear(1000)
    t_int = torch.randint(1, 1001, (128,), generator=torch.Generator().manual_seed(0)).double()
    t_frac = t_int - 0.5
    cases = {
        "marginal(integer t, batch 128)": lambda: sched.marginal(t_int),
        "marginal(fractional t, batch 128)": lambda: sched.marginal(t_frac),
        "marginal(500)": lambda: sched.marginal(500),
        "log_snr(integer t, batch 128)": lambda: sched.log_snr(t_int),
        "log_snr(fractional t, batch 128)": lambda: sched.log_snr(t_frac),
        "posterior_coefficients(integer t)": lambda: sched.posterior_coefficients(t_int),
        "posterior_coefficients(fractional t, s)":
            lambda: sched.posterior_coefficients(t_frac, t_frac - 0.25),
    }
    print(f"{'call':42s} {'µs/call (best of 5)':>20s}")
    for name, fn in cases.items():
        n = 2000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        print(f"{name:42s} {best * 1e6:20.1f}")


if __name__ == "__main__":
    main()
