"""torch.distributed glue: rank facts, DDP wrapping and reductions that are no-ops in one process.

Launched under `torchrun`, the usual env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...) are
set; `init_from_env` starts the process group (NCCL on CUDA, gloo on CPU). What the stages share
across ranks:

- training: each rank trains on its slice of the per-epoch permutation (`ImagePipeline.epoch_batches`),
  DDP averages gradients, the engine sums the training statistics and averages BatchNorm
  buffers at every epoch end, so every rank holds the same model;
- evaluation: each rank runs a contiguous block of the split's batches (the single-process
  batches, unchanged) and the logits are gathered back in order (`gather_rows`), so the metrics
  equal single-process evaluation;
- export: each rank computes its share of the store's chunks into its own shard file; rank 0
  merges them (`labelenh.store.shards`). Coordination runs on a gloo group (`cpu_group`) with a
  long timeout, because rank 0's merge may take longer than NCCL's default timeout.

Rank 0 alone writes run folders, logs and stores; the other ranks print nothing to stdout.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

# Commands that share their work across ranks; the others run on rank 0 alone under torchrun.
DISTRIBUTED_COMMANDS = ("teach", "student", "export-soft-labels", "store add-teacher")
COORDINATION_TIMEOUT = timedelta(hours=12)

_cpu_group: Any = None


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def env_rank() -> int:
    """This process's rank as the launcher set it (0 outside torchrun), before any process group."""
    return int(os.environ.get("RANK", 0)) if launched_by_torchrun() else 0


def init_from_env(device: torch.device) -> torch.device:
    """Start the process group when launched by torchrun; returns this rank's device."""
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not is_distributed():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def cpu_group() -> Any:
    """A gloo group over all ranks for small control messages (works beside NCCL), created once."""
    global _cpu_group
    if _cpu_group is None:
        _cpu_group = tdist.new_group(backend="gloo", timeout=COORDINATION_TIMEOUT)
    return _cpu_group


def cli_process(argv: list[str]) -> bool:
    """Set up a CLI process under torchrun; False means this rank has nothing to do.

    Ranks other than 0 keep stderr (errors) but print nothing to stdout. Commands that do not
    share work across ranks (evaluate, store, report, views) run on rank 0 alone."""
    if not launched_by_torchrun() or env_rank() == 0:
        return True
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    words = [a for a in argv if not a.startswith("-")][:2]  # e.g. ["store", "add-teacher"]
    return bool(words) and (words[0] in DISTRIBUTED_COMMANDS or " ".join(words) in DISTRIBUTED_COMMANDS)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    tdist.all_reduce(t)
    return t.cpu().tolist()


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks.

    DDP keeps parameters equal but each rank's last forward updates its own running statistics;
    averaging them (as timm's distribute_bn does) gives every rank, and the checkpoint, the same
    model, with statistics of every rank's data."""
    if not is_distributed():
        return
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    dev = _comm_device()
    flat = torch.cat([b.detach().reshape(-1).to(dev, torch.float64) for b in bufs])
    tdist.all_reduce(flat)
    flat /= world_size()
    i = 0
    for b in bufs:
        n = b.numel()
        b.copy_(flat[i:i + n].view_as(b).to(b.dtype))
        i += n


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows [n_r, ...] in rank order. Ranks may hold different n_r, zero
    included (an empty shard may have any trailing shape). Returns a CPU tensor on every rank."""
    if not is_distributed():
        return t.cpu()
    shapes = all_gather_object(tuple(t.shape))
    counts = [s[0] for s in shapes]
    trail = next((s[1:] for s in shapes if s[0] > 0), tuple(t.shape[1:]))
    dev = _comm_device()
    padded = torch.zeros((max(counts), *trail), dtype=t.dtype, device=dev)
    if t.shape[0]:
        padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """rank src's `obj` on every rank (pickled; for small control messages)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src, group=cpu_group())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj, group=cpu_group())
    return out


def barrier() -> None:
    """Wait for every rank (on the gloo group: long waits, e.g. a merge, do not time out)."""
    if is_distributed():
        tdist.barrier(group=cpu_group())
