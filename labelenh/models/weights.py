"""Loading model weights from a local file, with errors that say what does not fit."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from labelenh.errors import LabelenhError, one_line

# DataParallel/DDP save under "module.", torch.compile under "_orig_mod."
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a plain state_dict, or the one under a "model" / "state_dict" key, from `path`.

    Loaded with `weights_only=True` (no arbitrary code runs); wrapper prefixes are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelenhError(
            f"weights file {path} does not exist; pass the path of a saved state_dict"
        )
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": one line, the error's
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        # torch's own message advises weights_only=False, which would run arbitrary code
        raise LabelenhError(
            f"cannot read weights {path} ({type(e).__name__}): it must be a torch.save file of "
            "tensors in plain dicts/lists/numbers/strings, e.g. torch.save(model.state_dict(), path)"
        ) from e
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise LabelenhError(
            f"weights {path} hold no state_dict; expected a dict of tensors "
            "(or one under a 'model' or 'state_dict' key)"
        )
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise LabelenhError(
                f"weights {path} are not a state_dict: entry {key!r} is {type(value).__name__}, "
                "expected a tensor"
            )
        while key.startswith(_PREFIXES):
            key = key[len(next(p for p in _PREFIXES if key.startswith(p))) :]
        state[key] = value
    return state


def load_weights(model: nn.Module, path: str | Path, *, model_name: str, num_classes: int) -> None:
    """Load `path` into `model` strictly; any missing, extra or misshapen tensor is an error."""
    state = read_state_dict(path)
    expected = model.state_dict()
    where = f"weights {Path(path)} do not fit {model_name} with {num_classes} classes"
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise LabelenhError(
                f"{where}: {key} is {list(value.shape)}, expected {list(expected[key].shape)}"
            )
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        raise LabelenhError(f"{where}: missing {_few(missing)}")
    if extra:
        raise LabelenhError(f"{where}: unexpected {_few(extra)}")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:  # e.g. a tensor of a dtype that cannot be copied
        raise LabelenhError(f"{where}: {one_line(e)}") from None


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
