"""Schedule settings that are written for a number of epochs: milestones and warm-up.

A preset or a recipe states its milestones for its own length (150/180/210 of 240 epochs).
When a run is given another length with `--epochs` and no milestones of its own, those
milestones keep their place as fractions of the run: 150/180/210 of 240 become 2/2/3 of 3.
Without this a 3-epoch run would keep milestones at epoch 150 and never decay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Keys whose values are measured in epochs of the run they were written for.
SCALED_KEYS = ("milestones", "warmup_epochs")


def scale_milestones(milestones: Sequence[int], base_epochs: int, epochs: int) -> list[int]:
    """Each milestone m of a `base_epochs` schedule at round(m * epochs / base_epochs), kept within
    the run ([1, epochs - 1]: the last epoch is index epochs - 1, so a milestone at `epochs` would
    never decay); duplicates stay, each decaying once, as torch's MultiStepLR does."""
    last = max(1, epochs - 1)
    return [min(max(1, round(m * epochs / base_epochs)), last) for m in milestones]


def scale_warmup(warmup: int, base_epochs: int, epochs: int) -> int:
    """The warm-up as the same fraction of the run, at least 1 epoch if it had any, and shorter
    than the run (a warm-up must leave epochs to train at the peak)."""
    if warmup <= 0 or epochs <= 1:
        return 0
    return min(max(1, round(warmup * epochs / base_epochs)), epochs - 1)


def scale_layers(layers: Sequence[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Scale each key of SCALED_KEYS from the layer that set it to the run's final epochs.

    `layers` go from lowest to highest precedence (defaults, recipe, preset, flags), each a dict of
    the settings it gives. A key is scaled when the epochs in force at the layer that set it differ
    from the final epochs, i.e. a higher layer changed the length but not the key. Returns the
    scaled values and, per scaled key, a note saying what happened."""
    final_epochs = None
    for _, values in layers:
        if values.get("epochs") is not None:
            final_epochs = int(values["epochs"])
    out: dict[str, Any] = {}
    notes: dict[str, str] = {}
    if final_epochs is None:
        return out, notes
    for key in SCALED_KEYS:
        epochs_here, value, source = None, None, None
        for name, values in layers:
            if values.get("epochs") is not None:
                epochs_here = int(values["epochs"])
            if values.get(key) is not None:
                value, source, base = values[key], name, epochs_here
        if value is None or source is None or base is None or base == final_epochs:
            continue
        if key == "milestones":
            new: Any = scale_milestones(list(value), base, final_epochs)
            old_text, new_text = ",".join(map(str, value)), ",".join(map(str, new))
        else:
            new = scale_warmup(int(value), base, final_epochs)
            old_text, new_text = str(value), str(new)
        if new == value:
            continue
        out[key] = new
        flag = "--" + key.replace("_", "-")
        notes[key] = (f"{key} {new_text} ({source}'s {old_text} of {base} epochs, scaled to {final_epochs}; "
                      f"pass {flag} to set them)")
    return out, notes


def schedule_text(schedule: str, epochs: int, milestones: Sequence[int], gamma: float, warmup: int,
                  lr: float, min_lr: float) -> str:
    """One line that says how the learning rate moves over the run."""
    warm = f", {warmup} warm-up epoch{'s' if warmup != 1 else ''}" if warmup else ""
    if schedule == "multistep":
        steps = ",".join(map(str, milestones)) or "none"
        return f"multistep lr {lr:g}, x{gamma:g} at epochs {steps}{warm}"
    if schedule == "cosine":
        return f"cosine lr {lr:g} -> {min_lr:g}{warm}"
    return f"constant lr {lr:g}{warm}"


def schedule_warnings(schedule: str, epochs: int, milestones: Sequence[int]) -> list[str]:
    """Milestones that a multistep run of more than one epoch never reaches (an epoch >= the
    number of epochs: the last epoch's index is epochs - 1). A one-epoch run has nothing to decay."""
    late = [m for m in milestones if m >= epochs]
    if schedule != "multistep" or not late or epochs <= 1:
        return []
    return [f"milestones {','.join(map(str, late))} are not before the last epoch ({epochs}): "
            "the learning rate never decays there; pass --milestones within the run"]
