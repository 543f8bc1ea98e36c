"""The ``noisecraft`` command. Each sub-command lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func``.

User errors (the library's own errors, ValueError, FileNotFoundError) are caught here, at one
place: ``noisecraft: error: <message>`` on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from ..errors import NoisecraftError
from ._args import apply_threads

# Sub-command modules, in the order `--help` lists them.
COMMAND_MODULES: list[str] = ["train", "sample", "demo", "fid", "evaluate", "data", "nll", "editing",
                              "train_autoencoder", "generate", "explain", "export", "ema",
                              "reflow", "distill"]


class _Parser(argparse.ArgumentParser):
    """argparse with the same one-line error format and exit code 2 as the rest of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"noisecraft: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="noisecraft",
        description="Denoising diffusion models in pure PyTorch: train, sample, measure.",
        epilog="Run `noisecraft COMMAND --help` for a command's options; "
               "`noisecraft demo` is the two-minute tour.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"noisecraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_threads(args)
    shown = warnings.formatwarning
    # A library warning (e.g. files skipped by --skip-bad) is one line, as errors are.
    warnings.formatwarning = lambda message, *_, **__: f"noisecraft: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except (NoisecraftError, ValueError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"noisecraft: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noisecraft: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
