"""argparse value types: a bad flag value is a one-line usage error (exit 2) naming the value."""

from __future__ import annotations

import argparse
import math
from typing import Any


def command_parser(sub: argparse._SubParsersAction, name: str, doc: str | None, help: str,
                   example: str | None = None) -> argparse.ArgumentParser:
    """A sub-command's parser: ``help`` in the command list, the module's ``doc`` as its
    --help text (line breaks kept), and ``example`` as its epilog."""
    return sub.add_parser(name, help=help, description=doc,
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=f"example: {example}" if example else None)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN_DIR, --no-ema and --device: what every command that reads a trained run takes."""
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run directory written by `noisecraft train`")
    parser.add_argument("--no-ema", action="store_true",
                        help="use the raw weights instead of their EMA (default: the EMA)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}"
                                         ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def probability(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number in [0, 1)")
    return value


# --------------------------------------------------------------------------- torch threads
# One rule for the CLI and the Python API: see noisecraft.threads (measurements there).
from ..threads import SMALL_MACHINE_CPUS, default_threads  # noqa: E402


def add_threads(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads N``; ``default`` None means :func:`default_threads` at run time."""
    text = str(default) if default is not None else (
        f"1 on machines with at most {SMALL_MACHINE_CPUS} CPUs unless OMP_NUM_THREADS is set, "
        "else torch's own choice")
    parser.add_argument("--threads", type=positive_int, default=default, metavar="N",
                        help=f"torch intra-op CPU threads (default: {text})")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's intra-op thread count from ``--threads`` or :func:`default_threads`
    (commands without a ``--threads`` option are left alone)."""
    if not hasattr(args, "threads"):
        return
    threads = args.threads if args.threads is not None else default_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- flags from settings
def _converter(kind: type, f: Any) -> Any:
    """argparse ``type=`` for a setting: parse the text, then check it as the dataclass would,
    so a bad value is a usage error naming the flag (same wording as the dataclass's check)."""
    from ..config import Interval

    rng = Interval.parse(f.metadata["range"]) if f.metadata.get("range") else None
    if kind is str:
        return str

    def convert(text: str) -> Any:
        value = _number(text, kind)
        if rng is not None and value not in rng:
            raise argparse.ArgumentTypeError(f"{text!r} must be {rng.describe(kind is int)}")
        return kind(value)

    convert.__name__ = kind.__name__
    return convert


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_settings(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per :func:`noisecraft.config.setting` field of ``cls``: type, choices, range and
    help from the field; argparse's default is None so that a given value (0 and False
    included) can be told from an absent one; the help shows the dataclass's default."""
    import dataclasses
    import typing

    from ..config import choices_of, default_of, flag_name, settings_of, value_kind

    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (noisecraft.config)")
    for f in settings_of(cls):
        kind, length, _ = value_kind(hints[f.name])
        default = default_of(f)
        text = f.metadata["help"]
        if default is not None and default is not dataclasses.MISSING:
            text += f" (default {_show(default)})"
        flag = flag_name(cls, f)
        kw: dict[str, Any] = {"dest": flag.replace("-", "_"), "default": None, "help": text}
        if f.metadata.get("metavar") is not None:
            kw["metavar"] = f.metadata["metavar"]
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _converter(kind, f)
            choices = choices_of(f)
            if choices is not None:
                kw["choices"] = choices
            if length is not None:
                kw["nargs"] = length
        group.add_argument("--" + flag, **kw)


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` the user gave on the command line (tuples as tuples)."""
    from ..config import flag_name, settings_of

    out = {}
    for f in settings_of(cls):
        value = getattr(args, flag_name(cls, f).replace("-", "_"), None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def flat_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` given on the command line, named as the library's
    ``noisecraft.train.prepare`` takes them (the flag with ``_`` for ``-``)."""
    from ..config import flag_name, settings_of

    given = given_settings(args, cls)
    return {flag_name(cls, f).replace("-", "_"): given[f.name] for f in settings_of(cls)
            if f.name in given}


def default_of(function: Any, name: str) -> Any:
    """The default of ``function``'s keyword ``name``: a command's flag takes the library's
    default from there, so it is written once."""
    import inspect

    return inspect.signature(function).parameters[name].default


def add_student_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that trains a new run from a teacher run (reflow, distill)."""
    a = parser.add_argument
    a("--steps", type=positive_int, help="training steps (default: the teacher's)")
    a("--batch-size", type=positive_int, help="batch size (default: the teacher's)")
    a("--lr", type=positive_float, help="learning rate (default: the teacher's)")
    a("--max-time", metavar="DURATION", help="training budget such as 10m or 1.5h, on the "
      "teacher's --max-time-clock (default: the teacher's budget)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    a("--no-progress", action="store_true", help="no progress bar")
    add_threads(parser)
