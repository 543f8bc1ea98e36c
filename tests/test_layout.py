"""Imports run one way: inference (run directories, sampling, viz, metrics, the CLI's readers)
never imports the trainer (DESIGN §3)."""

import subprocess
import sys

INFERENCE = ["noisecraft", "noisecraft.run", "noisecraft.io", "noisecraft.viz", "noisecraft.metrics",
             "noisecraft.cli.sample", "noisecraft.cli.nll", "noisecraft.cli.evaluate"]


def test_inference_never_imports_the_trainer():
    code = ("import importlib, sys\n"
            f"for m in {INFERENCE!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.startswith('noisecraft.train'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"inference imported {out.stdout.strip()}"


def test_trainer_still_reachable_from_the_top_level():
    import noisecraft as nc

    assert nc.Trainer is nc.train.Trainer
