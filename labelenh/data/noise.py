"""Label noise: seeded synthetic noise and human noisy labels from files (CIFAR-N).

Synthetic noise follows the row-stochastic transition matrices of the GLS/NLS code
(symmetric: P_ii = 1-eps, P_ij = eps/(K-1); pairflip: CIFAR-10's fixed pairing), but draws
from a generator seeded by the caller instead of a hard-coded seed 0, and vectorised: a
Bernoulli(eps) flip per label, then the flipped label's destination.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh.data.safepickle import torch_load_numpy
from labelenh.errors import LabelenhError

NOISE_KINDS = {
    "symmetric": "symmetric",
    "sym": "symmetric",
    "pairflip": "pairflip",
    "pair": "pairflip",
}

# The GLS/NLS repository's "pairflip" is a fixed two-way pairing of CIFAR-10 classes
# (airplane<->bird, automobile<->truck, cat<->dog, deer<->horse, frog<->ship), not i -> i+1.
PAIRFLIP_CIFAR10 = (2, 9, 0, 5, 7, 3, 8, 4, 6, 1)  # partner of class i

# The CIFAR-N command-line names -> keys of CIFAR-10_human.pt / CIFAR-100_human.pt.
CIFARN_ALIASES = {
    "clean": "clean_label",
    "aggre": "aggre_label",
    "worst": "worse_label",
    "rand1": "random_label1",
    "rand2": "random_label2",
    "rand3": "random_label3",
    "clean100": "clean_label",
    "noisy100": "noisy_label",
}


def parse_noise(spec: str) -> tuple[str, float]:
    """'symmetric:0.4' -> ('symmetric', 0.4); also 'sym:', 'pairflip:', 'pair:'."""
    kind, sep, rate = spec.strip().partition(":")
    if kind.lower() not in NOISE_KINDS or not sep:
        raise LabelenhError(
            f"bad noise spec '{spec}': use symmetric:EPS or pairflip:EPS with EPS in [0, 1]"
        )
    try:
        eps = float(rate)
    except ValueError:
        eps = math.nan
    if not 0.0 <= eps <= 1.0:  # also rejects nan
        raise LabelenhError(
            f"bad noise rate in '{spec}': give a number in [0, 1], e.g. symmetric:0.4"
        )
    return NOISE_KINDS[kind.lower()], eps


def transition_matrix(kind: str, eps: float, num_classes: int) -> torch.Tensor:
    """Row-stochastic P [K, K] with P[i, j] = P(noisy = j | clean = i)."""
    k = num_classes
    _check_kind(kind, k)
    if kind == "symmetric":
        p = torch.full((k, k), eps / (k - 1), dtype=torch.float64)
    else:
        p = torch.zeros((k, k), dtype=torch.float64)
        p[torch.arange(k), torch.tensor(PAIRFLIP_CIFAR10)] = eps
    p.fill_diagonal_(1.0 - eps)
    return p


def _check_kind(kind: str, k: int) -> None:
    """The noise kind exists and is defined for K classes (without building the K x K matrix,
    which for many classes would not fit in memory)."""
    if kind == "symmetric":
        if k < 2:
            raise LabelenhError("symmetric noise needs at least 2 classes")
    elif kind == "pairflip":
        if k != 10:
            raise LabelenhError(
                f"pairflip noise is defined for CIFAR-10's 10 classes only, got {k}; use symmetric:EPS"
            )
    else:
        raise LabelenhError(f"unknown noise kind '{kind}': use symmetric or pairflip")


def apply_noise(labels: torch.Tensor, spec: str, num_classes: int, seed: int) -> torch.Tensor:
    """Noisy copy of int64 labels [N] under `spec`, reproducible from `seed`.

    Each label flips with probability eps; a flipped label goes uniformly to one of the other
    K-1 classes (symmetric) or to its CIFAR-10 partner (pairflip), never to itself.
    """
    kind, eps = parse_noise(spec)
    _check_kind(kind, num_classes)
    y = labels.to(device="cpu", dtype=torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise LabelenhError(f"labels outside [0, {num_classes}) cannot be noised")
    gen = torch.Generator().manual_seed(int(seed))
    flip = torch.rand(y.shape, generator=gen, dtype=torch.float64) < eps  # [N]
    if kind == "symmetric":
        offset = torch.randint(
            1, num_classes, y.shape, generator=gen
        )  # uniform over the K-1 others
        flipped = (y + offset) % num_classes
    else:
        flipped = torch.tensor(PAIRFLIP_CIFAR10)[y]
    return torch.where(flip, flipped, y)


def _split_file_key(spec: str) -> tuple[Path, str | None]:
    """'FILE[:KEY]': a whole spec naming an existing file wins over a ':KEY' suffix."""
    whole = Path(spec).expanduser()
    if whole.is_file():
        return whole, None
    if ":" in spec:
        file, key = spec.rsplit(":", 1)
        path = Path(file).expanduser()
        if path.is_file():
            return path, key
    raise LabelenhError(
        f"noisy labels: no file '{spec}': give FILE[:KEY], e.g. CIFAR-10_human.pt:worst (.pt or .npy)"
    )


def _read_label_file(path: Path) -> object:
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise LabelenhError(f"noisy labels: cannot read {path} as .npy: {e}") from e
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise LabelenhError(f"noisy labels: cannot read {path} as .npz: {e}") from e
    return torch_load_numpy(path)


def _pick_array(obj: Any, path: Path, key: str | None) -> tuple[Any, Any]:
    """(the labels, the key they were under or None) of a label file's contents: a dict's
    entry named by KEY (or a CIFAR-N alias; the only one when no KEY), else the array itself."""
    if not isinstance(obj, dict):
        if key is not None:
            raise LabelenhError(f"noisy labels: {path} holds a single array, not a dict: drop ':{key}'")
        return obj, None
    keys = [str(k) for k in obj]
    if key is None:
        if len(obj) != 1:
            aliases = ", ".join(a for a, k in CIFARN_ALIASES.items() if k in obj)
            raise LabelenhError(
                f"noisy labels: {path} holds several arrays ({', '.join(keys)}): "
                f"pick one with FILE:KEY{f' (aliases: {aliases})' if aliases else ''}"
            )
        used_key = next(iter(obj))
    else:
        used_key = key if key in obj else CIFARN_ALIASES.get(key)
        if used_key not in obj:
            raise LabelenhError(
                f"noisy labels: {path} has no '{key}': keys are {', '.join(keys)} "
                f"(aliases: {', '.join(CIFARN_ALIASES)})"
            )
    return obj[used_key], used_key


def load_noisy_labels(spec: str, num_samples: int, num_classes: int) -> tuple[torch.Tensor, dict]:
    """Labels int64 [N] from 'FILE[:KEY]' (CIFAR-N .pt dict, tensor, .npy, .npz) and a record.

    KEY is a dict key (e.g. worse_label) or a CIFAR-N alias (clean, aggre, worst, rand1..3,
    clean100, noisy100). The labels must be in the dataset's train order (CIFAR-N's .pt files
    are in torchvision/python-pickle order) and cover the full train set.
    """
    path, key = _split_file_key(spec)
    obj, used_key = _pick_array(_read_label_file(path), path, key)
    if isinstance(obj, torch.Tensor):
        arr = obj.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(obj)
        except (TypeError, ValueError) as e:
            raise LabelenhError(f"noisy labels: {path}: not an array of labels ({e})") from e
    if not np.issubdtype(arr.dtype, np.integer):
        raise LabelenhError(f"noisy labels: {path}: labels must be integers, got {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.shape[0] != num_samples:
        raise LabelenhError(
            f"noisy labels: {path} has {arr.shape[0]} labels but the full train set has "
            f"{num_samples} samples (labels must follow the train set's order)"
        )
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise LabelenhError(
            f"noisy labels: {path} has labels in [{arr.min()}, {arr.max()}], outside [0, {num_classes})"
        )
    record = {"file": str(path), "key": None if used_key is None else str(used_key)}
    return torch.from_numpy(arr.astype(np.int64)), record
