"""noisecraft: denoising diffusion models in pure PyTorch, exact where others approximate."""

from . import data, grids, losses, metrics, nets, noise, process, samplers, train, viz
from .analytic import GaussianMixture
from .denoiser import Denoised, Denoiser
from .errors import DataError, NoisecraftError, RunError
from .likelihood import nll
from .losses import ImportanceTimeSampler, TimeSampler, UniformTimeSampler
from .process import q_sample, q_step, reverse_mean_variance
from .samplers import SAMPLERS, sample
from .schedule import Schedule
from .train import LoadedRun, Trainer, load_run

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Denoised",
    "Denoiser",
    "GaussianMixture",
    "LoadedRun",
    "ImportanceTimeSampler",
    "NoisecraftError",
    "RunError",
    "SAMPLERS",
    "Schedule",
    "TimeSampler",
    "Trainer",
    "UniformTimeSampler",
    "data",
    "grids",
    "load_run",
    "losses",
    "metrics",
    "nets",
    "nll",
    "noise",
    "process",
    "q_sample",
    "q_step",
    "reverse_mean_variance",
    "sample",
    "samplers",
    "train",
    "viz",
    "__version__",
]
