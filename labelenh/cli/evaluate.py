"""`labelenh evaluate`: checkpoint + dataset -> accuracy and calibration, before and after
temperature scaling, and a reliability diagram."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from labelenh.cli import common as c
from labelenh.data.settings import DataSettings
from labelenh.engine import TrainConfig
from labelenh.errors import LabelenhError, OutputError
from labelenh.metrics import DEFAULT_BINS
from labelenh.options import with_options


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


@with_options(DataSettings, (TrainConfig, ["ece_bins"]))
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder or a checkpoint file.")],
    options: dict[str, Any] | None = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name, needed for a plain state_dict.")] = None,
    split: Annotated[str, typer.Option("--split", help="test | val")] = "test",
    calibrate_on: Annotated[str | None, typer.Option("--calibrate-on", help="Split to fit the temperature on: val (default when the dataset has one) | none | test (biased: fitted on the split it is scored on, labelled so).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON here ('-' for stdout).")] = None,
    diagram: Annotated[Path | None, typer.Option("--diagram", help="Reliability diagram PNG path (default: next to the checkpoint).")] = None,
    device: c.Device = "auto",
) -> None:
    """Evaluate a trained model: accuracy and calibration on a dataset split."""
    from labelenh.checkpoint import read_checkpoint, resolve_checkpoint_path
    from labelenh.evaluate import evaluate_checkpoint, print_metrics

    options = dict(options or {})
    ece_bins = options.pop("ece_bins", DEFAULT_BINS)
    path = resolve_checkpoint_path(checkpoint)
    data = DataSettings.from_values(options)  # checked before the checkpoint is read
    saved: dict = {}
    if "dataset" not in options:
        # A labelenh checkpoint remembers the data it was trained on; flags still win.
        saved = (read_checkpoint(path).get("config") or {}).get("data") or {}
        if not saved.get("dataset"):
            raise LabelenhError(f"{path} does not say which dataset it was trained on: pass --dataset")
        data = DataSettings.from_record({**saved, **options})
    result, logits, labels = evaluate_checkpoint(path, data, split=split, model_name=model, ece_bins=ece_bins,
                                                 device=device, calibrate_on=calibrate_on)
    if result.get("calibrated_on") == "val" and saved and not saved.get("val_split"):
        print("labelenh: note: the model was trained without a validation split, so the val samples "
              "were in its training set: the temperature is biased", file=sys.stderr)
    print_metrics({f"{path.parent.name}/{path.name} on {result['dataset']} {split}": result})
    if json_out is not None:
        text = json.dumps(result, indent=2, sort_keys=True)
        if str(json_out) == "-":
            print(text)
        else:
            from labelenh.utils import atomic_write

            atomic_write(json_out, lambda p: p.write_text(text + "\n"), where="--json")
    out = diagram or path.parent / f"reliability-{split}.png"
    try:
        from labelenh.plots import reliability_diagram

        reliability_diagram(logits, labels, out, n_bins=ece_bins, title=f"{path.parent.name} ({split})")
        print(f"reliability diagram: {out}")
    except OutputError:
        raise  # a full disk fails the command; only a missing matplotlib is a note
    except LabelenhError as e:
        print(f"labelenh: note: {e}")
