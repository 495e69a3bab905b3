"""Reading pickled NumPy data without an unrestricted unpickle.

CIFAR's python batches and the CIFAR-N `.pt` label files are pickles of NumPy arrays, lists
and dicts. Both readers here accept only the globals that rebuild plain NumPy arrays (never
object arrays), so a hostile file cannot run code.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelenh.errors import LabelenhError

# Plain-data NumPy dtypes whose classes may appear in pickles written by NumPy >= 1.25.
_DTYPE_CLASSES = [
    "BoolDType", "Int8DType", "UInt8DType", "Int16DType", "UInt16DType", "Int32DType",
    "UInt32DType", "Int64DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType",
    "LongDType", "ULongDType", "LongLongDType", "ULongLongDType", "IntDType", "UIntDType",
    "ByteDType", "UByteDType", "ShortDType", "UShortDType", "StrDType", "BytesDType",
]  # fmt: skip


def _numpy_globals() -> dict[str, Any]:
    """Qualified name -> object for every global a plain NumPy array pickle may reference.

    Both spellings are listed: NumPy 1 writes `numpy.core.*`, NumPy 2 writes `numpy._core.*`.
    """
    core = importlib.import_module("numpy._core" if hasattr(np, "_core") else "numpy.core")
    multiarray, numeric = core.multiarray, core.numeric
    out: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        out[f"{prefix}.multiarray._reconstruct"] = multiarray._reconstruct
        out[f"{prefix}.multiarray.scalar"] = multiarray.scalar
        out[f"{prefix}.numeric._frombuffer"] = numeric._frombuffer
    dtypes = getattr(np, "dtypes", None)
    for name in _DTYPE_CLASSES:
        if dtypes is not None and hasattr(dtypes, name):
            out[f"numpy.dtypes.{name}"] = getattr(dtypes, name)
    return out


class _NumpyUnpickler(pickle.Unpickler):
    """An unpickler that can only build containers, strings, numbers and NumPy arrays."""

    _allowed = {**_numpy_globals(), "_codecs.encode": codecs.encode}

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get(f"{module}.{name}")
        if obj is None:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return obj


def load_numpy_pickle(path: Path) -> Any:
    """Unpickle a CIFAR-style file (Python 2 or 3) holding only plain NumPy data."""
    try:
        with open(path, "rb") as f:
            # latin1 is how Python 2 byte strings (and NumPy buffers inside them) round-trip.
            return _NumpyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise LabelenhError(f"cannot read pickle {path}: {e}") from e


def torch_load_numpy(path: Path) -> Any:
    """`torch.load` with weights_only=True, also allowing plain NumPy arrays inside.

    CIFAR-N's `.pt` files are dicts of NumPy arrays, which the default weights-only unpickler
    refuses; rather than an unrestricted load, the NumPy array globals are allowed, nothing else.
    """
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the errors say enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError) as e:
        raise LabelenhError(f"cannot read {path} with torch.load: {e}") from e
    allowed = [(obj, name) for name, obj in _numpy_globals().items()]
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), None)
        raise LabelenhError(
            f"cannot read {path}: it holds more than tensors and NumPy arrays"
            f"{f' ({why})' if why else ''}; save the labels as a tensor or .npy"
        ) from e
