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


def weights_file(path: str | Path) -> Path:
    """A run folder means its trained weights (checkpoint.pt, else model.safetensors); a file is
    taken as it is."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoint.pt", "model.safetensors", "best.pt"):
            if (p / name).is_file():
                return p / name
        raise LabelenhError(f"run folder {p} holds no checkpoint.pt or model.safetensors: pass a "
                            "trained run's folder or a weights file")
    return p


def is_safetensors(path: str | Path) -> bool:
    return Path(path).suffix == ".safetensors"


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a .safetensors file (a format that holds tensors only: nothing can run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LabelenhError(f"weights file {path} does not exist; pass the path of a saved state_dict")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise LabelenhError(f"cannot read weights {path} ({one_line(e, 120)}): it must be a complete "
                            ".safetensors file, e.g. safetensors.torch.save_file(model.state_dict(), path)") from None
    return _strip_prefixes(state)


def _strip_prefixes(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        while key.startswith(_PREFIXES):
            key = key[len(next(p for p in _PREFIXES if key.startswith(p))) :]
        out[key] = value
    return out


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Module names of the model's classifier: timm's `pretrained_cfg["classifier"]` (what timm
    itself resets when a checkpoint's class count differs), else the last Linear layer."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, dict) else None
    if names:
        return [names] if isinstance(names, str) else list(names)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[-1:]


def reset_classifier(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """`state` with the classifier tensors whose shapes do not fit `model` replaced by the model's
    own (freshly initialised) ones, as timm does when it adapts pretrained weights to another
    number of classes. Returns the new state and the keys replaced."""
    own = model.state_dict()
    heads = tuple(p + "." for p in classifier_prefixes(model))
    out, replaced = dict(state), []
    for key, value in state.items():
        if key.startswith(heads) and key in own and tuple(value.shape) != tuple(own[key].shape):
            out[key] = own[key]
            replaced.append(key)
    return out, replaced


def head_hint(model: nn.Module, key: str) -> str:
    """Advice for a misshapen tensor: --reset-head when it belongs to the classifier."""
    heads = tuple(p + "." for p in classifier_prefixes(model))
    return "; pass --reset-head to start a new classifier for this dataset" if key.startswith(heads) else ""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a plain state_dict, or the one under a "model" / "state_dict" key, from `path`
    (a .safetensors file, a torch file, or a run folder's weights).

    Loaded with `weights_only=True` (no arbitrary code runs); wrapper prefixes are stripped.
    """
    path = weights_file(path)
    if is_safetensors(path):
        return read_safetensors(path)
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


def load_weights(model: nn.Module, path: str | Path, *, model_name: str, num_classes: int,
                 reset_head: bool = False) -> list[str]:
    """Load `path` into `model` strictly; any missing, extra or misshapen tensor is an error, but
    with `reset_head` a classifier of another shape keeps the model's fresh one (the keys are
    returned)."""
    state = read_state_dict(path)
    replaced: list[str] = []
    if reset_head:
        state, replaced = reset_classifier(model, state)
    expected = model.state_dict()
    where = f"weights {Path(path)} do not fit {model_name} with {num_classes} classes"
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise LabelenhError(
                f"{where}: {key} is {list(value.shape)}, expected {list(expected[key].shape)}"
                f"{head_hint(model, key)}"
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
    return replaced


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
