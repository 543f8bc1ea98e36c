"""Latent datasets: a picture dataset encoded once by an autoencoder, cached on disk by content.

``noisecraft.latent.latent_dataset(pixels, ae, posterior=...)`` (one layer up, where the run's
:class:`~noisecraft.config.LatentConfig` is known) encodes every picture x to the posterior
q(z|x) = N(mean, exp(logvar)) and keeps (mean, logvar); items are then

    {"x": (z − shift) · scale, "label", "caption", "key"}

with z the posterior mean (``posterior="mean"``) or a fresh draw mean + exp(½ logvar) ε each time
the item is loaded (``"sample"``, as LDM trains; the draw uses torch's global RNG, which the
trainer seeds per example, so resumes stay exact). ``scale`` = 1/std(z) over the whole training
set makes the latents unit-variance: std² = Var(mean) for "mean", and Var(mean) + E[exp(logvar)]
for "sample" (the law of total variance), so no draw is needed to measure it.

The cache file is ``$NOISECRAFT_CACHE/latents/<key>.safetensors`` with key = sha256 of (format,
the autoencoder's sha256, the data's content hash, flips). A new autoencoder checkpoint, other
pictures, labels, captions or preprocessing give a new key, hence a fresh encoding; nothing is
ever invalidated by a timestamp. With flips the mirrored pictures are encoded as well, and an
item picks one of the two with probability ½ (the pixel-space flip, done before encoding).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from ..latentscale import scale_latent
from .datasets import NO_LABEL
from .transforms import Preprocess

CACHE_FORMAT = 1
ENCODE_BATCH = 256


def _items(dataset: Dataset | IterableDataset) -> Iterator[dict[str, Any]]:
    if isinstance(dataset, IterableDataset):
        yield from dataset
    else:
        for i in range(len(dataset)):  # type: ignore[arg-type]
            yield dataset[i]


def data_identity(dataset: Dataset | IterableDataset) -> str:
    """sha256 of what the dataset yields: every example's x, label, caption and key (sorted by
    key, so a shuffled stream has the same identity), plus the preprocessing record."""
    pre = dataset.preprocess.to_dict()  # type: ignore[union-attr]
    digest = hashlib.sha256(json.dumps({"preprocess": pre}, sort_keys=True).encode())
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and not pre.get("flip"):
        # in-memory pictures: hashing the uint8 array is the same identity at a fraction of the cost
        digest.update(b"arrays" + json.dumps([list(images.shape), str(images.dtype)]).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        for name in ("labels", "captions", "keys"):
            digest.update(json.dumps(_jsonable(getattr(dataset, name, None))).encode())
        return digest.hexdigest()
    per_item = []
    for item in _items(dataset):
        h = hashlib.sha256(item["x"].numpy().tobytes())
        h.update(json.dumps([int(item["label"]), item["caption"]]).encode())
        per_item.append((str(item["key"]), h.hexdigest()))
    for key, h in sorted(per_item):
        digest.update(f"{key}\0{h}\n".encode())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def encode_all(dataset: Dataset | IterableDataset, ae: Any, flip: bool = False,
               batch_size: int = ENCODE_BATCH, progress: bool = True) -> dict[str, Any]:
    """Every example's posterior: {"mean", "logvar" (N, C, H', W') float32, "labels" int64 (N,),
    "captions", "keys"} (+ "mean_flipped", "logvar_flipped" with ``flip``)."""
    from ..progress import Bar

    out: dict[str, list[Any]] = {k: [] for k in ("mean", "logvar", "mean_flipped", "logvar_flipped",
                                                  "labels", "captions", "keys")}
    xs: list[Tensor] = []
    count = getattr(dataset, "info", {}).get("count")
    bar = Bar(count, "encode latents", "img", enabled=progress, leave=False)

    def flush() -> None:
        x = torch.stack(xs).to(ae.device)
        for suffix, batch in (("", x), ("_flipped", x.flip(-1) if flip else None)):
            if batch is None:
                continue
            mean, logvar = ae.encode(batch)
            out["mean" + suffix].append(mean.float().cpu())
            out["logvar" + suffix].append(logvar.float().cpu())
        bar.update(len(xs))
        xs.clear()

    for item in _items(dataset):
        xs.append(item["x"])
        out["labels"].append(int(item["label"]))
        out["captions"].append(str(item["caption"]))
        out["keys"].append(str(item["key"]))
        if len(xs) == batch_size:
            flush()
    if xs:
        flush()
    bar.close()
    if not out["keys"]:
        raise ValueError(f"{getattr(dataset, 'source', 'the data')}: no examples to encode")
    result: dict[str, Any] = {k: torch.cat(v) for k, v in out.items() if k.startswith(("mean", "logvar"))
                              and v}
    result["labels"] = torch.tensor(out["labels"], dtype=torch.int64)
    result["captions"], result["keys"] = out["captions"], out["keys"]
    return result


def latent_std(mean: Tensor, logvar: Tensor, posterior: str) -> float:
    """std of z over all examples and latent values (module docstring: total variance)."""
    var = mean.double().var()
    if posterior == "sample":
        var = var + logvar.double().exp().mean()
    return float(var.sqrt())


def cache_key(ae_sha256: str, identity: str, flip: bool) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "autoencoder": ae_sha256, "data": identity,
                       "flip": flip}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_posteriors(dataset: Dataset | IterableDataset, ae: Any, flip: bool = False,
                      progress: bool = True) -> tuple[dict[str, Any], str, bool]:
    """(posteriors as :func:`encode_all` returns them, cache key, whether they came from the cache)."""
    from ..cache import cache_dir, load_arrays, save_arrays

    key = cache_key(ae.sha256, data_identity(dataset), flip)
    path = cache_dir("latents") / f"{key}.safetensors"
    if path.is_file():
        arrays, meta = load_arrays(path)
        post: dict[str, Any] = {k: torch.from_numpy(v) for k, v in arrays.items()}
        post["captions"], post["keys"] = meta["captions"], meta["keys"]
        return post, key, True
    post = encode_all(dataset, ae, flip=flip, progress=progress)
    arrays = {k: v.numpy() for k, v in post.items() if isinstance(v, Tensor)}
    save_arrays(path, arrays, {"captions": post["captions"], "keys": post["keys"],
                               "autoencoder": str(ae.path), "autoencoder_sha256": ae.sha256})
    return post, key, False


class LatentDataset(Dataset):
    """Scaled latents of a picture dataset (module docstring). ``.preprocess`` is the pictures'
    own record (how samples are turned back into uint8 images after decoding); ``.info`` describes
    the latent images the diffusion network sees; ``.latent`` is the run's ``config.LatentConfig``,
    passed in by its builder (``noisecraft.latent``): the data layer reads only its ``posterior``,
    ``scale_factor``, ``shift_factor`` and ``shape``."""

    def __init__(self, posteriors: dict[str, Any], latent: Any, preprocess: Preprocess,
                 info: dict[str, Any], source: str, cache_key: str = "", from_cache: bool = False,
                 autoencoder: Any = None):
        self.mean, self.logvar = posteriors["mean"], posteriors["logvar"]
        self.mean_flipped = posteriors.get("mean_flipped")
        self.logvar_flipped = posteriors.get("logvar_flipped")
        self.labels, self.captions, self.keys = (posteriors["labels"], posteriors["captions"],
                                                 posteriors["keys"])
        self.latent, self.preprocess, self.source = latent, preprocess, source
        self.cache_key, self.from_cache = cache_key, from_cache
        self.autoencoder = autoencoder  # a LoadedAutoencoder: training-time sample grids decode
        c, h, w = latent.shape
        self.info = {**info, "kind": "image", "channels": c, "image_size": h, "height": h, "width": w,
                     "count": len(self.keys), "latent": True}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        mean, logvar = self.mean[i], self.logvar[i]
        if self.preprocess.flip and torch.rand(()).item() < 0.5:
            mean, logvar = self.mean_flipped[i], self.logvar_flipped[i]  # type: ignore[index]
        z = mean
        if self.latent.posterior == "sample":
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape)
        label = int(self.labels[i])
        return {"x": scale_latent(z, self.latent.scale_factor, self.latent.shift_factor),
                "label": label if label >= 0 else NO_LABEL, "caption": self.captions[i],
                "key": self.keys[i]}
