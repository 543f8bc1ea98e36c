import os
import tempfile

import pytest
import torch

# Two cores: keep each test process to one intra-op thread so pytest-xdist workers don't fight.
torch.set_num_threads(1)

# A fresh cache per test session: no test may depend on what an earlier run left in
# ~/.cache/noisecraft (CI starts with none), and none may write there.
os.environ["NOISECRAFT_CACHE"] = tempfile.mkdtemp(prefix="noisecraft-test-cache-")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def shared_data() -> str:
    """../shared/data beside the checkout; tests that need it skip cleanly when it is absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"{path} not found")
    return path


def pytest_sessionfinish(session, exitstatus) -> None:
    import shutil

    shutil.rmtree(os.environ["NOISECRAFT_CACHE"], ignore_errors=True)
