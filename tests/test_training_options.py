"""Training as a timm user expects it: schedules that scale with --epochs, the start-up summary,
--weights/--reset-head, timm optimisers and EMA, --compile, channels-last, --recipe from a run's
config.json, and model.safetensors in every run folder."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from clitools import assert_one_line_error, run_cli
from lineartask import LinearTask
from torch import nn

from labelenh.cli.common import SCALED, resolve
from labelenh.engine import Engine, TrainConfig, build_optimizer
from labelenh.errors import LabelenhError
from labelenh.schedules import scale_milestones, scale_warmup
from labelenh.teach import DataSettings, TeachSettings, train_teacher

DS = ["--dataset", "synthetic:10:20", "--image-size", "16", "--device", "cpu"]
SMALL = [*DS, "--model", "resnet8", "--batch-size", "64"]


@pytest.fixture(autouse=True)
def _no_plot(monkeypatch):
    monkeypatch.setattr("labelenh.teach._write_reliability", lambda *a, **k: None)
    monkeypatch.setattr("labelenh.student._write_reliability", lambda *a, **k: None)


def tiny(tmp_path, name="t", **train) -> TeachSettings:
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 64, "lr": 0.05, "milestones": [1], **train})
    return TeachSettings(model="resnet8", data=DataSettings(dataset="synthetic:10:20", image_size=16), train=cfg,
                         name=name, runs_dir=str(tmp_path), device="cpu")


def _ck(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ---------------------------------------------------------------- schedules


def test_scaling_formulas():
    assert scale_milestones([150, 180, 210], 240, 120) == [75, 90, 105]
    assert scale_milestones([150, 180, 210], 240, 24) == [15, 18, 21]
    # never at or beyond the last epoch (index epochs - 1), never before epoch 1
    assert scale_milestones([150, 180, 210], 240, 3) == [2, 2, 2]
    assert scale_warmup(5, 100, 10) == 1 and scale_warmup(5, 100, 200) == 10 and scale_warmup(0, 100, 10) == 0
    assert scale_warmup(2, 10, 1) == 0  # a one-epoch run has no room for a warm-up


@pytest.mark.parametrize("epochs", [3, 30, 100, 240, 500])
def test_resolve_scales_the_default_milestones_only_when_not_given(epochs):
    v = resolve({"epochs": epochs, "milestones": None}, {})
    want = [min(max(1, round(m * epochs / 240)), max(1, epochs - 1)) for m in (150, 180, 210)]
    # unscaled, the key stays unset and TrainConfig's default applies
    assert v.get("milestones", TrainConfig().milestones) == (want if epochs != 240 else [150, 180, 210])
    assert ("milestones" in v[SCALED]) == (epochs != 240)
    v = resolve({"epochs": epochs, "milestones": "1,2"}, {})
    assert v["milestones"] == [1, 2] and "milestones" not in v[SCALED]


def test_recipe_schedule_scales_from_the_recipes_own_length():
    recipe = {"epochs": 100, "milestones": [30, 60, 90], "warmup_epochs": 5}
    v = resolve({"epochs": 10}, recipe)
    assert v["milestones"] == scale_milestones([30, 60, 90], 100, 10) == [3, 6, 9]
    assert v["warmup_epochs"] == scale_warmup(5, 100, 10) == 1
    assert resolve({}, recipe)["milestones"] == [30, 60, 90]  # the recipe's own length: unchanged
    assert resolve({"epochs": 10, "warmup_epochs": 0}, recipe)["warmup_epochs"] == 0


def test_scaled_milestones_in_config_json_and_the_summary(tmp_path):
    r = run_cli("teach", *SMALL, "--epochs", "3", "--name", "a", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    want = scale_milestones([150, 180, 210], 240, 3)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["train"]["milestones"] == want and cfg["train"]["epochs"] == 3
    text = ",".join(map(str, want))
    # the start-up summary: one block before the first epoch, naming what the run chose
    head = r.out.split("\n\n")[0]
    for needle in ("model", "resnet8", "parameters", "synthetic", "train", "test", "10 classes", "epochs",
                   f"at epochs {text}", "150,180,210 of 240 epochs, scaled to 3", "optimiser", "sgd",
                   "device", "cpu", "AMP", "run folder", str(tmp_path / "a")):
        assert needle in head, (needle, head)
    n_params = sum(v.numel() for k, v in _ck(tmp_path / "a")["model"].items() if "running" not in k
                   and "num_batches" not in k)
    assert f"{n_params:,} parameters" in head
    assert r.out.index("run folder") < r.out.index("Acc@1")  # printed before training, not after


def test_milestones_beyond_the_run_warn(tmp_path):
    r = run_cli("teach", *SMALL, "--epochs", "2", "--milestones", "1,5", "--name", "w", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    assert "warning" in r.out and "milestones 5 are not before the last epoch (2)" in r.out
    r = run_cli("teach", *SMALL, "--epochs", "2", "--milestones", "1", "--name", "ok", "--runs-dir", tmp_path)
    assert r.code == 0 and "warning" not in r.out + r.err


def _as_old_run(run, drop=("opt", "model_ema", "model_ema_decay", "compile", "channels_last_cpu")):
    """Rewrite a run's records as the version before these settings wrote them."""
    ck = _ck(run)
    for key in drop:
        ck["config"]["train"].pop(key)
    ck["config"].pop("reset_head")
    torch.save(ck, run / "checkpoint.pt")
    (run / "config.json").write_text(json.dumps(ck["config"]))


def test_an_old_run_resumes_with_its_milestones_and_memory_format(tmp_path):
    """A run recorded before scaling and CPU channels-last keeps [150, 180, 210] and the plain memory
    format when resumed with a longer --epochs, and reproduces the old uninterrupted run exactly."""
    old = ["--milestones", "150,180,210", "--no-channels-last"]  # what the old version did
    r = run_cli("teach", *SMALL, *old, "--epochs", "3", "--name", "full", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    r = run_cli("teach", *SMALL, *old, "--epochs", "1", "--name", "p", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    _as_old_run(tmp_path / "p")
    r = run_cli("teach", *SMALL, "--epochs", "3", "--name", "p", "--runs-dir", tmp_path, "--resume")
    assert r.code == 0, r.err
    a, b = _ck(tmp_path / "full"), _ck(tmp_path / "p")
    assert b["config"]["train"]["milestones"] == [150, 180, 210]
    assert b["config"]["train"]["channels_last_cpu"] is False
    assert _same_tensors(a["model"], b["model"]) and _same_tensors(a["optimizer"], b["optimizer"])


def test_a_new_run_resumed_longer_keeps_its_scaled_milestones(tmp_path):
    r = run_cli("teach", *SMALL, "--epochs", "2", "--name", "n", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    first = json.loads((tmp_path / "n" / "config.json").read_text())["train"]["milestones"]
    r = run_cli("teach", *SMALL, "--epochs", "4", "--name", "n", "--runs-dir", tmp_path, "--resume")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "n" / "config.json").read_text())["train"]["milestones"] == first


def test_a_resume_keeps_the_recorded_memory_format(tmp_path):
    r = run_cli("teach", *SMALL, "--no-channels-last", "--epochs", "1", "--name", "c", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    r = run_cli("teach", *SMALL, "--epochs", "2", "--name", "c", "--runs-dir", tmp_path, "--resume")
    assert r.code == 0, r.err
    assert "channels-last off" in r.out
    assert _ck(tmp_path / "c")["config"]["train"]["channels_last"] is False


# ---------------------------------------------------------------- optimisers and EMA


def test_optimisers_are_timms():
    from timm.optim import create_optimizer_v2

    from labelenh.models import build_model

    model = build_model("resnet8", 10, seed=0)
    for name in ("adamw", "lamb", "lion"):
        cfg = TrainConfig(opt=name, lr=1e-3, weight_decay=0.05)
        ours, ref = build_optimizer(model, cfg), create_optimizer_v2(model, opt=name, lr=1e-3, weight_decay=0.05)
        assert type(ours) is type(ref)
        assert [[id(p) for p in g["params"]] for g in ours.param_groups] == \
               [[id(p) for p in g["params"]] for g in ref.param_groups]
        assert [g["weight_decay"] for g in ours.param_groups] == [g["weight_decay"] for g in ref.param_groups]
    with pytest.raises(LabelenhError, match="--opt 'adamx' is not an optimiser timm knows"):
        TrainConfig(opt="adamx").validate()
    with pytest.raises(LabelenhError, match="--nesterov applies to --opt sgd"):
        TrainConfig(opt="adamw", nesterov=True).validate()


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_exactly_as_torch_sgd_with_decay_everywhere(nesterov):
    """--opt sgd is the rule the runs before timm's factory used: torch SGD, one group, decay on
    every parameter (BatchNorm included)."""
    from labelenh.models import build_model

    a, b = build_model("resnet8", 10, seed=0), build_model("resnet8", 10, seed=0)
    cfg = TrainConfig(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    oa = build_optimizer(a, cfg)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).logsumexp(1).mean().backward()
            o.step()
    assert _same_tensors(a.state_dict(), b.state_dict())
    assert _same_tensors(oa.state_dict()["state"], ob.state_dict()["state"])


def test_ema_follows_timms_rule(tmp_path):
    """EMA_1 = w_1 (timm's first update copies), then EMA_t = d EMA_(t-1) + (1 - d) w_t."""
    task = LinearTask()
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    cfg = TrainConfig(epochs=2, lr=0.1, milestones=[5], model_ema=True, model_ema_decay=0.9, eval_every=1)
    engine = Engine(model, task, cfg, tmp_path / "e", device=torch.device("cpu"), run_config={},
                    checkpoint_meta={"model_name": "linear", "num_classes": 3}, progress=False)
    weights = []
    step = engine.optimizer.step

    def record(*a, **k):
        out = step(*a, **k)
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return out

    engine.optimizer.step = record
    engine.fit()
    ema = dict(weights[0])
    for w in weights[1:]:
        ema = {k: 0.9 * ema[k] + 0.1 * w[k] for k in ema}
    assert len(weights) == 6
    for k, v in engine.ema.module.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=1e-6, atol=1e-7)
    hist = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    assert all("acc1" in h["ema"]["test"] for h in hist)
    assert "model_ema" in torch.load(tmp_path / "e" / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("train", [dict(opt="adamw", lr=1e-3, weight_decay=0.05),
                                   dict(model_ema=True, model_ema_decay=0.99),
                                   dict(opt="adamw", lr=1e-3, model_ema=True, model_ema_decay=0.9)])
def test_adamw_and_ema_runs_resume_bit_for_bit(tmp_path, train):
    full, part = tmp_path / "full", tmp_path / "part"
    train_teacher(tiny(full, **train))

    class Interrupt(Exception):
        pass

    def stop(epoch, record):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_teacher(tiny(part, **train), on_epoch_end=stop)
    train_teacher(tiny(part, **train), resume=True)
    a, b = _ck(full / "t"), _ck(part / "t")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "optimizer") + (("model_ema",) if train.get("model_ema") else ()):
        assert _same_tensors(a[key], b[key]), key
    ha = [json.loads(x) for x in (full / "t" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (part / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [h["test"] for h in ha] == [h["test"] for h in hb]
    assert [h.get("ema") for h in ha] == [h.get("ema") for h in hb]


def test_a_checkpoint_without_ema_state_is_refused_for_an_ema_resume(tmp_path):
    train_teacher(tiny(tmp_path, epochs=1, model_ema=True))
    ck = _ck(tmp_path / "t")
    del ck["model_ema"]
    torch.save(ck, tmp_path / "t" / "checkpoint.pt")
    with pytest.raises(LabelenhError, match="model_ema"):
        train_teacher(tiny(tmp_path, epochs=2, model_ema=True), resume=True)


def test_compile_wraps_the_training_model(tmp_path, monkeypatch):
    seen = []

    def fake_compile(model, *a, **k):
        seen.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    r = run_cli("teach", *SMALL, "--epochs", "1", "--compile", "--name", "c", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    assert len(seen) == 1 and _ck(tmp_path / "c")["config"]["train"]["compile"] is True
    assert "torch.compile" in r.out


@pytest.mark.parametrize("argv, needles", [
    (["--model-ema-decay", "1"], ["--model-ema-decay", "(0, 1)"]),
    (["--model-ema-decay", "0"], ["--model-ema-decay", "(0, 1)"]),
    (["--opt", "sgdd"], ["--opt 'sgdd'", "did you mean"]),
])
def test_bad_training_options_are_one_line(tmp_path, argv, needles):
    r = run_cli("teach", *SMALL, "--epochs", "1", *argv, "--runs-dir", tmp_path / "runs")
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def in1k(tmp_path_factory):
    """A "1000-class checkpoint": a timm model created with num_classes=1000 (random weights)."""
    import timm
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    sd = model.state_dict()
    torch.save(sd, d / "in1k.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "in1k.safetensors"))
    return d, sd


def test_reset_head_keeps_the_body_and_a_fresh_classifier(in1k):
    from labelenh.models import build_model

    d, sd = in1k
    with pytest.raises(LabelenhError, match=r"fc\.weight is \[1000, 512\], expected \[10, 512\].*--reset-head"):
        build_model("timm:resnet10t", 10, weights=d / "in1k.pt")
    fresh = build_model("timm:resnet10t", 10, seed=3)
    for f in ("in1k.pt", "in1k.safetensors"):
        m = build_model("timm:resnet10t", 10, seed=3, weights=d / f, reset_head=True)
        for k, v in m.state_dict().items():
            assert torch.equal(v, fresh.state_dict()[k] if k.startswith("fc.") else sd[k]), k


def test_fine_tune_a_timm_teacher_from_a_1000_class_checkpoint(in1k, tmp_path):
    import timm
    from safetensors.torch import load_file

    d, sd = in1k
    args = ["teach", *DS, "--model", "timm:resnet10t", "--batch-size", "64", "--epochs", "1",
            "--opt", "adamw", "--lr", "1e-3", "--runs-dir", tmp_path]
    r = run_cli(*args, "--weights", d / "in1k.safetensors", "--name", "x")
    assert_one_line_error(r, "do not fit timm:resnet10t with 10 classes: fc.", "[1000", "expected [10",
                          "--reset-head")
    assert not (tmp_path / "x").exists()
    r = run_cli(*args, "--weights", d / "in1k.safetensors", "--reset-head", "--name", "ft")
    assert r.code == 0, r.err
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["reset_head"] is True and cfg["weights"].endswith("in1k.safetensors")
    # model.safetensors loads into a plain timm model, without labelenh
    plain = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=3)
    plain.load_state_dict(load_file(str(tmp_path / "ft" / "model.safetensors")))
    for k, v in _ck(tmp_path / "ft")["model"].items():
        assert torch.equal(v, plain.state_dict()[k]), k
    # the student takes the same flag (and --init as its alias), and a run folder
    r = run_cli("student", *DS, "--model", "timm:resnet10t", "--batch-size", "64", "--epochs", "1",
                "--method", "ls", "--init", d / "in1k.pt", "--reset-head", "--name", "s", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    r = run_cli("student", *DS, "--model", "timm:resnet10t", "--batch-size", "64", "--epochs", "1",
                "--method", "ls", "--weights", tmp_path / "ft", "--name", "s2", "--runs-dir", tmp_path)
    assert r.code == 0, r.err


# ---------------------------------------------------------------- recipes from run records


def test_a_run_repeated_from_its_config_json_reproduces_it(tmp_path):
    r = run_cli("teach", *SMALL, "--epochs", "2", "--opt", "adamw", "--lr", "1e-3", "--model-ema",
                "--name", "a", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    r = run_cli("teach", "--recipe", tmp_path / "a" / "config.json", "--device", "cpu", "--name", "b",
                "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    a, b = _ck(tmp_path / "a"), _ck(tmp_path / "b")
    assert a["config"] == b["config"]
    assert _same_tensors(a["model"], b["model"]) and _same_tensors(a["model_ema"], b["model_ema"])
    r = run_cli("teach", "--recipe", tmp_path / "a" / "config.json", "--seed", "1", "--device", "cpu",
                "--name", "c", "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    c = _ck(tmp_path / "c")["config"]
    assert c["train"] == {**a["config"]["train"], "seed": 1} and c["data"] == a["config"]["data"]


def test_a_student_run_repeated_from_its_config_json(tmp_path):
    base = ["student", *SMALL, "--epochs", "1", "--method", "ls", "--alpha", "0.2", "--runs-dir", tmp_path]
    r = run_cli(*base, "--name", "a")
    assert r.code == 0, r.err
    r = run_cli("student", "--recipe", tmp_path / "a" / "config.json", "--device", "cpu", "--name", "b",
                "--runs-dir", tmp_path)
    assert r.code == 0, r.err
    a, b = _ck(tmp_path / "a"), _ck(tmp_path / "b")
    assert a["config"] == b["config"] and _same_tensors(a["model"], b["model"])
    r = run_cli("teach", "--recipe", tmp_path / "a" / "config.json", "--runs-dir", tmp_path)
    assert_one_line_error(r, "records a 'student' run", "labelenh student")


# ---------------------------------------------------------------- help


def _commands():
    import typer

    from labelenh.cli import _register_commands, app

    _register_commands()
    group = typer.main.get_command(app)
    out = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(group, [])
    return out


def test_every_command_ends_its_help_with_examples_that_parse():
    from labelenh.cli._examples import EXAMPLES

    commands = _commands()
    assert set(EXAMPLES) == set(commands)
    for name, cmd in commands.items():
        r = run_cli(*name.split(), "--help")
        assert r.code == 0 and "Examples:" in r.out, name
        for line in EXAMPLES[name]:
            argv = line.split("#")[0].split()[1 + len(name.split()):]
            # parsing checks every option and argument of the example against the command
            cmd.make_context(name, list(argv))


def test_training_help_shows_the_resolved_defaults():
    for command in ("teach", "student"):
        r = run_cli(command, "--help")
        text = " ".join(r.out.split())
        for needle in ("--epochs", "240", "--lr", "0.05", "--milestones", "150,180,210", "--opt", "sgd",
                       "--model-ema-decay", "0.9998", "--weights", "--reset-head", "--channels-last"):
            assert needle in text, (command, needle)
        assert text.count("[default:") >= 20, command


def test_teach_settings_replace_keeps_scaled_notes_out_of_the_record(tmp_path):
    s = replace(tiny(tmp_path), scaled={"milestones": "note"})
    assert "scaled" not in s.run_config() and "milestones" in s.run_config()["train"]


def test_channels_last_on_cpu_by_model_and_by_flag(tmp_path):
    """On CPU the default follows the measurement (labelenh's CIFAR ResNets on, timm models off);
    --channels-last forces it, and config.json records the choice."""
    from labelenh.engine import cpu_channels_last, with_memory_format

    assert cpu_channels_last("resnet20") and not cpu_channels_last("timm:resnet18")
    assert with_memory_format(TrainConfig(), "timm:resnet18").channels_last_cpu is False
    assert with_memory_format(TrainConfig(channels_last_cpu=True), "timm:resnet18").channels_last_cpu is True
    args = ["teach", *DS, "--model", "timm:resnet10t", "--batch-size", "64", "--epochs", "1", "--runs-dir", tmp_path]
    r = run_cli(*args, "--name", "auto")
    assert r.code == 0, r.err
    assert "channels-last off" in r.out and _ck(tmp_path / "auto")["config"]["train"]["channels_last_cpu"] is False
    r = run_cli(*args, "--channels-last", "--name", "forced")
    assert r.code == 0, r.err
    assert "channels-last on" in r.out and _ck(tmp_path / "forced")["config"]["train"]["channels_last_cpu"] is True


@pytest.mark.parametrize("command", [["teach"], ["student", "--method", "vanilla"]])
def test_reset_head_without_weights_is_refused_before_training(command, tmp_path):
    r = run_cli(*command, "--dataset", "synthetic:2:4", "--epochs", "1", "--device", "cpu",
                "--runs-dir", tmp_path, "--name", "x", "--reset-head")
    assert_one_line_error(r, "--reset-head", "--weights")
    assert not (tmp_path / "x").exists()
