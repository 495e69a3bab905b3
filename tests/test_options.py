"""Settings declared once (labelenh.options): the flags of every command, their checks, the
recipe types and the help all come from the dataclass fields of TrainConfig and DataSettings."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from clitools import run_cli
from typer.testing import CliRunner

from labelenh import bounds as B
from labelenh.data.settings import DataSettings
from labelenh.engine import LEGACY_TRAIN, TrainConfig
from labelenh.errors import LabelenhError
from labelenh.options import (
    check_values,
    declared,
    flag,
    legacy_values,
    option,
    value_types,
    with_options,
)

COMMANDS = {  # command -> the settings classes whose flags it takes
    ("teach",): (TrainConfig, DataSettings),
    ("student",): (TrainConfig, DataSettings),
    ("export-soft-labels",): (DataSettings,),
    ("evaluate",): (DataSettings,),
    ("store", "verify"): (DataSettings,),
    ("store", "add-teacher"): (DataSettings,),
}


def _help(monkeypatch, *command: str) -> str:
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("TERMINAL_WIDTH", "400")
    r = run_cli(*command, "--help")
    assert r.code == 0, r.err
    return " ".join(r.out.split())


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_declared_flag_is_on_the_command_with_its_range(monkeypatch, command):
    text = _help(monkeypatch, *command)
    for cls in COMMANDS[command]:
        for name, opt in declared(cls).items():
            if not opt.cli:
                assert opt.flag_for(name) == name  # no flag; messages use the recorded name
                continue
            assert re.search(rf"{re.escape(flag(cls, name))}\b", text), (command, name)
            if opt.bound is not None:
                assert opt.bound.text() in text, (command, name)


def test_the_flag_and_the_field_name_agree_and_each_flag_is_declared_once():
    seen: dict[str, str] = {}
    for cls in (TrainConfig, DataSettings):
        for name, opt in declared(cls).items():
            assert opt.help, name
            if opt.cli:
                f = flag(cls, name)
                assert f == "--" + name.replace("_", "-")
                assert f not in seen, f"{f} declared by {seen.get(f)} and {cls.__name__}"
                seen[f] = cls.__name__
    # every field of both classes is declared (none is a plain field the CLI cannot reach)
    for cls in (TrainConfig, DataSettings):
        assert set(declared(cls)) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls, name, value, needles", [
    (TrainConfig, "momentum", 1.0, ["--momentum", "[0, 1)"]),
    (TrainConfig, "gamma", 0.0, ["--gamma", "(0, 1]"]),
    (TrainConfig, "milestones", [5, 10**7], ["--milestones", "[1, 1e6]"]),
    (TrainConfig, "amp", "fp8", ["--amp", "auto, off, bf16, fp16"]),
    (TrainConfig, "eval_batch_size", 0, ["eval_batch_size", "[1, 65536]"]),
    (DataSettings, "val_split", 1.0, ["--val-split", "(0, 1)"]),
    (DataSettings, "crop_pct", 0.01, ["--crop-pct", "[0.05, 1]"]),
])
def test_a_value_out_of_its_declared_range_names_the_flag(cls, name, value, needles):
    with pytest.raises(LabelenhError) as e:
        check_values(cls, {name: value})
    assert all(n in str(e.value) for n in needles), str(e.value)
    if cls is TrainConfig:
        with pytest.raises(LabelenhError):
            dataclasses.replace(TrainConfig(), **{name: value}).validate()


@pytest.mark.parametrize("argv, needles", [
    (["--momentum", "1"], ["--momentum", "[0, 1)"]),
    (["--gamma", "2"], ["--gamma", "(0, 1]"]),
    (["--val-split", "0"], ["--val-split", "(0, 1)"]),
    (["--crop-pct", "2"], ["--crop-pct", "[0.05, 1]"]),
    (["--warmup-epochs", "3", "--epochs", "2"], ["--warmup-epochs", "[0, epochs)"]),
    (["--nesterov", "--momentum", "0"], ["--nesterov", "--momentum > 0"]),
])
def test_the_command_line_refuses_on_one_line_before_anything_is_written(tmp_path, argv, needles):
    r = run_cli("student", "--dataset", "synthetic:10:20", "--image-size", "16", "--model", "resnet8",
                "--device", "cpu", *argv, "--runs-dir", tmp_path / "runs")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert all(n in r.err for n in needles), r.err
    assert not (tmp_path / "runs").exists()


def test_recipe_types_come_from_the_declarations(tmp_path):
    assert value_types(TrainConfig)["milestones"] is list and value_types(DataSettings)["val_split"] is float
    recipe = tmp_path / "r.toml"
    recipe.write_text('dataset = "synthetic:10:20"\nmomentum = "high"\n')
    r = run_cli("teach", "--recipe", recipe, "--device", "cpu", "--runs-dir", tmp_path / "runs")
    assert r.code == 2 and "momentum must be a number" in r.err, r.err


def test_legacy_values_are_declared_on_the_fields():
    assert LEGACY_TRAIN == legacy_values(TrainConfig)
    assert LEGACY_TRAIN["channels_last_cpu"] is False and "lr" not in LEGACY_TRAIN


# ---- the machinery on a settings class of its own: what adding an option takes ----------------

@dataclasses.dataclass
class Toy:
    steps: int = option(3, bound=B.EPOCHS, help="Steps, in {range}.")
    rate: float = option(0.5, bound=B.GAMMA, help="A rate.")
    fast: bool = option(False, help="Go fast.")
    ids: list[int] = option(factory=lambda: [1, 2], bound=B.EPOCHS, cli_type=str, help="Ids.")
    hidden: int = option(7, cli=False, help="Recorded only.")


def _toy_app(seen: list[dict]) -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    @with_options(Toy)
    def run(name: str = "x", options: dict | None = None, last: int = 0) -> None:
        seen.append({"name": name, "last": last, **(options or {})})

    @toy.command()
    def other() -> None:  # a second command keeps typer from folding `run` into the app
        pass

    return toy


def test_with_options_adds_the_declared_flags_and_passes_the_given_ones():
    seen: list[dict] = []
    runner = CliRunner()
    r = runner.invoke(_toy_app(seen), ["run", "--steps", "5", "--fast", "--ids", "3,4", "--last", "1"])
    assert r.exit_code == 0, r.output
    assert seen == [{"name": "x", "last": 1, "steps": 5, "fast": True, "ids": "3,4"}]  # unset: absent
    r = runner.invoke(_toy_app(seen), ["run", "--help"], env={"COLUMNS": "300"})
    text = " ".join(r.output.split())
    assert "--steps" in text and "Steps, in [1, 1e6]." in text and "A rate. In (0, 1]." in text
    assert "--fast --no-fast" in text.replace("/", " ") or "--fast/--no-fast" in text
    assert "--hidden" not in text
    # the flags take the place of `options` in the signature: between --name and --last
    assert text.index("--name") < text.index("--steps") < text.index("--last")


def test_with_options_refuses_a_value_out_of_range_before_the_command_runs():
    seen: list[dict] = []
    r = CliRunner().invoke(_toy_app(seen), ["run", "--rate", "3"])
    assert r.exit_code != 0 and seen == []
    assert isinstance(r.exception, LabelenhError) and "--rate must be a number in (0, 1]" in str(r.exception)


def test_a_parameter_that_is_also_a_declared_option_is_refused():
    with pytest.raises(TypeError, match="steps"):
        @with_options(Toy)
        def run(steps: int = 0, options: dict | None = None) -> None:
            pass
