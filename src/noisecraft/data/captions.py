"""Where a text-conditioned run's captions come from: the data, or a template over its labels.

- **The data's own captions**: a WebDataset sample's ``.txt`` member (or, without one, the
  ``caption``/``text``/``prompt`` string of its ``.json`` member, see :func:`json_caption`), a
  ``.txt`` sidecar beside a picture in an image folder, the ``captions`` array of a ``.npz``.
  Readers put them under the ``"caption"`` key of each example ("" when there is none).
- **A template over the labels**: ``"a handwritten digit {name}"``, where ``{label}`` is the
  integer label and ``{name}`` the class name: the digit words "zero" … "nine" for ``digits``
  and MNIST (whose classes are the digits), the dataset's ``classes`` otherwise (the CIFAR-10
  shards' ``classes.txt``, an image folder's subfolders, a ``.npz``'s ``classes`` array).

The empty caption "" is the null condition (what caption dropout trains, and what guidance
pushes away from), so a template must not render to "".
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from typing import Any

CAPTION_SOURCES = ("data", "template")
TEMPLATE_FIELDS = ("label", "name")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
JSON_CAPTION_KEYS = ("caption", "text", "prompt")


def class_names(info: Mapping[str, Any], fmt: str | None = None) -> list[str] | None:
    """The names ``{name}`` stands for, from a dataset's ``.info`` and its reader ``fmt``
    (``data.resolve_format``): the digit words when the classes are the ten digits (``digits``:
    classes "0".."9"; an IDX folder with 10 unnamed classes, as MNIST), else the dataset's
    ``classes``; None when the data names no classes."""
    classes = info.get("classes")
    if classes is not None and list(classes) == [str(d) for d in range(10)]:
        return list(DIGIT_NAMES)
    if classes is None and fmt == "idx" and info.get("num_classes") == 10:
        return list(DIGIT_NAMES)
    return list(classes) if classes is not None else None


def check_template(template: str, names: Sequence[str] | None) -> str:
    """``template`` if it is a format string over {label} and {name} only (``{name}`` needs
    ``names``); a ValueError naming the problem otherwise."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"a caption template must be a non-empty string, got {template!r}")
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"caption template {template!r} is not a format string: {e}") from None
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(f"caption template {template!r} uses {{{unknown[0]}}}; it may use "
                         f"{{label}} (the integer) and {{name}} (the class name) only")
    if "name" in fields and not names:
        raise ValueError(f"caption template {template!r} uses {{name}}, but the data has no class "
                         "names; use {label}")
    return template


def render(template: str, labels: Sequence[int], names: Sequence[str] | None) -> list[str]:
    """The captions of ``labels`` under ``template`` (see :func:`check_template`)."""
    out = []
    for label in labels:
        label = int(label)
        if label < 0:
            raise ValueError(f"example without a label ({label}) cannot be captioned by a template")
        if names is not None and label >= len(names):
            raise ValueError(f"label {label} has no class name ({len(names)} names)")
        out.append(template.format(label=label, name=names[label] if names is not None else ""))
    return out


def json_caption(raw: bytes, where: str) -> str:
    """The caption in a shard's ``.json`` member: its first string under ``caption``, ``text``
    or ``prompt``; "" when it has none of these."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: .json member is not UTF-8 JSON: {e}") from None
    if isinstance(meta, dict):
        for key in JSON_CAPTION_KEYS:
            if isinstance(meta.get(key), str):
                return meta[key].strip()
    return ""
