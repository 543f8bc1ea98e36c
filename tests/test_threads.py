"""The Python API's CPU-thread default is the CLI's, applied lazily and never over a user's choice."""

import os
import sys
from pathlib import Path

import pytest
import torch

from noisecraft import threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import train, vector_config  # noqa: E402


@pytest.fixture
def small_machine(monkeypatch):
    """A 2-CPU machine without OMP_NUM_THREADS, torch at its import-time count, nothing settled."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    torch.set_num_threads(3)
    monkeypatch.setattr(threads, "_at_import", 3)
    monkeypatch.setattr(threads, "_settled", False)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("threads") / "run"
    train(path, *vector_config(steps=1))
    return path


def test_import_changes_nothing_and_load_run_applies_the_default_once(small_machine, run_dir):
    import noisecraft

    assert torch.get_num_threads() == 3            # importing noisecraft left torch alone
    noisecraft.load_run(run_dir)
    assert torch.get_num_threads() == 1            # as the CLI does on a 2-CPU machine
    torch.set_num_threads(2)
    noisecraft.load_run(run_dir)
    assert torch.get_num_threads() == 2            # once only: a later choice is kept


def test_a_count_chosen_by_the_user_is_kept(small_machine, run_dir):
    import noisecraft

    torch.set_num_threads(2)                       # chosen after the import
    noisecraft.load_run(run_dir)
    assert torch.get_num_threads() == 2
    threads._settled = False
    torch.set_num_threads(3)
    assert noisecraft.set_threads(4) == 4          # explicit
    noisecraft.load_run(run_dir)
    assert torch.get_num_threads() == 4


def test_trainer_applies_it_and_large_machines_are_left_alone(small_machine, tmp_path, monkeypatch):
    train(tmp_path / "run", *vector_config(steps=1))
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "_settled", False)
    torch.set_num_threads(3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads.set_threads() == 3              # default on 8 CPUs: torch's own choice
    with pytest.raises(ValueError, match="positive integer"):
        threads.set_threads(0)
