"""Suite-wide settings: the suite runs as two xdist workers on two cores, so each worker uses
one intra-op thread (more threads per worker only oversubscribe the cores)."""

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # for subprocesses the tests start
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tests/clitools.py
