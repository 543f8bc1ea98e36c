"""The training loop: AdamW, warm-up, clipping, EMA, accumulation, checkpoints, DDP.

One optimizer step draws ``accum`` micro-batches x_0, for each a per-example loss
(``losses.objective(config.train.loss)``, t from ``config.train.time_sampler`` with its importance
weights, ε ~ N(0, I)), averages it over the batch and the micro-batches, clips the gradient
norm, steps AdamW and moves the EMA. Under ``torchrun`` the network is wrapped in
DistributedDataParallel, which averages the gradients over ranks; everything else is the same
code. Only rank 0 writes files.

Reproducibility: on the CPU a run is a function of its config. All randomness comes from a
per-rank training generator (t, ε, label dropout), torch's global RNG (dropout, flips) and the
data order (seed, epoch, position); a checkpoint stores all three, so N steps and N/2 steps +
``--resume`` to N give identical weights, with or without DataLoader workers (each example's
random flip has a seed of its own, see ``batches.py``).

A time budget (``config.train.max_time``, on the ``max_time_clock``) ends the run after the
first step at which the training time used reaches it, with a checkpoint there. Training time is
the optimizer steps', data loading included, read through :func:`clock` once per clock before and
once after each step; sample grids, logs and checkpoints are not counted, so the budget buys the
same training whatever their cadence, and an interrupted run loses none of it. state.json keeps
the time used on both clocks (``time_used_s``), so a resumed run continues the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, IterableDataset

from .. import losses, nets
from ..conditions import NULL_LABEL
from ..config import (
    MAX_TIME_CLOCKS,
    BuildConfig,
    ConditionConfig,
    DataConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    duration_seconds,
    parse_sigma_rels,
)
from ..data.transforms import KINDS
from ..denoiser import Denoiser
from ..errors import DataError, RunError
from ..io import PREVIOUS, atomic_write, atomic_write_many, checkpoint_file, tensors_to_bytes
from ..lock import LOCK, RunLock
from ..posthoc import PHEMA, SNAPSHOT, SNAPSHOT_RE, profiles_from_file, profiles_to_bytes
from ..run import (
    CONFIG,
    EMA_WEIGHTS,
    LOG,
    MODEL,
    OPTIMIZER,
    SAMPLES,
    STATE,
    LoadedRun,
    build_denoiser,
    check_step,
    has_checkpoint,
    load_weights,
    read_state,
)
from ..schedule import Schedule
from ..seeding import derive_seed
from . import accel, distributed
from . import checkpoint as ckpt
from .batches import BatchStream
from .ema import EMA, PowerEMA

STATE_VERSION = 1

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
assert set(CLOCKS) == set(MAX_TIME_CLOCKS)


def clock(kind: str) -> float:
    """Seconds on the ``kind`` clock: "wall" (elapsed) or "cpu" (this process's CPU time, all
    threads). The loop reads time only through here, so tests can give it a fake clock."""
    return CLOCKS[kind]()


def lr_at(step: int, train: TrainConfig, time_fraction: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Linear warm-up lr·(step + 1)/warmup over the first ``warmup`` steps, then constant, or a
    cosine decay lr·½(1 + cos(π p)) with p the fraction of the remaining steps done or
    ``time_fraction``, the fraction of a ``--max-time`` budget used, whichever is further on:
    the decay ends where training ends, at --steps or when the budget runs out. (Annealing to
    zero at the end is worth much in a short run; a budget's step count is not known ahead.)
    """
    if train.warmup and step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    if train.lr_schedule == "constant":
        return train.lr
    span = max(1, train.steps - train.warmup)
    progress = min(1.0, max((step - train.warmup) / span, time_fraction))
    return train.lr * 0.5 * (1 + math.cos(math.pi * progress))


def rank_seed(seed: int, rank: int, stream: str) -> int:
    """A 63-bit seed for one rank's ``stream``, unrelated for neighbouring seeds and ranks."""
    return derive_seed("noisecraft-train", seed, rank, stream)


def new_run_config(dataset: Dataset | IterableDataset, spec: str, *, net: str | None = None,
                   net_overrides: dict[str, Any] | None = None,
                   schedule: str = BuildConfig.schedule, T: int = BuildConfig.timesteps,
                   prediction: str = BuildConfig.prediction, class_conditional: bool = False,
                   sigma_data: float = BuildConfig.sigma_data,
                   train: TrainConfig | None = None, sampling: SamplingConfig | None = None,
                   condition: ConditionConfig | None = None) -> RunConfig:
    """The config of a new run: preset ``net`` (default: ``nets.DEFAULT_PRESETS`` for the data's
    kind) sized to ``dataset`` (``dataset.info``) and the schedule ``schedule`` with ``T`` steps.
    Pixels and spectrograms sample with x̂_0 clipped to [−1, 1], their range; latent and vector
    runs clip x̂_0 to the range of their training data (:func:`training_range`), which
    holds every exact posterior mean E[x_0 | x_t] (a convex combination of data points), so the
    clip only removes the network's error — the error that 1/α_t amplifies ~10⁴-fold at the end
    of a cosine schedule. Images draw 64-picture grids, audio 8, vectors plot 2,000 points. A
    class-conditional run's label dropout defaults to ``config.CLASS_COND_LABEL_DROPOUT``.

    ``condition``: kind "class" is ``class_conditional``; kind "text" loads the text encoder
    (recording its sha256 and sizing the net's ``text_dim``) and checks the captions' source."""
    info, pre = dataset.info, dataset.preprocess  # type: ignore[union-attr]
    kind = info["kind"]
    if kind not in KINDS:
        raise ValueError(f"{spec!r} is {kind} data; `noisecraft train` handles images, audio "
                         "and vectors")
    if net is None:
        net = nets.DEFAULT_PRESETS[kind]
    if net not in nets.PRESETS:
        raise ValueError(f"unknown network preset {net!r}; valid: {', '.join(nets.PRESETS)}")
    arch = nets.PRESETS[net]["arch"]
    if kind == "vector" and arch in ("unet", "dit"):
        raise ValueError(f"{spec!r} is vector data, but preset {net!r} is a network for images; "
                         "use --net mlp")
    if kind == "audio" and arch != "unet":
        raise ValueError(f"{spec!r} is audio data (n_mels × frames spectrograms), but preset {net!r} "
                         f"is not a U-Net; use --net {nets.DEFAULT_PRESETS['audio']}")
    condition = condition or ConditionConfig()
    if condition.kind == "class" or (class_conditional and condition.kind == "none"):
        class_conditional, condition = True, dataclasses.replace(condition, kind="class")
    elif class_conditional:
        raise ValueError(f"--class-cond conflicts with --condition {condition.kind}")
    text_overrides: dict[str, Any] = {}
    if condition.kind == "text":
        condition, text_overrides = _text_condition(condition, dataset, spec)
    num_classes = info.get("num_classes") if class_conditional else None
    if class_conditional and not num_classes:
        raise ValueError(f"{spec!r} has no labels, so it cannot train a class-conditional model")
    sched = Schedule.from_name(schedule, T=T)
    latent = getattr(dataset, "latent", None)  # a LatentDataset: the net sees latent images
    # Spectrograms are one-channel pictures (n_mels × frames); the U-Net is sized by the mel axis.
    overrides: dict[str, Any] = {"in_channels": info["dim"] if kind == "vector" else info["channels"],
                                 "image_size": (info["height"] if latent is not None else pre.height)
                                 if kind != "vector" else None,
                                 "T": sched.T, "num_classes": num_classes}
    overrides.update(text_overrides)
    overrides.update(net_overrides or {})
    net_config = nets.build(net, **overrides).config
    data = DataConfig(spec=spec, kind=kind, shape=list(pre.shape), num_classes=num_classes,
                      image_size=pre.image_size if kind == "image" else None,
                      channels=pre.channels if kind == "image" else None,
                      preprocess=pre.to_dict())
    if sampling is None:
        clip = training_range(dataset) if latent is not None or kind == "vector" else (-1.0, 1.0)
        sampling = SamplingConfig(clip=clip, n={"image": 64, "audio": 8}.get(kind, 2000))
    return RunConfig(net=net_config, schedule=sched.to_dict(), prediction=prediction, data=data,
                     train=train or TrainConfig(), sampling=sampling, condition=condition,
                     latent=latent, sigma_data=sigma_data)


# A latent drawn from the posterior N(mean, exp(logvar)) lies within 4 standard deviations of
# its mean but for a fraction 6·10⁻⁵ of values: the range of "sample"-posterior latents.
POSTERIOR_RANGE_STDS = 4.0


def training_range(dataset: Any) -> tuple[float, float] | None:
    """(min, max) over every value the network is trained on, in model units: vectors as held,
    a latent run's scaled latents z_s = (z − shift)·scale (posterior means, ± 4σ for "sample").
    E[x_0 | x_t] is a convex combination of training values, so it lies in this range."""
    if hasattr(dataset, "latent") and hasattr(dataset, "mean"):
        lat = dataset.latent
        means = [m for m in (dataset.mean, getattr(dataset, "mean_flipped", None)) if m is not None]
        spreads = [torch.zeros(()) for _ in means]
        if lat.posterior == "sample":
            logvars = (dataset.logvar, getattr(dataset, "logvar_flipped", None))
            spreads = [POSTERIOR_RANGE_STDS * torch.exp(0.5 * lv) for lv in logvars if lv is not None]
        lo = min(float((m - s).min()) for m, s in zip(means, spreads, strict=True))
        hi = max(float((m + s).max()) for m, s in zip(means, spreads, strict=True))
        lo, hi = (float(v) for v in lat.to_model(torch.tensor([lo, hi], dtype=torch.float64)))
        return (lo, hi) if lo < hi else None
    values = getattr(dataset, "vectors", None)
    if not isinstance(values, Tensor):
        values = torch.stack([dataset[i]["x"] for i in range(len(dataset))])
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if lo < hi else None  # constant data: nothing to clip to


def _text_condition(condition: ConditionConfig, dataset: Any, spec: str
                    ) -> tuple[ConditionConfig, dict[str, Any]]:
    """A text condition completed from the data and the encoder: the encoder's sha256, the class
    names a template uses; and the net's ``text_dim``."""
    from ..conditioning import load_text_encoder
    from ..data import resolve_format
    from ..data.captions import check_template, class_names

    info = dataset.info
    if info["kind"] != "image":
        raise ValueError(f"{spec!r} is {info['kind']} data; --condition text needs a U-Net on images")
    names = None
    if condition.caption_template is not None:
        if not info.get("num_classes"):
            raise ValueError(f"--caption-template needs labels, and {spec!r} has none; its own "
                             "captions are used without a template")
        names = class_names(info, resolve_format(spec))
        check_template(condition.caption_template, names)
    elif isinstance(dataset, Dataset) and not isinstance(dataset, IterableDataset) \
            and not dataset[0]["caption"]:
        raise ValueError(f"{spec!r} has no captions (its first example has none): pass "
                         "--caption-template, e.g. 'a picture of {name}'")
    encoder = load_text_encoder(condition.text_encoder)
    condition = dataclasses.replace(condition, text_encoder=encoder.name,
                                    text_encoder_sha256=encoder.sha256, class_names=names)
    return condition, {"text_dim": encoder.dim}


@dataclass
class TrainResult:
    """How a :meth:`Trainer.fit` call ended."""

    run_dir: Path
    step: int
    loss: float | None
    wall_time_s: float
    examples_per_s: float | None
    stopped_on_time: bool = False  # ended by config.train.max_time before config.train.steps
    time_used_s: dict[str, float] = field(default_factory=dict)  # per clock, over the whole run


# What a run directory may hold (DESIGN §2.6); anything else makes a folder foreign.
RUN_FILES = frozenset({CONFIG, MODEL, EMA_WEIGHTS, OPTIMIZER, STATE, LOG, SAMPLES, LOCK, PREVIOUS,
                       "reflow.json", "distill.json",  # written first by `noisecraft reflow|distill`
                       "tensorboard", PHEMA})  # and SNAPSHOT_RE's snapshots


class Trainer:
    """Trains ``config``'s network on ``dataset`` into ``run_dir``.

    Args:
        config: the run's configuration (written to ``config.json`` for a new run).
        run_dir: the run directory (created if missing).
        dataset: a map-style or iterable dataset yielding ``{"x", "label", ...}`` dicts
            (``noisecraft.data.load``).
        resume: continue from the checkpoint in ``run_dir`` up to ``config.train.steps``.
        device: None picks CUDA when available (one device per rank under torchrun), else CPU.
        progress: show a tqdm bar (loss, it/s, ETA) on rank 0.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, dataset: Dataset | IterableDataset,
                 *, resume: bool = False, device: str | torch.device | None = None,
                 progress: bool = True):
        from ..threads import apply_default_threads

        apply_default_threads()  # the CLI's CPU-thread default, once (see noisecraft.threads)
        self.config = config
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.resume = resume
        self.device = device
        self.progress = progress
        self.check_run_dir(self.run_dir, resume)
        if config.train.snapshot_every and not config.train.ema_profiles:
            raise ValueError("--snapshot-every needs --ema-profiles (the EMA lengths to snapshot)")
        self.net: nn.Module | None = None  # the trained network and its EMA, set by fit()
        self.ema: EMA | None = None
        self.phema: PowerEMA | None = None  # config.train.ema_profiles, when it names any

    @staticmethod
    def check_run_dir(run_dir: str | Path, resume: bool) -> None:
        """The run directory's own rules (``noisecraft train --out`` and :func:`prepare` apply
        them before loading data): a new run goes into a new or empty folder or a run directory
        with no checkpoint yet, never over a file or into a foreign folder; ``resume`` needs a
        checkpoint, a new run refuses one."""
        path = Path(run_dir)
        if resume and not path.exists():
            raise RunError(f"run directory {path} does not exist; nothing to resume")
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path}: exists and is not a folder; choose a new or empty folder")
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 checks; the writer
            Trainer._check_checkpoint_of(path, resume)  # lock's check is shared with every rank
        foreign = [p.name for p in path.iterdir() if p.name not in RUN_FILES
                   and not SNAPSHOT_RE.match(p.name)
                   and not (p.name.startswith(".") and p.name.endswith(".tmp"))  # io's temp files
                   ] if path.is_dir() and int(os.environ.get("RANK", "0")) == 0 else []
        if not resume and not (path / CONFIG).is_file() and foreign:
            # a run killed before its first save leaves only its own names (log, lock, samples)
            raise RunError(f"--out {path} is a non-empty folder that is not a run directory "
                           f"(it holds {foreign[0]!r}); choose a new or empty folder")

    @staticmethod
    def _check_checkpoint_of(path: Path, resume: bool) -> None:
        if resume and not has_checkpoint(path):
            raise RunError(f"{path / STATE}: missing; nothing to resume in {path}")
        if not resume and has_checkpoint(path):
            raise RunError(f"{path} already holds a trained run; pass --resume to continue "
                           "it or choose another --out")

    def _check_checkpoint(self) -> None:  # again under the lock: a writer may have saved since
        self._check_checkpoint_of(self.run_dir, self.resume)

    # ------------------------------------------------------------------ public
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.train.steps`` optimizer steps, or until ``config.train.max_time``
        is used (``TrainResult.stopped_on_time``), or ``stop_at`` (to simulate an interrupted
        run), and save a checkpoint there."""
        ctx = distributed.setup(self.device)
        try:
            with self._writer_lock(ctx):
                result = self._fit(ctx, stop_at)
        except BaseException:
            distributed.teardown(ctx)
            raise
        distributed.teardown(ctx, wait=True)
        return result

    @contextlib.contextmanager
    def _writer_lock(self, ctx: distributed.Context) -> Any:
        """Hold the run directory's writer lock (``noisecraft.lock``) on rank 0 for the whole
        fit; every rank raises the same one-line error when another process holds it."""
        lock, error = RunLock(self.run_dir), None
        if ctx.is_main:
            try:
                lock.acquire()
                self._check_checkpoint()  # again: another writer may have saved since __init__
            except RunError as e:
                lock.release()
                error = e
        refusal = distributed.gather_bytes(str(error).encode() if error else b"", ctx)[0]
        if error is not None:
            raise error
        if refusal:
            raise RunError(refusal.decode())
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ set-up
    def _initial_weights(self, net: nn.Module) -> None:
        """A new run's starting weights, in place: the seeded initialisation as built. A trainer
        that starts from another run's weights (a distilled student) overrides this."""

    def _fit(self, ctx: distributed.Context, stop_at: int | None) -> TrainResult:
        cfg, tc = self.config, self.config.train
        dev = ctx.device
        if ctx.is_main:
            (self.run_dir / SAMPLES).mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / CONFIG, cfg.to_json())
            if not self.resume:  # a fresh run: drop the log of one killed before its first save
                ckpt.truncate_log(self.run_dir / LOG, 0)
        distributed.barrier(ctx)

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        net = nets.from_config(cfg.net).to(dev, memory_format=accel.memory_format(dev))
        if not self.resume:
            self._initial_weights(net)
        ema = EMA(net, tc.ema_decay, tc.ema_warmup)
        opt = accel.optimizer(net.parameters(), dev, lr=tc.lr, betas=tc.adam_betas,
                              weight_decay=tc.weight_decay)
        gen = torch.Generator(device=dev).manual_seed(rank_seed(tc.seed, ctx.rank, "train"))
        torch.manual_seed(rank_seed(tc.seed, ctx.rank, "global"))
        if dev.type == "cuda":
            torch.cuda.manual_seed(rank_seed(tc.seed, ctx.rank, "cuda"))
        stream = BatchStream(self.dataset, tc.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                             seed=tc.seed, num_workers=tc.num_workers, pin_memory=dev.type == "cuda")
        self.net, self.ema = net, ema
        self.time_sampler = losses.time_sampler(tc.time_sampler, Schedule.from_dict(cfg.schedule))
        if hasattr(net, "fit_closed_form"):  # e.g. nets.linear.LinearDiffusion: solved, not trained
            if tc.ema_profiles is not None:  # one solution, no trajectory to average
                raise ValueError("--ema-profiles needs a trained net; this one is solved in "
                                 "closed form")
            return self._solve(ctx, net, ema, opt, gen, stream)
        step, wall, used = 0, 0.0, {kind: 0.0 for kind in CLOCKS}
        if tc.ema_profiles is not None:
            self.phema = PowerEMA(net, parse_sigma_rels(tc.ema_profiles))
        if self.resume:
            step, wall, used = self._restore(ctx, net, ema, opt, gen, stream)

        model: nn.Module = net
        if ctx.distributed:
            # A routed net (nets.experts) leaves the experts absent from a rank's batch unused.
            model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                            find_unused_parameters=getattr(net, "routed", False))
        if accel.use_compile(tc.compile, dev):
            model = accel.CompiledOrEager(model)
        # No clip: clamping x̂_0 is for sampling; the loss reads the raw output.
        denoiser = Denoiser(model, Schedule.from_dict(cfg.schedule), cfg.prediction,
                            learned_variance=bool(cfg.net.get("learned_variance", False)),
                            sigma_data=cfg.sigma_data)

        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        writer = _tensorboard(self.run_dir) if ctx.is_main else None
        try:
            return self._loop(ctx, model, net, ema, opt, gen, stream, denoiser, step, end, wall, used,
                              writer)
        finally:
            if writer is not None:
                writer.close()

    def _solve(self, ctx: distributed.Context, net: nn.Module, ema: EMA,
               opt: torch.optim.Optimizer, gen: torch.Generator, stream: BatchStream) -> TrainResult:
        """A net with ``fit_closed_form(dataset, schedule, prediction)`` is solved once instead of
        trained by SGD (a resumed run is solved again: same data, same answer). It is saved as an
        ordinary checkpoint at step 1, model and EMA weights equal; the loss reported is the
        run's own objective on one batch."""
        cfg = self.config
        start = {kind: clock(kind) for kind in CLOCKS}
        schedule = Schedule.from_dict(cfg.schedule)
        net.fit_closed_form(self.dataset, schedule, cfg.prediction)  # type: ignore[operator]
        ema.net.load_state_dict(net.state_dict())
        with torch.no_grad():
            loss = float(self._loss(Denoiser(net, schedule, cfg.prediction, sigma_data=cfg.sigma_data),
                                    next(stream), gen, ctx))
        used = {kind: clock(kind) - t0 for kind, t0 in start.items()}
        if ctx.is_main and cfg.train.sample_every:
            self._samples(ema.net, 1)
        self._save(ctx, 1, net, ema, opt, gen, stream, used["wall"], used)
        return TrainResult(run_dir=self.run_dir, step=1, loss=loss, wall_time_s=used["wall"],
                           examples_per_s=None, time_used_s=used)

    # ------------------------------------------------------------------ the loop
    def _loop(self, ctx: distributed.Context, model: nn.Module, net: nn.Module, ema: EMA,
              opt: torch.optim.Optimizer, gen: torch.Generator, stream: BatchStream, denoiser: Any,
              step: int, end: int, wall: float, used: dict[str, float], writer: Any) -> TrainResult:
        from ..progress import Bar

        tc = self.config.train
        dev = ctx.device
        global_batch = tc.batch_size * tc.accum * ctx.world_size
        bar = Bar(tc.steps, "train", initial=step, enabled=ctx.is_main and self.progress)
        sums = torch.zeros(2, dtype=torch.float64, device=dev)  # Σ loss, Σ grad norm since last log
        count = 0
        last_loss, last_rate = None, None
        t_start = t_log = time.perf_counter()
        wall_at_start, step_at_log = wall, step
        clip = tc.grad_clip if tc.grad_clip > 0 else math.inf
        budget = duration_seconds(tc.max_time) if tc.max_time is not None else math.inf
        time_used = dict(used)  # training time of the run so far, per clock
        spent = self._spent(time_used, ctx)
        out_of_time = spent >= budget  # a resumed run whose budget is used up
        if out_of_time:
            end = step
        try:
            while step < end:
                before = {kind: clock(kind) for kind in CLOCKS}
                lr = lr_at(step, tc, spent / budget)
                for group in opt.param_groups:
                    group["lr"] = lr
                for micro in range(tc.accum):
                    batch = next(stream)
                    # DDP all-reduces gradients on backward; skip it until the last micro-batch.
                    last = micro == tc.accum - 1
                    sync = contextlib.nullcontext() if last or not ctx.distributed else model.no_sync()
                    with sync:
                        loss = self._loss(denoiser, batch, gen, ctx)
                        (loss / tc.accum).backward()
                    sums[0] += loss.detach().double() / tc.accum
                grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                sums[1] += grad_norm.detach().double()
                count += 1
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema.update(net)
                if self.phema is not None:
                    self.phema.update(net)
                step += 1
                bar.update(1)
                time_used = {kind: time_used[kind] + clock(kind) - before[kind] for kind in CLOCKS}
                spent = self._spent(time_used, ctx)
                if spent >= budget:
                    out_of_time, end = True, step  # this step is the last: log, sample, save

                if step % tc.log_every == 0 or step == end:
                    now = time.perf_counter()
                    mean = distributed.mean_over_ranks(sums / count, ctx)
                    last_loss = float(mean[0])
                    last_rate = global_batch * (step - step_at_log) / (now - t_log)
                    if not math.isfinite(last_loss):  # a user-fixable divergence: one-line error
                        raise ValueError(f"the training loss became {last_loss} by step {step}; "
                                         "lower --lr or raise --warmup")
                    record = {"step": step, "loss": last_loss, "grad_norm": float(mean[1]), "lr": lr,
                              "examples_per_s": last_rate,
                              "elapsed_s": wall_at_start + now - t_start}
                    if ctx.is_main:
                        self._log(record, writer)
                        bar.set_postfix(loss=f"{last_loss:.4f}")
                    sums.zero_()
                    count, t_log, step_at_log = 0, now, step
                if ctx.is_main and tc.sample_every and (step % tc.sample_every == 0 or step == end):
                    self._samples(ema.net, step)
                snapshot = self._snapshot_due(step) or (
                    out_of_time and step == end and tc.snapshot_every > 0)
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == end \
                        or snapshot:
                    wall_now = wall_at_start + time.perf_counter() - t_start
                    self._save(ctx, step, net, ema, opt, gen, stream, wall_now, time_used,
                               snapshot=snapshot)
        finally:
            bar.close()
        return TrainResult(run_dir=self.run_dir, step=step, loss=last_loss,
                           wall_time_s=wall_at_start + time.perf_counter() - t_start,
                           examples_per_s=last_rate, stopped_on_time=out_of_time,
                           time_used_s=time_used)

    def _spent(self, used: dict[str, float], ctx: distributed.Context) -> float:
        """The time used on the budget's clock; under DDP the ranks' mean, so all stop together."""
        if self.config.train.max_time is None:
            return 0.0
        spent = used[self.config.train.max_time_clock]
        if ctx.distributed:
            spent = float(distributed.mean_over_ranks(torch.tensor([spent]), ctx)[0])
        return spent

    def _loss(self, denoiser: Any, batch: dict[str, Any], gen: torch.Generator,
              ctx: distributed.Context) -> Tensor:
        """The batch mean of the per-example losses (bf16 autocast as ``precision`` says)."""
        dev = ctx.device
        x0 = accel.to_memory_format(batch["x"].to(dev, non_blocking=True), accel.memory_format(dev))
        cond: dict[str, Tensor] = {}
        if self.config.condition.kind == "text":
            cond.update(self._text_condition(batch, gen, dev))
        if self.config.data.num_classes is not None:
            labels = batch["label"]
            _check_labels(labels, self.config.data.num_classes, batch.get("key"))
            labels = labels.to(dev, non_blocking=True)
            p_drop = self.config.train.label_dropout
            if p_drop > 0:
                # Classifier-free guidance: some examples train the null condition (label −1).
                drop = torch.rand(labels.shape, generator=gen, device=dev) < p_drop
                labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
            cond["labels"] = labels
        tc = self.config.train
        t, weights = self.time_sampler.sample(x0.shape[0], generator=gen, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16,
                            enabled=accel.use_bf16(tc.precision, dev)):
            per_example = losses.objective(
                tc.loss, denoiser, x0, t, generator=gen, discrete=_eight_bit(self.config),
                min_snr_gamma=tc.min_snr_gamma, hybrid_lambda=tc.hybrid_lambda, **cond).float()
        if isinstance(self.time_sampler, losses.ImportanceTimeSampler):
            # Every rank records every rank's (t, loss), so the samplers stay identical.
            t_all, loss_all = distributed.all_gather_tensors([t, per_example.detach()], ctx)
            self.time_sampler.update(t_all, loss_all)
        return (per_example * weights).mean()

    def _text_condition(self, batch: dict[str, Any], gen: torch.Generator,
                        dev: torch.device) -> dict[str, Tensor]:
        """Captions (with caption dropout) → text keywords through the embedding cache."""
        from ..conditioning import load_text_encoder, training_condition

        c = self.config.condition
        encoder = load_text_encoder(c.text_encoder, sha256=c.text_encoder_sha256)  # loaded once
        return training_condition(encoder, c, batch, gen, dev)

    # ------------------------------------------------------------------ outputs (rank 0)
    def _log(self, record: dict[str, Any], writer: Any) -> None:
        with open(self.run_dir / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key in ("loss", "grad_norm", "lr", "examples_per_s"):
                writer.add_scalar(f"train/{key}", record[key], record["step"])

    def _samples(self, ema_net: nn.Module, step: int) -> None:
        """A sample grid (images) or scatter plot (vectors) from the EMA weights, fixed seed."""
        from .. import viz
        from ..data import Preprocess

        cfg = self.config
        denoiser, schedule = build_denoiser(ema_net, cfg)
        pre = Preprocess.from_dict(cfg.data.preprocess or {})
        run = LoadedRun(self.run_dir, cfg, ema_net, denoiser, schedule, pre, step,
                        autoencoder=getattr(self.dataset, "autoencoder", None))
        was_training = ema_net.training
        ema_net.eval()
        try:
            out = run.generate(cfg.sampling.n, cfg.sampling.sampler, cfg.sampling.steps,
                               seed=cfg.train.seed, labels=run.default_labels(cfg.sampling.n),
                               prompts=run.default_prompts(cfg.sampling.n))
        finally:
            ema_net.train(was_training)
        path = self.run_dir / SAMPLES / f"step_{step:07d}.png"
        if pre.kind == "image":
            viz.save(viz.image_grid(out), path)
        elif pre.kind == "audio":
            viz.save(viz.spectrogram_grid(out), path)
        else:
            viz.save(viz.scatter(out[:, :2], reference=self._reference_points()), path)

    def _reference_points(self) -> Any:
        from ..data import Preprocess, denormalize

        data = getattr(self.dataset, "vectors", None)
        if data is None:
            return None
        pre = Preprocess.from_dict(self.config.data.preprocess or {})
        return denormalize(data[:2000, :2], pre).numpy()

    # ------------------------------------------------------------------ checkpoints
    def _save(self, ctx: distributed.Context, step: int, net: nn.Module, ema: EMA,
              opt: torch.optim.Optimizer, gen: torch.Generator, stream: BatchStream,
              wall: float, time_used: dict[str, float], snapshot: bool = False) -> None:
        """Commit a checkpoint at ``step`` (with ``snapshot``: also a post-hoc EMA snapshot)."""
        # Every rank's RNG streams, so a resume with the same world size continues each exactly.
        rng = {"train": distributed.gather_bytes(_state_bytes(gen.get_state()), ctx),
               "torch": distributed.gather_bytes(_state_bytes(torch.get_rng_state()), ctx)}
        if ctx.device.type == "cuda":
            cuda_state = torch.cuda.get_rng_state(ctx.device)
            rng["cuda"] = distributed.gather_bytes(_state_bytes(cuda_state), ctx)
        data = distributed.gather_bytes(json.dumps(stream.state()).encode(), ctx)
        if ctx.is_main:
            state = {"version": STATE_VERSION, "step": step, "world_size": ctx.world_size,
                     "lr_step": step, "lr": opt.param_groups[0]["lr"],  # the last step's
                     "ema_updates": ema.num_updates, "wall_time_s": wall, "time_used_s": time_used,
                     "time_sampler": self.time_sampler.state_dict(),
                     "data": [json.loads(d) for d in data],
                     "rng": {k: [ckpt.encode_rng(_bytes_state(b)) for b in v] for k, v in rng.items()}}
            meta = {"step": str(step)}
            files = {MODEL: tensors_to_bytes(net.state_dict(), meta),
                     EMA_WEIGHTS: tensors_to_bytes(ema.state_dict(), meta),
                     OPTIMIZER: ckpt.optimizer_to_bytes(opt, step)}
            if self.phema is not None:  # the profiles; a snapshot is a copy, in the same commit
                p = self.phema
                files[PHEMA] = profiles_to_bytes(p.sigma_rels, p.state_dicts(), p.sums, step)
                if snapshot:
                    files[SNAPSHOT.format(step=step)] = files[PHEMA]
            files[STATE] = (json.dumps(state, indent=1) + "\n").encode()  # last: the commit
            atomic_write_many(self.run_dir, files)
        distributed.barrier(ctx)

    def _snapshot_due(self, step: int) -> bool:
        """Snapshots at multiples of snapshot_every and at --steps — and where a --max-time
        budget ends the run, its planned end too — not at an interruption, so a resumed run
        keeps exactly the snapshots of an uninterrupted one."""
        every = self.config.train.snapshot_every
        return self.phema is not None and every > 0 and (
            step % every == 0 or step == self.config.train.steps)

    def _restore(self, ctx: distributed.Context, net: nn.Module, ema: EMA,
                 opt: torch.optim.Optimizer, gen: torch.Generator, stream: BatchStream
                 ) -> tuple[int, float, dict[str, float]]:
        d = self.run_dir
        state = read_state(d)
        step = state["step"]
        model_file, ema_file, opt_file = (checkpoint_file(d, name) for name in
                                          (MODEL, EMA_WEIGHTS, OPTIMIZER))
        check_step(model_file, load_weights(net, model_file), step)
        check_step(ema_file, load_weights(ema.net, ema_file), step)
        ema.num_updates = int(state.get("ema_updates", step))
        if self.phema is not None:
            phema_file = checkpoint_file(d, PHEMA)
            sigma_rels, states, sums, saved = profiles_from_file(phema_file)
            check_step(phema_file, {"step": str(saved)}, step)
            if tuple(sigma_rels) != self.phema.sigma_rels:
                raise RunError(f"{phema_file}: tracks EMA lengths {sigma_rels}, the config "
                               f"{list(self.phema.sigma_rels)}")
            self.phema.load(states, sums, step)  # profile k's t is the optimizer step
        try:
            self.time_sampler.load_state_dict(state.get("time_sampler", {}))
        except ValueError as e:
            raise RunError(f"{d / STATE}: {e}") from None
        opt_state, meta = ckpt.optimizer_state_from_file(opt_file)
        check_step(opt_file, meta, step)
        try:
            opt.load_state_dict(opt_state)
            accel.match_layouts(opt)
        except (ValueError, KeyError) as e:
            raise RunError(f"{d / OPTIMIZER}: does not fit the network ({e})") from None
        try:
            if state.get("world_size") == ctx.world_size:
                rng = state["rng"]
                gen.set_state(ckpt.decode_rng(rng["train"][ctx.rank]))
                torch.set_rng_state(ckpt.decode_rng(rng["torch"][ctx.rank]))
                if ctx.device.type == "cuda" and "cuda" in rng:
                    torch.cuda.set_rng_state(ckpt.decode_rng(rng["cuda"][ctx.rank]), ctx.device)
                pos = state["data"][ctx.rank]
                stream.seek(pos["epoch"], pos["position"])
            else:
                # A different world size deals the data differently; start fresh streams keyed by
                # the step so the run stays reproducible, though not equal to an uninterrupted one.
                gen.manual_seed(rank_seed(self.config.train.seed, ctx.rank, f"train@{step}"))
                torch.manual_seed(rank_seed(self.config.train.seed, ctx.rank, f"global@{step}"))
                stream.seek(state["data"][0]["epoch"] + 1, 0)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"{d / STATE}: corrupt RNG or data-order record ({e})") from None
        if ctx.is_main:
            ckpt.truncate_log(self.run_dir / LOG, step)
        # A checkpoint from before time budgets: its wall time is known, its CPU time is not (0).
        try:
            used = {"wall": state.get("wall_time_s", 0.0), "cpu": 0.0, **state.get("time_used_s", {})}
            used = {kind: float(used[kind]) for kind in CLOCKS}
        except (TypeError, ValueError) as e:
            raise RunError(f"{d / STATE}: corrupt time_used_s ({e})") from None
        return step, float(state.get("wall_time_s", 0.0)), used


def _check_labels(labels: Tensor, num_classes: int, keys: Any) -> None:
    """Class-conditional training needs a label in 0..K-1 on every example: a sample without
    one (label -1, e.g. a shard sample with no .cls) would silently train the null class."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        key = keys[i] if isinstance(keys, (list, tuple)) and i < len(keys) else f"#{i} of a batch"
        what = "has no label" if int(labels[i]) < 0 else f"has label {int(labels[i])}"
        raise DataError(f"training example {key!r} {what}, but this class-conditional run needs "
                        f"one in 0..{num_classes - 1} on every example")


def _eight_bit(config: RunConfig) -> bool:
    """Whether the net sees 8-bit images, for which the bound's decoder is the discretised one.
    A latent run's preprocess record is its pictures' (8-bit), but the net sees continuous,
    unbounded latents: their decoder is the Gaussian density."""
    pre = config.data.preprocess or {}
    return (config.latent is None and config.data.kind == "image"
            and list(pre.get("value_range", [])) == [0.0, 255.0])


def _state_bytes(state: Tensor) -> bytes:
    return state.cpu().numpy().tobytes()


def _bytes_state(blob: bytes) -> Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
