"""Training and evaluation speed of noisecraft against its peers, same network size, one process.

    .venv/bin/python benchmarks/throughput.py [--device cpu|cuda] [--size large small]
        [--batch 8] [--eval-batch 8] [--steps 2] [--rounds 3] [--threads 1] [--compile]
        [--write] [--json FILE]

Networks (the same size within a row group):
  large  the DDPM CIFAR-10 U-Net, 35.7M parameters, 3×32×32: noisecraft ``ddpm-cifar10``,
         diffusers ``UNet2DModel`` in google/ddpm-cifar10-32's configuration,
         denoising-diffusion-pytorch ``Unet(dim=64, dim_mults=(1, 2, 4, 8))`` (its default);
  small  the same shapes at a quarter of the channels (2.2M / 2.2M / 2.4M parameters).

One training step is what each library's own training loop does per step with its defaults:
noisecraft — the Trainer's step (losses.simple through the Denoiser, backward, gradient
clipping, fused AdamW, foreach EMA); diffusers — DDPMScheduler.add_noise, ε-MSE, backward,
clipping, torch's AdamW, ``EMAModel.step`` (as in its train_unconditional.py);
denoising-diffusion-pytorch — ``GaussianDiffusion(...)(x)`` (its loss), backward, clipping, Adam,
an EMA by per-tensor lerp (what ema_pytorch does; ema_pytorch itself is not installed). On CUDA
every library runs under the same bf16 autocast (``--no-bf16`` for float32/TF32), inputs in
channels_last for noisecraft (its trainer's default). One evaluation is one no-grad forward at
``--eval-batch``; noisecraft's evaluation net is held in channels_last on every device, as
``load_run`` holds it for sampling (``run.INFERENCE_MEMORY_FORMAT``), the peers' in their default
layout. On the CPU a second table gives the same calls in process CPU time.

Timing is interleaved: ``--rounds`` rounds, each timing ``--steps`` steps of every model in
turn, and the table shows medians over rounds, so a load change on a shared machine hits all
models alike. FLOPs per image come from ``torch.utils.flop_counter`` (forward + backward for
training); model FLOP utilisation (MFU) divides the achieved FLOP/s by a matrix-product rate
measured in the same run (float32 on the CPU, bf16 on CUDA). Peak memory (CUDA only: torch has
no per-phase peak on the CPU) is measured per model in a separate first pass.

denoising-diffusion-pytorch is imported with stand-in modules for its trainer-only imports
(torchvision, ema_pytorch, accelerate), which its ``Unet``/``GaussianDiffusion`` never call. The
peers come from the ``[bench]`` extra; a missing one is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from noisecraft import Denoiser, Schedule, losses, nets
from noisecraft.run import INFERENCE_MEMORY_FORMAT
from noisecraft.train import EMA, accel

SIZES = {"large": 128, "small": 32}     # noisecraft/diffusers base channels; ddp dim = base / 2
T = 1000


@dataclass
class Case:
    """One library's network with its training step and its evaluation call."""

    library: str
    size: str
    net: nn.Module
    train_step: Callable[[], None]
    evaluate: Callable[[], None]
    flops_train: float = 0.0     # per image, forward + backward
    flops_eval: float = 0.0      # per image, forward
    peak_mib: float | None = None
    compiled: bool = False
    train_s: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)
    train_cpu: list[float] = field(default_factory=list)   # process CPU-seconds, same calls
    eval_cpu: list[float] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


# ----------------------------------------------------------------------------- the libraries
def noisecraft_case(size: str, dev: torch.device, batch: int, eval_batch: int, amp: bool,
                    compile_net: bool) -> Case:
    torch.manual_seed(0)
    fmt = accel.memory_format(dev)
    net = nets.build("ddpm-cifar10", base_channels=SIZES[size]).to(dev, memory_format=fmt)
    model = accel.CompiledOrEager(net) if compile_net else net
    schedule = Schedule.linear(T)
    denoiser = Denoiser(model, schedule, "eps")
    opt = accel.optimizer(net.parameters(), dev, lr=2e-4)
    ema = EMA(net, 0.9999)
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = accel.to_memory_format(torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1, fmt)
    xe = accel.to_memory_format(torch.randn(eval_batch, 3, 32, 32, device=dev), fmt)
    te = torch.full((eval_batch,), 500.0, device=dev)

    def train_step() -> None:
        with _autocast(dev, amp):
            loss = losses.simple(denoiser, x0, generator=gen).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)

    def evaluate() -> None:
        with torch.no_grad(), _autocast(dev, amp):
            ema_model(xe, te)

    # Evaluation holds the net as load_run does for sampling (run.INFERENCE_MEMORY_FORMAT);
    # the EMA's lerp is stride-aware, so the average keeps updating in that layout.
    ema.net.to(memory_format=INFERENCE_MEMORY_FORMAT)
    ema_model = accel.CompiledOrEager(ema.net) if compile_net else ema.net
    return Case("noisecraft", size, net, train_step, evaluate)


def diffusers_case(size: str, dev: torch.device, batch: int, eval_batch: int, amp: bool,
                   compile_net: bool) -> Case:
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    c = SIZES[size]
    net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                      block_out_channels=(c, 2 * c, 2 * c, 2 * c), dropout=0.1,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).to(dev)
    model = torch.compile(net) if compile_net else net
    scheduler = DDPMScheduler(num_train_timesteps=T)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    ema = EMAModel(net.parameters(), decay=0.9999)
    ema_net = copy.deepcopy(net).eval()
    ema_model = torch.compile(ema_net) if compile_net else ema_net
    x0 = torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1
    xe = torch.randn(eval_batch, 3, 32, 32, device=dev)
    te = torch.full((eval_batch,), 500, device=dev)

    def train_step() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (batch,), device=dev)
        with _autocast(dev, amp):
            pred = model(scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(net.parameters())

    def evaluate() -> None:
        with torch.no_grad(), _autocast(dev, amp):
            ema_model(xe, te)

    return Case("diffusers", size, net, train_step, evaluate)


def ddp_case(size: str, dev: torch.device, batch: int, eval_batch: int, amp: bool,
             compile_net: bool) -> Case:
    module = _import_ddp()
    torch.manual_seed(0)
    net = module.Unet(dim=SIZES[size] // 2, dim_mults=(1, 2, 4, 8), flash_attn=True).to(dev)
    model = torch.compile(net) if compile_net else net
    diffusion = module.GaussianDiffusion(model, image_size=32, timesteps=T).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    ema_net = copy.deepcopy(net).eval().requires_grad_(False)
    ema_model = torch.compile(ema_net) if compile_net else ema_net
    x0 = torch.rand(batch, 3, 32, 32, device=dev)        # its loss takes images in [0, 1]
    xe = torch.randn(eval_batch, 3, 32, 32, device=dev)
    te = torch.full((eval_batch,), 500, device=dev)

    def train_step() -> None:
        with _autocast(dev, amp):
            loss = diffusion(x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for avg, p in zip(ema_net.parameters(), net.parameters(), strict=True):
                avg.lerp_(p, 1 - 0.9999)

    def evaluate() -> None:
        with torch.no_grad(), _autocast(dev, amp):
            ema_model(xe, te)

    return Case("denoising-diffusion-pytorch", size, net, train_step, evaluate)


def _import_ddp() -> types.ModuleType:
    """denoising_diffusion_pytorch's main module, its trainer-only imports stood in for."""
    stand_ins = {"torchvision": ["transforms", "utils"], "torchvision.transforms": [],
                 "torchvision.utils": [], "ema_pytorch": ["EMA"], "accelerate": ["Accelerator"]}
    missing = {root for root in ("torchvision", "ema_pytorch", "accelerate")
               if root not in sys.modules and importlib.util.find_spec(root) is None}
    added = []
    for name, attrs in stand_ins.items():
        if name.split(".")[0] in missing:
            stub = types.ModuleType(name)
            for attr in attrs:
                setattr(stub, attr, None)
            sys.modules[name] = stub
            added.append(name)
    try:
        return importlib.import_module("denoising_diffusion_pytorch.denoising_diffusion_pytorch")
    finally:
        for name in added:   # other libraries must not see the stand-ins
            sys.modules.pop(name, None)


LIBRARIES = {"noisecraft": noisecraft_case, "diffusers": diffusers_case,
             "denoising-diffusion-pytorch": ddp_case}


# ----------------------------------------------------------------------------- measuring
def _autocast(dev: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _seconds(fn: Callable[[], None], repeats: int, dev: torch.device) -> float:
    return _timed(fn, repeats, dev)[0]


def _timed(fn: Callable[[], None], repeats: int, dev: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU-seconds) per call. On a shared CPU the wall clock also counts
    the other tenants' time slices; the CPU time of this process does not."""
    _sync(dev)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    _sync(dev)
    return (time.perf_counter() - start) / repeats, (time.process_time() - cpu) / repeats


def _flops(fn: Callable[[], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_rate(dev: torch.device) -> tuple[float, str]:
    """A large matrix product's FLOP/s in the dtype the models' matmuls run in (the ceiling)."""
    n, dtype = (8192, torch.bfloat16) if dev.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    repeats = 10 if dev.type == "cuda" else 3
    wall, cpu = _timed(lambda: a @ b, repeats, dev)
    # On the CPU in process CPU time, as the MFU column then divides CPU-time throughput by it:
    # a wall-clock rate taken while other tenants run is too low and puts MFU above 100 %.
    seconds = wall if dev.type == "cuda" else cpu
    return 2 * n**3 / seconds, f"{n}³ {str(dtype).removeprefix('torch.')} matmul"


def prepare(case: Case, dev: torch.device, batch: int, eval_batch: int) -> None:
    """Warm-up (allocator, compilation, optimizer state), FLOPs, and peak memory on CUDA."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    for _ in range(2):
        case.train_step()
        case.evaluate()
    _sync(dev)
    if dev.type == "cuda":
        case.peak_mib = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    case.flops_train = _flops(case.train_step) / batch
    case.flops_eval = _flops(case.evaluate) / eval_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", nargs="+", default=["large", "small"], choices=list(SIZES))
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--batch", type=int, default=None, help="training batch (cpu 8, cuda 128)")
    parser.add_argument("--eval-batch", type=int, default=None, help="eval batch (cpu 8, cuda 256)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round (cpu 2, cuda 20)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median shown)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--compile", action="store_true", help="also rows with torch.compile")
    parser.add_argument("--no-bf16", action="store_true", help="CUDA: float32 instead of bf16")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    batch = args.batch or (128 if gpu else 8)
    eval_batch = args.eval_batch or (256 if gpu else 8)
    steps = args.steps or (20 if gpu else 2)
    amp = gpu and not args.no_bf16

    cases: list[Case] = []
    notes: list[str] = []
    for size in args.size:
        for compiled in ([False, True] if args.compile else [False]):
            for name in args.libraries:
                try:
                    case = LIBRARIES[name](size, dev, batch, eval_batch, amp, compiled)
                except ImportError as e:
                    notes.append(f"{name}: not installed ({e.name}); pip install noisecraft[bench]")
                    continue
                case.compiled = compiled
                case.library += " (compiled)" if compiled else ""
                prepare(case, dev, batch, eval_batch)
                print(f"prepared {case.library} {size}: {case.params:,} parameters", flush=True)
                cases.append(case)
    rate, rate_what = matmul_rate(dev)
    for _ in range(args.rounds):          # interleaved: every model once per round
        for case in cases:
            wall, cpu = _timed(case.train_step, steps, dev)
            case.train_s.append(wall)
            case.train_cpu.append(cpu)
            wall, cpu = _timed(case.evaluate, steps, dev)
            case.eval_s.append(wall)
            case.eval_cpu.append(cpu)

    rows = []
    for case in cases:
        train_s, eval_s = statistics.median(case.train_s), statistics.median(case.eval_s)
        img_s = batch / train_s
        rows.append({"library": case.library, "size": case.size, "compiled": case.compiled,
                     "params": case.params,
                     "img_per_s": img_s, "eval_ms": eval_s * 1e3, "peak_mib": case.peak_mib,
                     "img_per_cpu_s": batch / statistics.median(case.train_cpu),
                     "eval_cpu_ms": statistics.median(case.eval_cpu) * 1e3,
                     "gflop_train_per_img": case.flops_train / 1e9,
                     "mfu": (img_s if gpu else batch / statistics.median(case.train_cpu))
                     * case.flops_train / rate})
    for row in rows:   # relative to diffusers' row of the same size, compiled or not alike
        ref = next((r for r in rows if r["library"].startswith("diffusers")
                    and (r["size"], r["compiled"]) == (row["size"], row["compiled"])), None)
        row["vs_diffusers"] = row["img_per_s"] / ref["img_per_s"] if ref else None
        row["eval_vs_diffusers"] = ref["eval_ms"] / row["eval_ms"] if ref else None
        row["cpu_vs_diffusers"] = row["img_per_cpu_s"] / ref["img_per_cpu_s"] if ref else None
        row["eval_cpu_vs_diffusers"] = ref["eval_cpu_ms"] / row["eval_cpu_ms"] if ref else None

    load = os.getloadavg()[0]
    device_name = torch.cuda.get_device_name(dev) if gpu else _cpu_name()
    versions = [f"torch {torch.__version__}"] + [
        f"{m} {_version(m)}" for m in ("diffusers", "denoising-diffusion-pytorch") if _version(m)]
    header = (f"{datetime.date.today()} · {device_name} · {args.threads if not gpu else '-'} CPU "
              f"thread(s), load average {load:.1f} at the end · {', '.join(versions)} · Python "
              f"{platform.python_version()} · {'bf16 autocast' if amp else 'float32'} · train batch "
              f"{batch}, eval batch {eval_batch}, {steps} steps × {args.rounds} interleaved rounds, "
              f"medians · MFU against a {rate_what} at {rate / 1e9:,.1f} GFLOP/s measured here"
              + (" (CPU: both in process CPU time)" if not gpu else ""))
    lines = ["| network | library | parameters | train img/s | × diffusers | eval ms | "
             "× diffusers (eval) | peak MiB | train GFLOP/img | MFU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['library']} | {r['params']:,} | {r['img_per_s']:.2f} | "
            f"{_x(r['vs_diffusers'])} | {r['eval_ms']:.1f} | {_x(r['eval_vs_diffusers'])} | "
            f"{_mib(r['peak_mib'])} | "
            f"{r['gflop_train_per_img']:.2f} | {100 * r['mfu']:.1f} % |")
    if not gpu:   # the same calls in process CPU time: what a loaded machine does not distort
        lines += ["", "The same calls in CPU time of this process (one thread: the work itself, "
                  "whatever else the machine was running):", "",
                  "| network | library | train img/CPU-s | × diffusers | eval CPU-ms | "
                  "× diffusers (eval) |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['size']} | {r['library']} | {r['img_per_cpu_s']:.2f} | "
                  f"{_x(r['cpu_vs_diffusers'])} | {r['eval_cpu_ms']:.1f} | "
                  f"{_x(r['eval_cpu_vs_diffusers'])} |" for r in rows]
    command = "`.venv/bin/python benchmarks/throughput.py " + " ".join(sys.argv[1:]) + "`"
    text = "\n".join([f"## Throughput against the peers ({dev.type})", "", header, "",
                      f"Command: {command}", "", *lines, *([""] + notes if notes else [])])
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        write_section(f"throughput_{dev.type}", text)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return platform.processor() or "CPU"


if __name__ == "__main__":
    main()
