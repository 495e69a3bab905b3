"""`labelenh report`: seed aggregation against numpy, labels, Markdown/CSV, figures, CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error, run_cli

from labelenh.errors import LabelenhError
from labelenh.report import aggregate, collect_runs, to_csv, to_markdown, write_report
from labelenh.report.runs import METRICS

PNG = b"\x89PNG\r\n\x1a\n"


def student_config(method, seed, *, aug=None, store="stores/t-cifar.h5", online=(), lr=0.05, model="resnet8"):
    return {"stage": "student", "model": model, "method": method, "params": {}, "store": store,
            "aug": aug, "teachers": None, "online_teachers": list(online), "init": None,
            "data": {"dataset": "synthetic", "val_split": 0.0},
            "train": {"seed": seed, "epochs": 3, "lr": lr}, "method_params": {"T": 4.0}}


def teacher_config(seed, model="resnet20"):
    return {"stage": "teach", "model": model, "data": {"dataset": "synthetic"},
            "train": {"seed": seed, "epochs": 3}, "aug": {"op": "crop-flip"}}


def metrics(gen):
    return {"acc1": float(gen.uniform(0.5, 0.9)), "acc5": float(gen.uniform(0.9, 1.0)),
            "nll": float(gen.uniform(0.3, 1.5)), "ece": float(gen.uniform(0.01, 0.2)),
            "ece_ts": float(gen.uniform(0.01, 0.05)), "nll_ts": float(gen.uniform(0.3, 1.0)),
            "temperature": float(gen.uniform(0.8, 3.0)), "mce": float(gen.uniform(0.2, 0.5)),
            "brier": float(gen.uniform(0.1, 0.5)), "n": 100}


def write_run(folder: Path, config, last, best, *, selected_by="test_acc1", epochs=3, gen=None):
    folder.mkdir(parents=True)
    summary = {"name": folder.name, "epochs_run": epochs, "stopped_early": False,
               "last": {"epoch": epochs, "test": last, "val": None},
               "best": {"epoch": 2, "selected_by": selected_by, "test": best, "val": None},
               "train_time_s": 1.0, "config": config, "env": {}}
    (folder / "summary.json").write_text(json.dumps(summary))
    if gen is not None:
        lines = [{"epoch": e, "lr": 0.1, "train_loss": float(gen.uniform(0.5, 2)), "train_acc": float(gen.uniform(0.3, 1)),
                  "train_time_s": 0.1, "test": metrics(gen)} for e in range(1, epochs + 1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return summary


@pytest.fixture
def runs(tmp_path):
    """3 seeds x 2 methods (sl from a store, aug-kd-sl on mixup views) under one parent folder."""
    gen = np.random.default_rng(0)
    made = {}
    for method, aug in (("sl", None), ("kd-sl", "mixup")):
        for seed in (0, 1, 2):
            last, best = metrics(gen), metrics(gen)
            write_run(tmp_path / "runs" / f"{method}-s{seed}", student_config(method, seed, aug=aug),
                      last, best, gen=gen)
            made.setdefault(method, []).append((last, best))
    return tmp_path / "runs", made


def test_aggregate_matches_numpy_mean_and_sample_std(runs):
    parent, made = runs
    rows = aggregate(collect_runs([parent]))
    assert [r.method for r in rows] == ["aug-kd-sl", "sl"]
    for row, method in zip(rows, ("kd-sl", "sl"), strict=True):
        assert row.seeds == [0, 1, 2]
        for i, epoch in enumerate(("last", "best")):
            for m in METRICS:
                vals = np.array([pair[i][m] for pair in made[method]])
                s = row.stat(epoch, m)
                assert s.mean == np.mean(vals) and s.std == np.std(vals, ddof=1), (method, epoch, m)
                assert s.n == 3
        # last and best are taken from their own summary entries
        assert row.stat("last", "acc1").mean != row.stat("best", "acc1").mean
        assert row.best_by == "test_acc1"


def test_labels_teachers_and_single_seed(tmp_path):
    gen = np.random.default_rng(1)
    m = metrics(gen)
    write_run(tmp_path / "t", teacher_config(0), m, m)
    write_run(tmp_path / "a", student_config("sl", 0, aug="cutmix", store="/x/stores/res56-c10.h5"), m, m)
    write_run(tmp_path / "c", student_config("sl", 0, aug="crop-flip"), m, m)
    write_run(tmp_path / "k", student_config("kd", 0, store=None, online=["runs/teach-a", "runs/teach-b/checkpoint.pt"]), m, m)
    write_run(tmp_path / "v", student_config("vanilla", 0, store=None, aug="none"), m, m)
    rows = {r.method: r for r in aggregate(collect_runs([tmp_path]))}
    assert set(rows) == {"teacher", "aug-sl", "kd", "vanilla"} and len(rows["aug-sl"].runs) == 1
    rows_all = aggregate(collect_runs([tmp_path]))
    assert [r.method for r in rows_all][0] == "teacher"  # teachers head the table
    aug = [r for r in rows_all if r.method == "aug-sl"]
    assert {r.teachers for r in aug} == {"res56-c10", "t-cifar"}
    assert rows["kd"].teachers == "teach-a + teach-b"
    assert rows["teacher"].teachers == "" and rows["teacher"].model == "resnet20"
    assert rows["vanilla"].teachers == ""
    s = rows["teacher"].stat("last", "nll")
    assert s.mean == m["nll"] and s.std is None
    md = to_markdown(rows_all)
    line = next(x for x in md.splitlines() if x.startswith("| teacher |"))
    assert f"{m['nll']:.4f}" in line and "±" not in line and "| 1 |" in line


def test_seed_grouping_and_settings_column(tmp_path):
    gen = np.random.default_rng(2)
    for lr in (0.05, 0.1):
        for seed in (0, 1):
            write_run(tmp_path / f"sl-{lr}-{seed}", student_config("sl", seed, lr=lr), metrics(gen), metrics(gen))
    rows = aggregate(collect_runs([tmp_path]))
    assert len(rows) == 2 and all(len(r.runs) == 2 for r in rows)
    assert sorted(r.settings for r in rows) == ["train.lr=0.05", "train.lr=0.1"]
    assert "| settings |" in to_markdown(rows)


def test_given_method_parameters_are_shown_even_on_a_single_row(tmp_path):
    gen = np.random.default_rng(3)
    cfg = student_config("gls", 0, store=None)
    cfg.update(params={"r": -0.2}, method_params={"r": -0.2, "wa": 0.0, "wb": 1.0})
    write_run(tmp_path / "gls-s0", cfg, metrics(gen), metrics(gen))
    write_run(tmp_path / "sl-s0", student_config("sl", 0), metrics(gen), metrics(gen))  # defaults only
    rows = {r.method: r for r in aggregate(collect_runs([tmp_path]))}
    assert rows["gls"].settings == "r=-0.2" and rows["sl"].settings == ""
    assert "| r=-0.2 |" in to_markdown(list(rows.values()))


def test_plot_legend_names_tell_rows_apart(tmp_path):
    from labelenh.report.figures import _short_names

    gen = np.random.default_rng(4)
    for r in (0.2, -0.2):
        cfg = student_config("gls", 0, store=None)
        cfg.update(params={"r": r}, method_params={"r": r, "wa": 0.0, "wb": 1.0})
        write_run(tmp_path / f"gls{r}", cfg, metrics(gen), metrics(gen))
    for model in ("resnet8", "resnet20"):
        write_run(tmp_path / f"sl-{model}", student_config("sl", 0, model=model), metrics(gen), metrics(gen))
    write_run(tmp_path / "vanilla", student_config("vanilla", 0, store=None), metrics(gen), metrics(gen))
    rows = aggregate(collect_runs([tmp_path]))
    names = dict(zip((r.label() for r in rows), _short_names(rows), strict=True))
    assert {n for n in names.values() if n.startswith("gls")} == {"gls (r=-0.2)", "gls (r=0.2)"}
    sl = sorted(n for n in names.values() if n.startswith("sl"))
    assert len(sl) == 2 and "resnet20" in sl[0] and "resnet8" in sl[1]  # the full label where needed
    assert "vanilla" in names.values()


def test_markdown_and_csv(runs, tmp_path):
    parent, made = runs
    rows = aggregate(collect_runs([parent]))
    md = to_markdown(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| method | model | teachers | dataset | seeds |")
    for label in ("Acc@1 (%) last", "Acc@5 (%) last", "NLL last", "ECE (%) last", "ECE after TS (%) last",
                  "MCE (%) last", "Brier last", "T last", "Acc@1 (%) best", "ECE (%) best", "T best"):
        assert label in lines[0]
    body = [x for x in lines[2:] if x.startswith("|")]
    assert len(body) == len(rows) == 2
    acc = np.array([last["acc1"] for last, _ in made["sl"]]) * 100
    assert f"{np.mean(acc):.2f} ± {np.std(acc, ddof=1):.2f}" in body[1]
    assert body[1].startswith("| sl | resnet8 | t-cifar | synthetic | 3 |")

    back = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(back) == 2
    for row, rec in zip(rows, back, strict=True):
        assert rec["method"] == row.method and rec["n_seeds"] == "3" and rec["seeds"] == "0;1;2"
        for e in ("last", "best"):
            for m in METRICS:
                assert float(rec[f"{e}_{m}_mean"]) == row.stat(e, m).mean
                assert float(rec[f"{e}_{m}_std"]) == row.stat(e, m).std


def test_group_by_orders_rows(tmp_path):
    gen = np.random.default_rng(3)
    write_run(tmp_path / "a", student_config("ls", 0, model="resnet8"), metrics(gen), metrics(gen))
    write_run(tmp_path / "b", student_config("gls", 0, model="resnet20"), metrics(gen), metrics(gen))
    write_run(tmp_path / "c", student_config("ls", 0, model="resnet32"), metrics(gen), metrics(gen))
    recs = collect_runs([tmp_path])
    assert [r.method for r in aggregate(recs)] == ["gls", "ls", "ls"]
    by_model = aggregate(recs, group_by="model")
    assert [r.model for r in by_model] == ["resnet20", "resnet32", "resnet8"]
    assert to_markdown(by_model, group_by="model").startswith("| model | method |")
    with pytest.raises(LabelenhError, match="--group-by"):
        aggregate(recs, group_by="lr")


def test_bad_inputs(tmp_path):
    with pytest.raises(LabelenhError, match="does not exist"):
        collect_runs([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(LabelenhError, match="no run folders"):
        collect_runs([tmp_path / "empty"])
    bad = tmp_path / "bad" / "r"
    bad.mkdir(parents=True)
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(LabelenhError, match="not readable JSON"):
        collect_runs([bad])
    (bad / "summary.json").write_text("[1, 2]")
    with pytest.raises(LabelenhError, match="not a labelenh run summary"):
        collect_runs([tmp_path / "bad"])


def test_skipped_folders_are_noted(runs):
    parent, _ = runs
    (parent / "unfinished").mkdir()
    notes = []
    recs = collect_runs([parent, parent / "sl-s0"], notes)
    assert len(recs) == 6  # a run named twice is read once
    assert len(notes) == 1 and "unfinished" in notes[0] and "summary.json" in notes[0]


def test_write_report_tables_scatter_and_curves(runs, tmp_path):
    parent, _ = runs
    out = tmp_path / "out"
    rep = write_report([parent], out, diagrams=False)
    names = sorted(p.name for p in rep.files)
    assert names == ["acc-vs-ece.png", "curves.png", "report.csv", "report.md", "runs.csv"]
    for name in ("acc-vs-ece.png", "curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    assert (out / "report.md").read_text() == rep.markdown
    rep = write_report([parent], tmp_path / "csv-only", fmt="csv", plots=False, diagrams=False)
    assert [p.name for p in rep.files] == ["report.csv", "runs.csv"]
    with pytest.raises(LabelenhError, match="--format"):
        write_report([parent], out, fmt="xlsx")


def test_real_run_end_to_end_with_diagram(tmp_path):
    from labelenh.engine import TrainConfig
    from labelenh.metrics import classification_metrics
    from labelenh.report.figures import checkpoint_predictions
    from labelenh.teach import DataSettings, TeachSettings, train_teacher

    cfg = TrainConfig(epochs=1, batch_size=64, milestones=[100])
    summary = train_teacher(TeachSettings(model="resnet8", data=DataSettings(dataset="synthetic"), train=cfg,
                                          name="t0", runs_dir=str(tmp_path / "runs"), device="cpu"))
    (rec,) = collect_runs([tmp_path / "runs"])
    # the diagram's predictions are those the run reported for its last epoch
    logits, labels = checkpoint_predictions(rec, "cpu")
    again = classification_metrics(logits, labels)
    for m in ("acc1", "nll", "ece"):
        assert again[m] == pytest.approx(summary["last"]["test"][m], abs=1e-5)

    r = run_cli("report", tmp_path / "runs", "--out", tmp_path / "rep", "--device", "cpu")
    assert r.code == 0, r.err
    assert "| teacher | resnet8 |" in r.out and "wrote" in r.out
    for name in ("report.md", "report.csv", "acc-vs-ece.png", "curves.png", "reliability.png"):
        assert f"wrote {tmp_path / 'rep' / name}" in r.out
        if name.endswith(".png"):
            assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG, name
    assert r.err == ""


def test_cli_errors(runs, tmp_path):
    assert_one_line_error(run_cli("report", tmp_path / "nope"), "does not exist")
    parent, _ = runs
    assert_one_line_error(run_cli("report", parent, "--format", "pdf", "--out", tmp_path / "o"), "--format")
    assert_one_line_error(run_cli("report", parent, "--group-by", "x", "--out", tmp_path / "o"), "--group-by")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("report", tmp_path / "empty"), "no run folders")


def test_missing_metrics_are_counted_not_invented(tmp_path):
    gen = np.random.default_rng(4)
    full, partial = metrics(gen), metrics(gen)
    del partial["ece"]
    write_run(tmp_path / "s0", student_config("ls", 0), full, None)
    write_run(tmp_path / "s1", student_config("ls", 1), partial, None)
    (row,) = aggregate(collect_runs([tmp_path]))
    assert row.stat("last", "ece").values == [full["ece"]] and row.stat("last", "ece").std is None
    assert row.stat("last", "acc1").n == 2 and row.stat("best", "acc1").mean is None
    line = to_markdown([row]).splitlines()[2]
    assert f"{100 * full['ece']:.2f} (n=1)" in line and "| — |" in line
    from labelenh.report.table import to_tidy_csv

    # without metrics.jsonl the train columns stay empty rather than invented
    assert {r["train_acc"] for r in csv.DictReader(io.StringIO(to_tidy_csv([row])))} == {""}


def test_tidy_csv_has_one_line_per_run_epoch_kind_and_split(runs, tmp_path):
    from labelenh.report.table import TIDY_METRICS, to_tidy_csv

    parent, made = runs
    rows = aggregate(collect_runs([parent]))
    back = list(csv.DictReader(io.StringIO(to_tidy_csv(rows))))
    # 6 runs x (last, best) x test (the fixture's runs have no val split)
    assert len(back) == 12
    assert {(r["run"], r["epoch_kind"], r["split"]) for r in back} == {
        (f"{m}-s{s}", k, "test") for m in ("sl", "kd-sl") for s in (0, 1, 2) for k in ("last", "best")}
    for rec in back:
        last, best = made[rec["method"].removeprefix("aug-")][int(rec["seed"])]
        want = last if rec["epoch_kind"] == "last" else best
        for k in TIDY_METRICS:
            assert (float(rec[k]) == want[k]) if k in want else (rec[k] == ""), k
        assert rec["selected_by"] == ("test_acc1" if rec["epoch_kind"] == "best" else "")
        # the train columns are that epoch's line of metrics.jsonl
        line = json.loads((parent / rec["run"] / "metrics.jsonl").read_text().splitlines()[int(rec["epoch"]) - 1])
        assert float(rec["train_loss"]) == line["train_loss"] and float(rec["train_acc"]) == line["train_acc"]
    written = write_report([parent], tmp_path / "o", plots=False, diagrams=False)
    assert [p.name for p in written.files] == ["report.md", "report.csv", "runs.csv"]


def test_curves_show_nll_ece_and_learning_rate(runs, tmp_path, monkeypatch):
    from labelenh import plots
    from labelenh.report import figures

    parent, _ = runs
    seen = {}
    draw = plots.training_curves

    def spy(panels, path, **kw):
        seen.update({label: series for label, series in panels})
        return draw(panels, path, **kw)

    monkeypatch.setattr(plots, "training_curves", spy)
    rows = aggregate(collect_runs([parent]))
    out = figures.curves(rows, tmp_path / "c.png", [])
    assert out.read_bytes()[:8] == PNG
    for label in ("test Acc@1 (%)", "train loss", "test NLL", "test ECE (%)", "learning rate"):
        assert len(seen[label]) == 2, label  # one line per row
    sl = next(s for s in seen["test NLL"] if s[0].startswith("sl"))
    hists = [r.history()[0] for r in rows[1].runs]
    assert list(sl[1]) == [1, 2, 3]
    assert sl[2][0] == pytest.approx(np.mean([h[0]["test"]["nll"] for h in hists]))
    assert seen["learning rate"][0][2][0] == pytest.approx(0.1)


def test_reliability_bins_below_the_minimum_count_are_hatched(tmp_path):
    import torch

    from labelenh.plots import ACC_COLOUR, reliability_grid

    # 200 confident samples and 3 at low confidence: the low bins hold < 10 samples
    z = torch.zeros(203, 10, dtype=torch.float64)
    z[:200, 0] = 6.0
    z[200:, 0] = 0.5
    y = torch.zeros(203, dtype=torch.long)
    y[200:] = 1
    drawn = {}
    import matplotlib.axes

    real_bar = matplotlib.axes.Axes.bar

    def bar(self, x, height, *a, **kw):
        if kw.get("color") == ACC_COLOUR:  # the accuracy bars, not the gaps or the histogram
            drawn.setdefault(kw.get("hatch"), []).extend(np.atleast_1d(x).tolist())
        return real_bar(self, x, height, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "bar", bar)
        reliability_grid([("t", z, y)], tmp_path / "r.png", n_bins=10)
    low_conf = float(z[200].softmax(0).max())
    assert drawn["xxx"] == pytest.approx([np.floor(low_conf * 10) / 10])  # 3 samples: hatched
    assert drawn[None] == pytest.approx([0.9])  # 200 samples: drawn plainly


def test_students_started_from_the_seeds_of_one_run_form_one_row(tmp_path):
    """gls after a CE warm-up: seed k starts from vanilla-sk/best.pt. The init paths differ per
    seed, the run they name does not: one row, its settings naming the run with the seed as *."""
    gen = np.random.default_rng(5)
    for seed in (0, 1):
        write_run(tmp_path / f"vanilla-s{seed}", student_config("vanilla", seed, store=None),
                  metrics(gen), metrics(gen))
    for seed in (0, 1):
        cfg = student_config("gls", seed, store=None, lr=1e-6)
        cfg.update(params={"r": -0.2}, init=str(tmp_path / f"vanilla-s{seed}" / "best.pt"))
        write_run(tmp_path / f"gls-warm-s{seed}", cfg, metrics(gen), metrics(gen))
    # the same method from scratch, and two starts that name no run (kept apart, as before)
    write_run(tmp_path / "gls-s0", {**student_config("gls", 0, store=None), "params": {"r": -0.2}},
              metrics(gen), metrics(gen))
    for k in (0, 1):
        cfg = {**student_config("gls", 0, store=None, lr=1e-6), "params": {"r": -0.2},
               "init": f"/nowhere/run{k}/best.pt"}
        write_run(tmp_path / f"gls-lost{k}", cfg, metrics(gen), metrics(gen))
    rows = [r for r in aggregate(collect_runs([tmp_path])) if r.method == "gls"]
    warm = [r for r in rows if "vanilla-s*" in r.settings]
    assert len(warm) == 1 and sorted(r.name for r in warm[0].runs) == ["gls-warm-s0", "gls-warm-s1"]
    assert 'init="vanilla-s*/best.pt (' in warm[0].settings
    lost = [r for r in rows if "/nowhere/" in r.settings]
    assert len(lost) == 2 and all(len(r.runs) == 1 for r in lost)
    assert len(rows) == 4
    # a vanilla run of another config (another lr) is another start: another row
    other = tmp_path / "other"
    write_run(other / "vanilla-s2", student_config("vanilla", 2, store=None, lr=0.5), metrics(gen), metrics(gen))
    cfg = {**student_config("gls", 2, store=None, lr=1e-6), "params": {"r": -0.2},
           "init": str(other / "vanilla-s2" / "best.pt")}
    write_run(tmp_path / "gls-warm-s2", cfg, metrics(gen), metrics(gen))
    rows = [r for r in aggregate(collect_runs([tmp_path])) if r.method == "gls"]
    assert sorted(len(r.runs) for r in rows if "vanilla-s*" in r.settings) == [1, 2]


def test_long_row_names_are_wrapped_in_the_figures(tmp_path, monkeypatch):
    import labelenh.plots

    gen = np.random.default_rng(6)
    for lr, epochs in ((0.1, 30), (1e-6, 8)):
        cfg = student_config("gls", 0, store=None, lr=lr)
        cfg.update(params={"r": -0.2}, init=None if epochs == 30 else "/some/where/a/long/path/best.pt")
        cfg["train"]["epochs"] = epochs
        write_run(tmp_path / f"gls-{epochs}", cfg, metrics(gen), metrics(gen))
    seen = {}
    monkeypatch.setattr(labelenh.plots, "accuracy_ece_scatter",
                        lambda points, path, **kw: seen.setdefault("names", {p[0] for p in points}))
    from labelenh.report.figures import scatter

    rows = aggregate(collect_runs([tmp_path]))
    assert max(len(r.label()) for r in rows) > 60  # long enough to need wrapping
    scatter(rows, tmp_path / "x.png")
    names = seen["names"]
    assert len(names) == 2 and all(len(line) <= 40 for n in names for line in n.splitlines())
    assert {" ".join(n.split()) for n in names} == {
        " ".join(n.split()) for n in (f"gls ({r.settings})" for r in rows)}
