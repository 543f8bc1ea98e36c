"""Power-function EMA profiles and their post-hoc reconstruction (EDM2, Karras et al. 2024).

A power-function EMA of exponent γ ≥ 0 averages the weights θ_1 … θ_t after the first t optimizer
steps with weights growing like τ^γ:

    θ̂_γ(t) = Σ_{τ=1..t} w_τ θ_τ,   w_τ = τ^γ / S_t,   S_t = Σ_{τ=1..t} τ^γ.

It is updated exactly by θ̂ ← θ̂ + (t^γ / S_t)(θ_t − θ̂), since (S_{t−1}/S_t) w^{(t−1)}_τ = w^{(t)}_τ.
Unlike a fixed-decay EMA its length grows with the run: its relative standard deviation
σ_rel (the std of τ/t under w) is a constant of γ, σ_rel² = (γ+1) / ((γ+2)² (γ+3)) (the
continuous-time value EDM2 names profiles by); γ = 0 is the uniform average, σ_rel = 1/√12.

The trainer (``config.train.ema_profiles``) tracks a few profiles in ``phema.safetensors`` and, every
``snapshot_every`` steps, keeps a copy as ``phema-STEP.safetensors``. Each snapshot (γ_k, t_j) is a
known weight vector over τ, so any other profile (γ*, t*) with t* within the snapshots is
approximated by the snapshot combination Σ x_jk θ̂_{γk}(t_j) whose weight vector is closest to
it in least squares (:func:`solve_coefficients`). The weights are the exact discrete ones, so a
stored profile is reproduced exactly; ``residual`` (relative L2 distance of the weight vectors)
says how far a target is from the snapshots' reach.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import UNIFORM_SIGMA_REL, parse_sigma_rels
from .errors import RunError
from .io import atomic_write, read_safetensors, tensors_to_bytes
from .rundir import (
    CONFIG,
    EMA_WEIGHTS,
    MODEL,
    STATE,
    check_run_dir,
    check_step,
    read_committed,
    read_config,
    read_state,
)

PHEMA = "phema.safetensors"                    # the tracked profiles at the checkpoint's step
SNAPSHOT = "phema-{step:09d}.safetensors"      # an immutable copy, every snapshot_every steps
SNAPSHOT_RE = re.compile(r"^phema-(\d{9,})\.safetensors$")
# A target whose weight vector the snapshots miss by more than this (relative L2) is refused:
# reconstructions inside the stored σ_rel range measure below 1e-2 (tests/test_posthoc_ema.py).
MAX_RESIDUAL = 0.05


# --------------------------------------------------------------------------- the profiles
def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 of the profile of relative std ``sigma_rel`` ∈ (0, 1/√12]: the largest
    real root of (γ+2)²(γ+3) = (γ+1)/σ_rel², a cubic γ³ + 7γ² + (16 − s)γ + 12 − s, s = σ_rel⁻²."""
    if not (isinstance(sigma_rel, int | float) and 0 < sigma_rel <= UNIFORM_SIGMA_REL):
        raise ValueError(f"EMA length sigma_rel must be in (0, {UNIFORM_SIGMA_REL:.4f}] (1/sqrt(12) "
                         f"is the uniform average), got {sigma_rel!r}")
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return max(0.0, float(roots[np.abs(roots.imag) < 1e-9].real.max()))


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def profile_weights(gamma: float, t: int, horizon: int) -> np.ndarray:
    """w_τ = τ^γ / S_t for τ = 1..t and 0 for t < τ ≤ horizon (float64, length ``horizon``)."""
    tau = np.arange(1, horizon + 1, dtype=np.float64)
    w = np.where(tau <= t, tau ** gamma, 0.0)
    return w / w.sum()


def solve_coefficients(stored: Sequence[tuple[float, int]], target: tuple[float, int],
                       chunk: int = 1 << 16) -> tuple[np.ndarray, float]:
    """Least-squares x with Σ_i x_i w(γ_i, t_i) ≈ w(γ*, t*): the coefficients and the relative
    residual ‖Σ x_i w_i − w*‖ / ‖w*‖. Solved on the weight vectors themselves, not the normal
    equations (whose condition number is the square of an already ill-conditioned basis): the
    τ axis is folded ``chunk`` rows at a time into the R of a QR factorisation of [W | w*], so
    memory stays O(chunk × snapshots) however long the run; then R₁₁ x ≈ r by SVD."""
    horizon = max([t for _, t in stored] + [target[1]])
    m = len(stored)
    sums = [_power_sum(g, t) for g, t in stored] + [_power_sum(*target)]
    gammas = [g for g, _ in stored] + [target[0]]
    ends = [t for _, t in stored] + [target[1]]
    r = np.zeros((0, m + 1))
    for lo in range(1, horizon + 1, chunk):
        tau = np.arange(lo, min(lo + chunk, horizon + 1), dtype=np.float64)[:, None]
        block = np.where(tau <= np.array(ends), tau ** np.array(gammas), 0.0) / np.array(sums)
        r = np.linalg.qr(np.vstack([r, block]), mode="r")
    x, *_ = np.linalg.lstsq(r[:m, :m], r[:m, m], rcond=None)
    miss = np.append(r[:m, :m] @ x - r[:m, m], r[m:, m])  # the residual in the rotated basis
    norm = np.linalg.norm(r[:, m])                          # ‖w*‖, rotations keep lengths
    return x, float(np.linalg.norm(miss) / norm)


def _power_sum(gamma: float, t: int) -> float:
    """S_t = Σ_{τ=1..t} τ^γ."""
    return float((np.arange(1, t + 1, dtype=np.float64) ** gamma).sum())


# --------------------------------------------------------------------------- files
def profiles_to_bytes(sigma_rels: Sequence[float], states: Sequence[dict[str, torch.Tensor]],
                      sums: Sequence[float], step: int) -> bytes:
    """The profiles as one safetensors file: tensor ``p{k}.{name}``, metadata the σ_rel list,
    the running sums S_t (repr: exact round trip, so a resumed run continues bit for bit)."""
    tensors = {f"p{k}.{name}": v for k, state in enumerate(states) for name, v in state.items()}
    meta = {"step": str(step), "sigma_rels": json.dumps(list(sigma_rels)),
            "sums": json.dumps([repr(float(s)) for s in sums])}
    return tensors_to_bytes(tensors, meta)


def profiles_from_file(path: str | os.PathLike[str]
                       ) -> tuple[list[float], list[dict[str, torch.Tensor]], list[float], int]:
    """(σ_rels, one state dict per profile, running sums, step) of a phema file."""
    tensors, meta = read_safetensors(path)
    try:
        sigma_rels = [float(s) for s in json.loads(meta["sigma_rels"])]
        sums = [float(s) for s in json.loads(meta["sums"])]
        step = int(meta["step"])
    except (KeyError, ValueError, TypeError) as e:
        raise RunError(f"{path}: EMA-profile metadata is missing or corrupt ({e})") from None
    states: list[dict[str, torch.Tensor]] = [{} for _ in sigma_rels]
    for key, value in tensors.items():
        k, _, name = key.partition(".")
        states[int(k[1:])][name] = value
    return sigma_rels, states, sums, step


def snapshot_steps(run_dir: str | os.PathLike[str]) -> list[int]:
    """The steps of the run's committed snapshots, ascending. A snapshot renamed in by a save that
    has not committed yet (its step is past state.json's) is not one."""
    path = check_run_dir(run_dir)
    committed = read_state(path)["step"]
    steps = [int(m.group(1)) for p in path.iterdir() if (m := SNAPSHOT_RE.match(p.name))]
    return sorted(s for s in steps if s <= committed)


def read_snapshot(run_dir: str | os.PathLike[str], step: int
                  ) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    path = Path(run_dir) / SNAPSHOT.format(step=step)
    sigma_rels, states, _, stored = profiles_from_file(path)
    check_step(path, {"step": str(stored)}, step)
    return sigma_rels, states


# --------------------------------------------------------------------------- reconstruction
@dataclass
class Reconstruction:
    """A post-hoc EMA: the weights, the target, and the snapshots it was combined from."""

    weights: dict[str, torch.Tensor]
    sigma_rel: float
    step: int
    residual: float
    snapshots: list[int]
    coefficients: list[float]


def combine(stored: Sequence[tuple[float, int, dict[str, torch.Tensor]]], sigma_rel: float,
            step: int) -> Reconstruction:
    """The profile of length ``sigma_rel`` at ``step`` from stored (σ_rel, step, weights):
    Σ x_i θ̂_i in float64, cast back to each tensor's dtype; integer tensors from the last."""
    x, residual = solve_coefficients([(sigma_rel_to_gamma(s), t) for s, t, _ in stored],
                                     (sigma_rel_to_gamma(sigma_rel), step))
    last = max(stored, key=lambda item: item[1])[2]
    weights = {}
    for name, ref in last.items():
        if ref.is_floating_point():
            acc = sum(float(c) * item[2][name].double() for c, item in zip(x, stored, strict=True))
            weights[name] = acc.to(ref.dtype)
        else:
            weights[name] = ref.clone()
    return Reconstruction(weights, sigma_rel, step, residual,
                          sorted({t for _, t, _ in stored}), [float(c) for c in x])


def reconstruct(run_dir: str | os.PathLike[str], sigma_rel: float, step: int | None = None
                ) -> Reconstruction:
    """The EMA of length ``sigma_rel`` at ``step`` (default: the last snapshot's) from the run's
    snapshots up to that step. A target the snapshots cannot reach (residual > MAX_RESIDUAL: a
    length far outside the tracked ones, or a step before most snapshots) is a ValueError."""
    sigma_rel_to_gamma(sigma_rel)

    def read() -> Reconstruction:
        steps = snapshot_steps(run_dir)
        if not steps:
            raise ValueError(f"{run_dir} has no EMA snapshots; train it with --ema-profiles "
                             "0.05,0.1 --snapshot-every N to reconstruct EMA lengths afterwards")
        target = steps[-1] if step is None else step
        if not steps[0] <= target <= steps[-1]:
            raise ValueError(f"step {target} is outside the run's snapshots ({steps[0]}..{steps[-1]})")
        stored = []
        for t in (s for s in steps if s <= target):
            sigma_rels, states = read_snapshot(run_dir, t)
            stored += [(s, t, state) for s, state in zip(sigma_rels, states, strict=True)]
        return combine(stored, sigma_rel, target)

    rec = read_committed(run_dir, read)
    if rec.residual > MAX_RESIDUAL:
        tracked = sorted({s for s, *_ in _tracked(run_dir)})
        raise ValueError(f"EMA length {sigma_rel:g} is out of reach of the stored profiles "
                         f"({', '.join(f'{s:g}' for s in tracked)}): the best combination misses "
                         f"its weights by {rec.residual:.1%} (limit {MAX_RESIDUAL:.0%})")
    return rec


def _tracked(run_dir: str | os.PathLike[str]) -> list[tuple[float, int]]:
    from .config import RunConfig

    cfg: RunConfig = read_config(run_dir)
    return [(s, 0) for s in parse_sigma_rels(cfg.train.ema_profiles)]


def write_posthoc_run(run_dir: str | os.PathLike[str], sigma_rel: float,
                      out: str | os.PathLike[str], step: int | None = None) -> Reconstruction:
    """A new run directory ``out`` whose ema.safetensors is the reconstruction: config.json
    copied, state.json at the reconstruction's step (with a ``posthoc_ema`` record), and
    model.safetensors the source's raw weights when they are of that step, else the
    reconstruction too. ``out`` must not exist; it is a run to sample, not to resume."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out} exists; choose a new folder")
    rec = reconstruct(run_dir, sigma_rel, step)
    src = check_run_dir(run_dir)

    def raw_model() -> bytes | None:
        if read_state(src)["step"] != rec.step:
            return None
        tensors, meta = read_safetensors(src / MODEL)
        check_step(src / MODEL, meta, rec.step)
        return tensors_to_bytes(tensors, meta)

    model = read_committed(src, raw_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside ``out`` and renamed into place: a failure leaves no half-written run.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, widened to what the umask allows
        meta = {"step": str(rec.step)}
        ema_bytes = tensors_to_bytes(rec.weights, meta)
        atomic_write(tmp / CONFIG, (src / CONFIG).read_bytes())
        atomic_write(tmp / EMA_WEIGHTS, ema_bytes)
        atomic_write(tmp / MODEL, model if model is not None else ema_bytes)
        record: dict[str, Any] = {"source": str(src.resolve()), "sigma_rel": sigma_rel,
                                  "residual": rec.residual, "snapshots": rec.snapshots,
                                  "model": "raw" if model else "posthoc"}
        atomic_write(tmp / STATE, json.dumps({"version": 1, "step": rec.step,
                                              "posthoc_ema": record}, indent=1) + "\n")
        os.rename(tmp, out)  # an empty folder made at ``out`` meanwhile is replaced, a full one refused
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rec


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- RUN@STEP
def split_run_step(spec: str) -> tuple[str, int | None]:
    """'runs/a@400' → ('runs/a', 400); a path that exists as given, or has no '@N', is a run."""
    head, sep, tail = spec.rpartition("@")
    if not sep or not tail.isdigit() or os.path.exists(spec):
        return spec, None
    return head, int(tail)


def load_snapshot_run(run_dir: str | os.PathLike[str], step: int,
                      device: str | torch.device = "cpu") -> Any:
    """The run at snapshot ``step``, with the weights of its shortest tracked EMA profile (the one
    closest to the raw weights of that step): an earlier checkpoint of the same run, e.g. for
    autoguidance. No snapshot at ``step`` is a ValueError listing the ones there are."""
    from .run import load_run

    def read() -> tuple[Any, dict[str, torch.Tensor]]:
        steps = snapshot_steps(run_dir)
        if step not in steps:
            have = ", ".join(map(str, steps)) if steps else "none (train with --snapshot-every)"
            raise ValueError(f"{run_dir} has no EMA snapshot at step {step}; snapshots: {have}")
        sigma_rels, states = read_snapshot(run_dir, step)
        return load_run(run_dir, device=device), states[int(np.argmin(sigma_rels))]

    run, weights = read_committed(run_dir, read)
    run.net.load_state_dict(weights, strict=True)
    run.step = step
    return run


# --------------------------------------------------------------------------- choosing a length
@dataclass
class Sweep:
    """Scores of reconstructed EMA lengths under the run's own yardstick (``explain``'s: the
    digits/MNIST classifier's confident fraction, higher is better, else the sliced W2 distance
    to held-out data, lower is better)."""

    yardstick: str
    rows: list[dict[str, float]]
    best: float


def sweep(run_dir: str | os.PathLike[str], lengths: Sequence[float], *, n: int = 256,
          steps: int | None = None, seed: int = 0, held_out_n: int = 512,
          step: int | None = None) -> Sweep:
    """Reconstruct each EMA length, draw ``n`` samples with the run's sampler (same seed, so
    the lengths differ by their weights only) and score them; ``best`` is the best length."""
    from .explain.context import Context, draw, held_out
    from .explain.sampling import default_yardstick, yardstick
    from .run import load_run

    if not lengths:
        raise ValueError("sweep needs at least one EMA length")
    recs = [reconstruct(run_dir, s, step) for s in lengths]  # every length checked before sampling
    run = load_run(run_dir)
    sampler, steps = run.sampler_and_steps(None, steps)
    x, labels = held_out(run, held_out_n)
    ctx = Context(run, x, labels, seed, n, steps, default_yardstick(run))
    what, score, short = yardstick(ctx)
    rows = []
    for rec in recs:
        run.net.load_state_dict({k: v.to(run.device) for k, v in rec.weights.items()})
        rows.append({"sigma_rel": rec.sigma_rel, "residual": rec.residual,
                     "score": float(score(draw(ctx, sampler, n, steps)))})
    pick = max if short == "confident fraction" else min
    return Sweep(what, rows, pick(rows, key=lambda r: r["score"])["sigma_rel"])
