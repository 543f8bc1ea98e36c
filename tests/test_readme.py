"""The README's Python example must run as printed: a newcomer copies it first."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    # What the example promises: per-example losses reduced to a scalar, samples of the asked
    # shape, and one finite bits/dim figure per example.
    assert namespace["loss"].ndim == 0 and torch.isfinite(namespace["loss"])
    assert namespace["x"].shape == (64, 2)
    assert namespace["bpd"].shape == (16,) and torch.isfinite(namespace["bpd"]).all()
