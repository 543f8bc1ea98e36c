"""noisecraft: denoising diffusion models in pure PyTorch, exact where others approximate."""

from . import data, metrics, nets
from .analytic import GaussianMixture
from .denoiser import Denoised, Denoiser
from .errors import DataError, NoisecraftError, RunError
from .schedule import Schedule

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Denoised",
    "Denoiser",
    "GaussianMixture",
    "NoisecraftError",
    "RunError",
    "Schedule",
    "data",
    "metrics",
    "nets",
    "__version__",
]
