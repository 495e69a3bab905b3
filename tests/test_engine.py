"""The training engine: schedules, resume, early stopping, run folders (tiny synthetic runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lineartask import LinearTask

from labelenh.engine import TrainConfig, learning_rate
from labelenh.errors import LabelenhError
from labelenh.teach import DataSettings, TeachSettings, train_teacher


def tiny(tmp_path, name="t", **train):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, schedule="multistep", milestones=[1], **train)
    return TeachSettings(model="resnet8", data=DataSettings(dataset="synthetic:10:20", image_size=16), train=cfg,
                         name=name, runs_dir=str(tmp_path), device="cpu")


def test_multistep_schedule_matches_formula():
    cfg = TrainConfig(epochs=240, lr=0.05, milestones=[150, 180, 210], gamma=0.1)
    steps = 10
    for epoch, want in [(0, 0.05), (149, 0.05), (150, 0.005), (180, 0.0005), (239, 0.00005)]:
        assert learning_rate(cfg, epoch * steps + 3, steps) == pytest.approx(want)


def test_cosine_with_warmup_matches_formula():
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=2)
    steps = 5
    assert learning_rate(cfg, 0, steps) == pytest.approx(0.1 / 10)
    assert learning_rate(cfg, 9, steps) == pytest.approx(0.1)
    t = (30 - 10) / (50 - 10)
    assert learning_rate(cfg, 30, steps) == pytest.approx(0.05 * (1 + math.cos(math.pi * t)))
    assert learning_rate(cfg, 49, steps) < 0.001


@pytest.mark.parametrize(
    "kw, needle",
    [({"epochs": 0}, "--epochs"), ({"lr": 0.0}, "--lr"), ({"lr": -1.0}, "--lr"),
     ({"schedule": "exp"}, "--schedule"), ({"milestones": [5, 2]}, "--milestones"),
     ({"momentum": 1.5}, "--momentum"), ({"amp": "fp8"}, "--amp")],
)
def test_bad_train_config_is_refused(kw, needle):
    with pytest.raises(LabelenhError, match=needle):
        TrainConfig(**kw).validate()


def test_run_folder_and_metrics(tmp_path):
    summary = train_teacher(tiny(tmp_path))
    run = tmp_path / "t"
    for f in ("checkpoint.pt", "config.json", "env.json", "metrics.jsonl", "summary.json", "reliability.png"):
        assert (run / f).is_file(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[1]["lr"] == pytest.approx(0.005)  # decayed at milestone 1
    test = summary["last"]["test"]
    assert set(test) >= {"acc1", "acc5", "nll", "ece", "brier"}
    # synthetic data is learnable: two epochs of a tiny resnet beat chance (10 classes) clearly
    assert test["acc1"] > 0.3
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "git_commit" in env


def test_resume_reproduces_uninterrupted_run_bit_for_bit(tmp_path):
    full = tmp_path / "full"
    train_teacher(tiny(full, name="r"))

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 0:
            raise Interrupt

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        train_teacher(tiny(part, name="r"), on_epoch_end=stop_after_first)
    with pytest.raises(LabelenhError, match="--resume"):
        train_teacher(tiny(part, name="r"))  # refuses to overwrite a run silently
    train_teacher(tiny(part, name="r"), resume=True)

    a = torch.load(full / "r" / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "r" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    hist_a = [json.loads(x) for x in (full / "r" / "metrics.jsonl").read_text().splitlines()]
    hist_b = [json.loads(x) for x in (part / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [h["test"]["nll"] for h in hist_a] == [h["test"]["nll"] for h in hist_b]


class _AntiTask(LinearTask):
    """Learns y = [x0 > 0] on train, while validation holds the opposite labels: every epoch of
    progress makes validation NLL worse, so early stopping must trigger at a known epoch."""

    eval_splits = ("val", "test")
    steps_per_epoch = 4

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(256, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def train_batches(self, epoch):
        from labelenh.engine import Batch

        for i in range(4):
            sl = slice(64 * i, 64 * (i + 1))
            yield Batch(x=self.x[sl], labels=self.y[sl], inputs=None)

    def eval_batches(self, split, shard=(0, 1)):
        yield self.x, (1 - self.y) if split == "val" else self.y


def test_early_stopping_on_validation_nll(tmp_path):
    from labelenh.engine import Engine

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(epochs=10, lr=0.5, momentum=0.0, weight_decay=0.0, patience=2, milestones=[100])
    eng = Engine(model, _AntiTask(), cfg, tmp_path / "es", device=torch.device("cpu"),
                 run_config={"t": 1}, checkpoint_meta={"model_name": "linear", "num_classes": 2, "in_chans": 1})
    summary = eng.fit().summary
    assert summary["stopped_early"] is True
    assert summary["best"]["epoch"] == 1 and summary["best"]["selected_by"] == "val_nll"
    assert summary["epochs_run"] == 3  # two epochs without improvement after the best
    assert (tmp_path / "es" / "best.pt").is_file()
    best = torch.load(tmp_path / "es" / "best.pt", weights_only=True)
    assert best["epoch"] == 1


def test_resume_may_extend_epochs_but_not_change_settings(tmp_path):
    train_teacher(tiny(tmp_path, name="x"))
    longer = tiny(tmp_path, name="x")
    longer.train.epochs = 3
    summary = train_teacher(longer, resume=True)
    assert summary["epochs_run"] == 3
    other = tiny(tmp_path, name="x")
    other.train.epochs = 4
    other.train.lr = 0.5
    with pytest.raises(LabelenhError, match="train.lr"):
        train_teacher(other, resume=True)
