"""Checkpoints: one dict of tensors and plain values, written atomically, read with
`torch.load(weights_only=True)` so that a checkpoint can never execute code.

Layout (`format = "labelenh.checkpoint"`, `version = 1`):
    model_name, num_classes, in_chans   what `build_model` needs to rebuild the network
    model                               the state_dict
    optimizer                           optimizer state (absent in exported teachers)
    task                                stage state, e.g. the OLS soft-label matrix
    epoch                               number of completed epochs
    engine                              early-stopping state and the per-epoch history
    config                              the resolved run configuration (JSON-able)
    metrics                             test metrics of this epoch, when evaluated
    env                                 versions, git commit, machine
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelenh.errors import LabelenhError
from labelenh.utils import atomic_write, sha256_file

FORMAT = "labelenh.checkpoint"
VERSION = 1


def plain(obj: Any) -> Any:
    """Only what `weights_only=True` loads: tensors, containers and plain scalars (numpy scalars
    and version objects become Python values or strings)."""
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    for base in (bool, int, float):  # subclasses of plain scalars (e.g. IntEnum)
        if isinstance(obj, base):
            return base(obj)
    return str(obj)  # str subclasses such as torch's TorchVersion, paths, anything else


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = plain({"format": FORMAT, "version": VERSION, **payload})

    def write(p: Path) -> None:
        # Through a Python file object: a full disk then raises OSError(ENOSPC), which
        # atomic_write reports as such; torch.save(path) would raise an opaque RuntimeError.
        with open(p, "wb") as f:
            torch.save(payload, f)

    return atomic_write(path, write)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load any torch checkpoint safely; a labelenh checkpoint or a plain state_dict."""
    path = Path(path)
    if not path.is_file():
        raise LabelenhError(f"checkpoint {path} does not exist: pass a .pt file or a run folder")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise LabelenhError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - any file at all may be passed: garbage raises anything
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        unsafe = next((ln for ln in lines if "GLOBAL" in ln), None)
        if isinstance(e, pickle.UnpicklingError) and unsafe:
            raise LabelenhError(
                f"{path} holds Python objects that a checkpoint may not contain ({unsafe}): refused "
                "for safety, nothing was executed; save tensors only, e.g. torch.save(model.state_dict(), path)"
            ) from None
        # torch's own first line advises weights_only=False, i.e. running the file's code: not shown
        why = next((ln for ln in lines if "Unsupported" in ln), None) or (
            type(e).__name__ if "weights_only" in str(e) or not lines else lines[0].split(". ")[0])
        raise LabelenhError(
            f"{path} is not a loadable checkpoint ({why[:160]}): it is truncated, damaged, not a torch "
            "file, or holds Python objects, which are refused for safety (nothing was executed); pass "
            "a .pt written by labelenh or torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(obj, dict):
        raise LabelenhError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state_dict")
    return obj


def is_labelenh_checkpoint(obj: dict[str, Any]) -> bool:
    return obj.get("format") == FORMAT


def state_dict_of(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a labelenh checkpoint or of a plain/wrapped state_dict."""
    if is_labelenh_checkpoint(obj):
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], dict):
        sd = obj["model"]
    else:
        sd = obj
    # DataParallel/DDP checkpoints prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], *, what: str, source: str | Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise LabelenhError(f"weights {source} do not fit {what}: {detail}; pass the matching --model")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise LabelenhError(
                f"weights {source} do not fit {what}: {k} is {list(v.shape)}, expected "
                f"{list(own[k].shape)}; check --model and the dataset's class count"
            )
    model.load_state_dict(sd)


def resolve_checkpoint_path(path_or_run: str | Path) -> Path:
    """A run folder means its last checkpoint; a file is taken as it is."""
    p = Path(path_or_run)
    if p.is_dir():
        for name in ("checkpoint.pt", "best.pt"):
            if (p / name).is_file():
                return p / name
        raise LabelenhError(f"run folder {p} has no checkpoint.pt: train it with `labelenh teach` first")
    if not p.exists():
        raise LabelenhError(f"teacher {p} does not exist: pass a run folder or a checkpoint file")
    return p


def load_teacher(
    path_or_run_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    model_name: str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """An eval-mode model and what the store records about it.

    A plain state_dict needs `model_name` and `num_classes`; a labelenh checkpoint carries both
    (and `num_classes`, if given, must agree)."""
    from labelenh.models import build_model

    path = resolve_checkpoint_path(path_or_run_dir)
    obj = read_checkpoint(path)
    if is_labelenh_checkpoint(obj):
        name = obj["model_name"]
        k = int(obj["num_classes"])
        if num_classes is not None and k != num_classes:
            raise LabelenhError(
                f"teacher {path} predicts {k} classes but the dataset has {num_classes}: "
                "use a teacher trained on this dataset"
            )
        in_chans = int(obj.get("in_chans", 3))
        metrics = dict(obj.get("metrics") or {})
        config = dict(obj.get("config") or {})
    else:
        if model_name is None or num_classes is None:
            raise LabelenhError(
                f"{path} is a plain state_dict: pass --model (and the dataset) so it can be rebuilt"
            )
        name, k, in_chans, metrics, config = model_name, num_classes, 3, {}, {}
    model = build_model(name, k, in_chans=in_chans)
    load_weights(model, state_dict_of(obj), what=f"{name} with {k} classes", source=path)
    model.to(device).eval()
    run_dir = path.parent if path.name in ("checkpoint.pt", "best.pt") else None
    info = {
        "name": (run_dir.name if run_dir is not None else path.stem),
        "path": str(path),
        "model": name,
        "num_classes": k,
        "in_chans": in_chans,
        "sha256": sha256_file(path),
        "metrics": metrics,
        "dataset": config.get("dataset"),
        "config": config,
    }
    return model, info
