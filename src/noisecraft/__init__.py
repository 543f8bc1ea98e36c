"""noisecraft: denoising diffusion models in pure PyTorch, exact where others approximate."""

from . import data, editing, grids, losses, metrics, nets, noise, process, samplers, viz
from .analytic import GaussianMixture
from .denoiser import Denoised, Denoiser
from .editing import decode, encode, inpaint, interpolate, sdedit
from .errors import DataError, NoisecraftError, RunError
from .guidance import Guided, interval_from_sigma
from .likelihood import nll
from .losses import ImportanceTimeSampler, TimeSampler, UniformTimeSampler
from .pipeline import Pipeline
from .process import q_sample, q_step, reverse_mean_variance
from .run import LoadedRun, load_run
from .samplers import SAMPLERS, sample
from .schedule import Schedule
from .threads import set_threads  # imported now so the API's lazy default knows torch's own count

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202
    """``noisecraft.train`` and ``noisecraft.Trainer`` load on first use, so that inference
    (``load_run``, sampling, metrics, the CLI's readers) never imports the trainer."""
    if name in ("train", "Trainer"):
        import importlib

        train = importlib.import_module(".train", __name__)
        return train if name == "train" else train.Trainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataError",
    "Denoised",
    "Denoiser",
    "GaussianMixture",
    "Guided",
    "LoadedRun",
    "ImportanceTimeSampler",
    "NoisecraftError",
    "Pipeline",
    "RunError",
    "SAMPLERS",
    "Schedule",
    "TimeSampler",
    "Trainer",
    "UniformTimeSampler",
    "data",
    "decode",
    "editing",
    "encode",
    "grids",
    "inpaint",
    "interpolate",
    "interval_from_sigma",
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
    "sdedit",
    "samplers",
    "set_threads",
    "train",
    "viz",
    "__version__",
]
