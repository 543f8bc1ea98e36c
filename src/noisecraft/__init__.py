"""noisecraft: denoising diffusion models in pure PyTorch, exact where others approximate."""

from . import data, losses, metrics, nets, process
from .analytic import GaussianMixture
from .denoiser import Denoised, Denoiser
from .errors import DataError, NoisecraftError, RunError
from .likelihood import nll
from .losses import ImportanceTimeSampler, TimeSampler, UniformTimeSampler
from .process import q_sample, q_step, reverse_mean_variance
from .schedule import Schedule

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Denoised",
    "Denoiser",
    "GaussianMixture",
    "ImportanceTimeSampler",
    "NoisecraftError",
    "RunError",
    "Schedule",
    "TimeSampler",
    "UniformTimeSampler",
    "data",
    "losses",
    "metrics",
    "nets",
    "nll",
    "process",
    "q_sample",
    "q_step",
    "reverse_mean_variance",
    "__version__",
]
