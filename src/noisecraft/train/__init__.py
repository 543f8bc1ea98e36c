"""Training and run directories: :class:`Trainer`, the run config, EMA, checkpoints, DDP, and
:func:`prepare` / :func:`train` — what ``noisecraft train`` does, as one call.

``load_run(run_dir)`` rebuilds a trained model from its run directory for sampling and
evaluation (safetensors + JSON only).
"""

from ..config import CONFIG_VERSION, DataConfig, RunConfig, SamplingConfig, TrainConfig
from ..io import atomic_write
from ..run import LoadedRun, load_run, read_config
from .ema import EMA, PowerEMA
from .setup import prepare, prepare_autoencoder, resume_config, train
from .trainer import Trainer, TrainResult, lr_at, new_run_config

__all__ = [
    "CONFIG_VERSION",
    "EMA",
    "PowerEMA",
    "DataConfig",
    "LoadedRun",
    "RunConfig",
    "SamplingConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "atomic_write",
    "load_run",
    "lr_at",
    "new_run_config",
    "prepare",
    "prepare_autoencoder",
    "resume_config",
    "train",
    "read_config",
]
