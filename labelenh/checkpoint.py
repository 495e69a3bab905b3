"""Checkpoints: one dict of tensors and plain values, written atomically, read with
`torch.load(weights_only=True)` so that a checkpoint can never execute code.

Layout (`format = "labelenh.checkpoint"`, `version = 1`):
    model_name, num_classes, in_chans   what `build_model` needs to rebuild the network
    model                               the state_dict
    model_ema                           the EMA of the weights (runs with --model-ema)
    optimizer                           optimizer state (absent in exported teachers)
    task                                stage state, e.g. the OLS soft-label matrix
    epoch                               number of completed epochs
    engine                              early-stopping state and the per-epoch history
    config                              the resolved run configuration (JSON-able)
    metrics                             test metrics of this epoch, when evaluated
    env                                 versions, git commit, machine

Every field is checked against `FIELDS` when a checkpoint is read (`RESUME_FIELDS` and
`ENGINE_FIELDS` too when a run resumes), so a malformed or edited file fails in one line.
"""

from __future__ import annotations

import pickle
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelenh import bounds as B
from labelenh.errors import LabelenhError, one_line
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
        # Through a Python file object, so that a full disk raises OSError(ENOSPC) for
        # atomic_write to report in one line (the previous checkpoint stays intact).
        with open(p, "wb") as f:
            try:
                torch.save(payload, f)
            except RuntimeError as e:
                raise _os_error_behind(e) from None

    return atomic_write(path, write)


def _os_error_behind(e: RuntimeError) -> BaseException:
    """The OSError (e.g. ENOSPC) that made torch's zip writer fail, else `e` itself.

    torch.save catches the file's OSError, then fails again while closing the archive with
    "[enforce fail at inline_container.cc] unexpected pos": the OSError is only its context."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return e


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
    if is_labelenh_checkpoint(obj):
        check_fields(obj, path, FIELDS)
        check_config(obj.get("config"), path)
    return obj


# ---- the checkpoint schema: every field a labelenh checkpoint may hold, checked on read, so a
# malformed or edited file fails here in one line instead of deep inside a caller ----------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_state_dict(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _is_metrics(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and (x is None or _is_number(x)) for k, x in v.items())


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


_IN_CHANS = B.Bound(1, 64, integer=True)
_EPOCH = B.Bound(0, B.EPOCHS.hi, integer=True)  # completed epochs

# key -> (required, what it must be, test)
Schema = dict[str, tuple[bool, str, Callable[[Any], bool]]]
FIELDS: Schema = {
    "version": (True, f"the integer {VERSION} (a newer labelenh wrote any larger one)",
                lambda v: _is_int(v) and v == VERSION),
    "model_name": (True, "a model name", lambda v: isinstance(v, str) and bool(v.strip())),
    "num_classes": (True, f"an integer in {B.NUM_CLASSES.text()}", B.NUM_CLASSES.contains),
    "in_chans": (False, f"an integer in {_IN_CHANS.text()}", _IN_CHANS.contains),
    "model": (True, "a state_dict (names -> tensors)", _is_state_dict),
    "model_ema": (False, "a state_dict (names -> tensors)", _is_state_dict),
    "optimizer": (False, "a table (the optimizer state)", _is_dict),
    "scaler": (False, "a table (the gradient scaler state)", _is_dict),
    "task": (False, "a table (the stage state)", _is_dict),
    "epoch": (False, f"an integer in {_EPOCH.text()}", _EPOCH.contains),
    "engine": (False, "a table (the training state)", _is_dict),
    "config": (False, "a table (the run configuration)", _is_dict),
    "metrics": (False, "a table of numbers", _is_metrics),
    "env": (False, "a table", _is_dict),
    "dataset": (False, "a table", _is_dict),
    "method": (False, "a table", _is_dict),
}
# What a resume needs on top: the optimiser and the engine's state.
RESUME_FIELDS: Schema = {
    "optimizer": (True, "a table (the optimizer state)", _is_dict),
    "epoch": (True, f"an integer in {_EPOCH.text()}", _EPOCH.contains),
    "engine": (True, "a table (the training state)", _is_dict),
}
ENGINE_FIELDS: Schema = {
    "step": (True, "an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "world_size": (False, "an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "best": (True, "a table with val_nll and epoch", lambda v: isinstance(v, dict) and _is_number(
        v.get("val_nll")) and (v.get("epoch") is None or _is_int(v.get("epoch")))),
    "bad_epochs": (True, "an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "history": (True, "a list of tables", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
}


def malformed(path: str | Path, what: str) -> LabelenhError:
    return LabelenhError(
        f"checkpoint {path} is malformed: {what}; it was not written by labelenh or was edited: "
        "pass the file labelenh wrote, or retrain"
    )


def _shown(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def check_fields(obj: dict[str, Any], path: str | Path, schema: Schema, prefix: str = "") -> None:
    """Every field of `schema` present when required and of its kind, else one-line LabelenhError."""
    for key, (required, what, ok) in schema.items():
        if key not in obj:
            if required:
                raise malformed(path, f"it lacks {prefix}{key} ({what})")
            continue
        if not ok(obj[key]):
            raise malformed(path, f"{prefix}{key} must be {what}, got {_shown(obj[key])}")


def check_config(config: Any, path: str | Path) -> None:
    """config.data and config.train, when present, hold only settings this version knows, of
    their types: they are turned back into DataSettings/TrainConfig (evaluate, resume)."""
    if not isinstance(config, dict):
        return
    from labelenh.data.settings import DataSettings
    from labelenh.engine import TrainConfig

    for part, cls in (("data", DataSettings), ("train", TrainConfig)):
        if part not in config:
            continue
        value = config[part]
        if not isinstance(value, dict):
            raise malformed(path, f"config.{part} must be a table, got {_shown(value)}")
        hints = typing.get_type_hints(cls)
        unknown = sorted(str(k) for k in value if k not in hints)
        if unknown:
            raise malformed(path, f"config.{part} has unknown keys {unknown}")
        for k, v in value.items():
            if not _of_type(v, hints[k]):
                raise malformed(path, f"config.{part}.{k} must be {_type_words(hints[k])}, got {_shown(v)}")


def _of_type(v: Any, hint: Any) -> bool:
    """isinstance for the simple hints of the settings dataclasses (str | None, list[int], ...)."""
    if hint is type(None):
        return v is None
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_of_type(v, a) for a in args)
    if origin is list:
        return isinstance(v, list) and all(_of_type(x, args[0]) for x in v)
    if hint is float:
        return _is_number(v)
    if hint is int:
        return _is_int(v)
    return isinstance(v, hint) if isinstance(hint, type) else True


def _type_words(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


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
    # DataParallel/DDP checkpoints prefix every key with "module."; a non-text key is no weight.
    return {k.removeprefix("module."): v for k, v in sd.items()
            if isinstance(k, str) and isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], *, what: str, source: str | Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise LabelenhError(f"weights {source} do not fit {what}: {detail}; pass the matching --model")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            from labelenh.models.weights import head_hint

            raise LabelenhError(
                f"weights {source} do not fit {what}: {k} is {list(v.shape)}, expected "
                f"{list(own[k].shape)}; check --model and the dataset's class count{head_hint(model, k)}"
            )
    try:
        model.load_state_dict(sd)
    except (RuntimeError, TypeError, ValueError) as e:  # e.g. a tensor of a dtype that cannot be copied
        raise LabelenhError(f"weights {source} do not fit {what}: {one_line(e)}") from None


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
