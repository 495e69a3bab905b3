"""--grad-clip: one declared field of TrainConfig (the flag, its range, its help and its value
for older runs come from it) and the step that uses it."""

from __future__ import annotations

import json

import torch
from clitools import run_cli
from lineartask import LinearTask
from torch import nn

from labelenh.engine import Engine, TrainConfig


def _by_hand(model: nn.Linear, task: LinearTask, lr: float, clip: float) -> dict[str, torch.Tensor]:
    """Plain SGD with each step's gradient scaled by min(1, clip / ||g||_2) (global norm)."""
    w = {k: v.detach().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    for batch in task.train_batches(0):
        loss = nn.functional.cross_entropy(batch.x @ w["weight"].T + w["bias"], batch.labels)
        grads = torch.autograd.grad(loss, [w["weight"], w["bias"]])
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        scale = min(1.0, clip / (float(norm) + 1e-6))  # torch's clip_grad_norm_ adds 1e-6
        with torch.no_grad():
            w = {k: (v - lr * scale * g).requires_grad_(True) for (k, v), g in zip(w.items(), grads, strict=True)}
    return {k: v.detach() for k, v in w.items()}


def test_grad_clip_scales_each_step_to_the_norm(tmp_path):
    task = LinearTask(batches=2, scale=50.0)
    for clip in (0.5, 0.0):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        want = _by_hand(model, task, lr=0.1, clip=clip if clip else float("inf"))
        cfg = TrainConfig(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, milestones=[5], grad_clip=clip)
        Engine(model, task, cfg, tmp_path / f"c{clip}", device=torch.device("cpu"), run_config={},
               checkpoint_meta={"model_name": "linear", "num_classes": 3}, progress=False).fit()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6)


def test_grad_clip_on_the_command_line(tmp_path):
    base = ["teach", "--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet8", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--runs-dir", tmp_path / "runs"]
    r = run_cli(*base, "--grad-clip", "-1")
    assert r.code == 2 and "--grad-clip must be a number in [0, 1e4]" in r.err, r.err
    assert not (tmp_path / "runs").exists()
    r = run_cli(*base, "--grad-clip", "1.0", "--name", "t")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "runs" / "t" / "config.json").read_text())["train"]["grad_clip"] == 1.0
