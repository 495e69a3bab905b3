"""Suite-wide settings: the suite runs as two xdist workers on two cores, so each worker uses
one intra-op thread (more threads per worker only oversubscribe the cores). Tests marked
`cuda` skip where torch sees no CUDA device; `pytest -m cuda` selects them on a GPU machine."""

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # for subprocesses the tests start
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tests/clitools.py


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
