"""`noisecraft demo` end to end, shortened to a few steps (the full demo is measured by
benchmarks/train_throughput.py; its sample quality is reported in BENCHMARKS.md)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_writes_every_figure_and_a_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "noisecraft", "demo", "--out", str(tmp_path),
                           "--steps", "6", "--no-progress"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    for name in ("forward.png", "reverse.png", "samples.png"):
        assert Image.open(tmp_path / name).format == "PNG"
    with np.load(tmp_path / "samples.npz") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (100, 8, 8, 1)
    summary = (tmp_path / "summary.txt").read_text()
    assert "6 steps" in summary and "classes covered" in summary and "confidently classified" in summary
    assert "noisecraft explain" in summary and "report.html" in summary
    assert (tmp_path / "run" / "ema.safetensors").is_file()
    again = subprocess.run([sys.executable, "-m", "noisecraft", "demo", "--out", str(tmp_path)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a demo run" in again.stderr
