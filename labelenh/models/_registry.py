"""Model registry: names -> factories, plus the `timm:` / `torchvision:` bridges.

Nothing here downloads anything: external models are always built with random weights, and
weights come only from a local file (`weights=path`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from torch import nn

from labelenh.errors import LabelenhError


class ModelFactory(Protocol):
    def __call__(self, num_classes: int, in_chans: int = 3) -> nn.Module: ...


F = TypeVar("F", bound=ModelFactory)

_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator adding a factory `fn(num_classes, in_chans=3) -> nn.Module` under `name`."""

    def deco(fn: F) -> F:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        if ":" in name:
            raise ValueError(f"model name {name!r} must not contain ':' (reserved for prefixes)")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registry names. `timm:<name>` and `torchvision:<name>` are accepted by `build_model` too."""
    return sorted(_MODELS, key=_natural_key)


def _natural_key(name: str) -> tuple[str, int, str]:
    # resnet8 < resnet14 < resnet110 rather than plain string order
    m = re.fullmatch(r"(.*?)(\d+)([a-z]*)", name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (name, -1, "")


def build_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    weights: str | Path | None = None,
    seed: int | None = None,
    reset_head: bool = False,
) -> nn.Module:
    """Build a classifier taking normalised float [B, in_chans, H, W] and returning logits [B, K].

    `seed` makes the random initialisation deterministic without touching the global RNG
    (None: use torch's global RNG as usual). `weights` loads a local state_dict file (torch or
    safetensors, or a run folder); `reset_head` keeps a fresh classifier where the file's has
    another shape (e.g. ImageNet weights for a 10-class dataset).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise LabelenhError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise LabelenhError(f"in_chans must be a positive integer, got {in_chans!r}")
    factory = _resolve(name)
    if seed is None:
        model = factory(num_classes, in_chans)
    else:
        # fork_rng restores the CPU RNG afterwards, so building a model never shifts other draws
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory(num_classes, in_chans)
    if weights is not None:
        from labelenh.models.weights import load_weights

        load_weights(model, weights, model_name=name, num_classes=num_classes, reset_head=reset_head)
    return model


def _resolve(name: str) -> ModelFactory:
    if not isinstance(name, str) or not name:
        raise LabelenhError(f"model name must be a non-empty string, got {name!r}")
    if name in _MODELS:
        return _MODELS[name]
    if name.startswith("timm:"):
        return _timm_factory(name[len("timm:") :])
    if name.startswith("torchvision:"):
        return _torchvision_factory(name[len("torchvision:") :])
    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise LabelenhError(
        f"unknown model {name!r}; {hint}choose one of {', '.join(list_models())}, "
        "or timm:<name> / torchvision:<name>"
    )


def _timm_factory(arch: str) -> ModelFactory:
    import timm

    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise LabelenhError(f"unknown timm model {arch!r}{hint}; see timm.list_models()")

    def factory(num_classes: int, in_chans: int = 3) -> nn.Module:
        # pretrained=False: never download; weights come only from `weights=path`
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    return factory


def _torchvision_factory(arch: str) -> ModelFactory:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f" (did you mean {', '.join('torchvision:' + c for c in close)}?)" if close else ""
        raise LabelenhError(
            f"unknown torchvision classification model {arch!r}{hint}; "
            "see torchvision.models.list_models(module=torchvision.models)"
        )

    def factory(num_classes: int, in_chans: int = 3) -> nn.Module:
        if in_chans != 3:
            raise LabelenhError(
                f"torchvision:{arch} takes 3 input channels, got in_chans={in_chans}; "
                f"use timm:{arch} or a labelenh model for other channel counts"
            )
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)

    return factory
