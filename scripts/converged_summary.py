"""The converged budget's tables and claims, from its run folders (finished runs only) or, for
runs whose folders are gone (run folders are git-ignored), from the half's `report/runs.csv`.

    python scripts/converged_summary.py results/cifar10-mini-converged [--out FILE] [--plots]

For each half (clean, noisy-sym0.4) that has runs:
- a table per method: seeds, test Acc@1, NLL, ECE, ECE after temperature scaling (T fitted on
  the shared validation split), Brier, the fitted T, the last epoch's train accuracy, and the
  epoch validation NLL picks as best; mean ± std (ddof 1) over seeds, last epoch;
- the regime check: whether vanilla reached 99 % train accuracy and is over-confident (T > 1);
- method by method, whether it beats vanilla and vanilla + temperature scaling on accuracy and
  on ECE. A difference counts when it exceeds twice its standard error over seeds (Welch);
  with one seed of either side nothing is decided;
- next to the published CIFAR-100 ResNet-20 row (the original code's README), which of the
  paper's qualitative claims reproduce here.

With --plots it also draws each half's test accuracy against ECE (a dot per run, a cross per
method's mean) as HALF/acc-vs-ece.png, labelled with the methods' names in the tables. It needs
no run folder, so it redraws a half whose folders are gone from its runs.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

HALVES = {"clean": "Clean labels", "noisy-sym0.4": "40 % symmetric label noise"}
# The original code's README, CIFAR-100, ResNet-20 students (accuracy %, ECE): see
# scripts/reproduce_cifar100.py. Methods here whose rows the paper has.
PAPER_R20 = {"vanilla": (69.32, 0.070), "ls": (69.43, 0.053), "kd": (69.07, 0.071), "sl": (69.09, 0.051),
             "aug-sl": (68.9, 0.063), "en-sl": (70.57, 0.050), "kd-sl": (70.75, 0.019)}
PAPER_ACC_BAND = 0.5  # points: a published accuracy change smaller than this is "about the same"
PAPER_ECE_BAND = 0.005


@dataclass
class Row:
    method: str
    values: dict[str, list[float]] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len(self.values.get("acc1", []))

    def mean(self, key: str) -> float:
        return statistics.fmean(self.values[key])

    def std(self, key: str) -> float:
        v = self.values[key]
        return statistics.stdev(v) if len(v) > 1 else float("nan")

    def cell(self, key: str, scale: float = 1.0, digits: int = 2) -> str:
        if not self.values.get(key):
            return "—"
        m, s = scale * self.mean(key), scale * self.std(key)
        return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def read_run(folder: Path) -> dict[str, float] | None:
    """The last epoch's test metrics of a finished run, its train accuracy and its best epoch."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        last_line = (folder / "metrics.jsonl").read_text().splitlines()[-1]
    except (OSError, ValueError, IndexError):
        return None  # not finished (or not a run)
    test = (summary.get("last") or {}).get("test") or {}
    out = {k: float(test[k]) for k in ("acc1", "nll", "ece", "ece_ts", "brier", "temperature") if k in test}
    out["train_acc"] = float(json.loads(last_line).get("train_acc", float("nan")))
    out["best_epoch"] = float((summary.get("best") or {}).get("epoch", float("nan")))
    return out


def read_report(csv_path: Path) -> dict[str, dict[str, float]]:
    """{run name: the same figures as read_run} from a report's runs.csv (test split). Reports
    written before runs.csv had train columns give no train accuracy (NaN)."""
    if not csv_path.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    with csv_path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] != "test":
                continue
            got = out.setdefault(r["run"], {})
            if r["epoch_kind"] == "best":
                got["best_epoch"] = float(r["epoch"])
                continue
            got.update({k: float(r[k]) for k in ("acc1", "nll", "ece", "ece_ts", "brier", "temperature") if r.get(k)})
            got["train_acc"] = float(r.get("train_acc") or "nan")
    return out


def collect(half: Path) -> dict[str, Row]:
    """{method: Row} over the finished runs named METHOD-sSEED, in name order: the run folder
    under half/runs where there is one, else the run's lines in half/report/runs.csv."""
    runs = half / "runs"
    found = read_report(half / "report" / "runs.csv")
    for folder in sorted(runs.iterdir() if runs.is_dir() else []):
        got = read_run(folder) if folder.is_dir() else None
        if got is not None:
            found[folder.name] = got
    rows: dict[str, Row] = {}
    for name in sorted(found):
        method, sep, seed = name.rpartition("-s")
        if not sep or not seed.isdigit():
            continue
        row = rows.setdefault(method, Row(method))
        for k, v in found[name].items():
            if not math.isnan(v):  # not recorded (an older report's train accuracy)
                row.values.setdefault(k, []).append(v)
    return rows


def differs(a: list[float], b: list[float]) -> int | None:
    """+1 / -1 when mean(a) is above / below mean(b) by more than twice the standard error of
    the difference (Welch), 0 when it is not, None with fewer than two values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    d = statistics.fmean(a) - statistics.fmean(b)
    if se == 0:
        return (d > 0) - (d < 0)
    return (d > 2 * se) - (d < -2 * se)


def verdict(sign: int | None, better: int) -> str:
    """How a comparison reads: `better` is the sign that wins (+1 accuracy, -1 ECE)."""
    if sign is None:
        return "is undecided (one seed) against"
    return "ties" if sign == 0 else "beats" if sign == better else "loses to"


def table(rows: dict[str, Row], order: list[str]) -> list[str]:
    out = ["| method | seeds | Acc@1 (%) | NLL | ECE (%) | ECE after TS (%) | Brier | T | train acc (%) | best epoch |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for m in order:
        r = rows[m]
        out.append(f"| {m} | {r.seeds} | {r.cell('acc1', 100)} | {r.cell('nll', 1, 3)} | {r.cell('ece', 100)} | "
                   f"{r.cell('ece_ts', 100)} | {r.cell('brier', 1, 3)} | {r.cell('temperature', 1, 2)} | "
                   f"{r.cell('train_acc', 100, 1)} | {r.cell('best_epoch', 1, 1)} |")
    return out


def regime(rows: dict[str, Row]) -> str:
    v = rows.get("vanilla")
    if v is None:
        return "Regime: no finished vanilla run yet."
    if not v.values.get("train_acc"):
        return "Regime: vanilla's train accuracy was not recorded; whether the regime was reached is unknown."
    acc, t = v.mean("train_acc"), v.mean("temperature")
    reached = acc >= 0.99 and t > 1
    return (f"Regime: vanilla's last-epoch train accuracy {100 * acc:.1f} %, fitted T {t:.2f}, test ECE "
            f"{100 * v.mean('ece'):.1f} % → {100 * v.mean('ece_ts'):.1f} % after TS: "
            + ("the converged, over-confident regime was reached." if reached else
               "the regime was NOT reached (train accuracy below 99 % or T ≤ 1)."))


def statements(rows: dict[str, Row], order: list[str]) -> list[str]:
    """Per method: accuracy and ECE against vanilla, and ECE against vanilla after TS."""
    v = rows.get("vanilla")
    if v is None:
        return []
    out = []
    for m in order:
        if m == "vanilla":
            continue
        r = rows[m]
        acc = differs(r.values["acc1"], v.values["acc1"])
        ece = differs(r.values["ece"], v.values["ece"])
        ts = differs(r.values["ece"], v.values["ece_ts"])
        out.append(f"- **{m}**: accuracy {100 * (r.mean('acc1') - v.mean('acc1')):+.2f} points, "
                   f"{verdict(acc, 1)} vanilla (and vanilla + TS, whose accuracy is vanilla's); ECE "
                   f"{100 * r.mean('ece'):.1f} %, {verdict(ece, -1)} vanilla ({100 * v.mean('ece'):.1f} %) and "
                   f"{verdict(ts, -1)} vanilla + TS ({100 * v.mean('ece_ts'):.1f} %).")
    return out


def paper(rows: dict[str, Row]) -> list[str]:
    """The paper's qualitative claims (vs its vanilla) next to what this run shows."""
    v = rows.get("vanilla")
    if v is None:
        return []
    pv_acc, pv_ece = PAPER_R20["vanilla"]
    out = ["| method | paper R20 Acc / ECE | paper vs vanilla | here Acc / ECE | here vs vanilla | reproduces |",
           "|---|---|---|---|---|---|"]
    for m, (acc, ece) in PAPER_R20.items():
        if m not in rows:
            continue
        r = rows[m]
        here = f"{100 * r.mean('acc1'):.1f} / {r.mean('ece'):.3f}"
        if m == "vanilla":
            out.append(f"| vanilla | {acc} / {ece:.3f} | — | {here} | — | — |")
            continue
        p_acc = (acc - pv_acc > PAPER_ACC_BAND) - (acc - pv_acc < -PAPER_ACC_BAND)
        p_ece = (ece - pv_ece > PAPER_ECE_BAND) - (ece - pv_ece < -PAPER_ECE_BAND)
        h_acc = differs(r.values["acc1"], v.values["acc1"])
        h_ece = differs(r.values["ece"], v.values["ece"])
        word = {1: "higher", -1: "lower", 0: "same", None: "?"}
        same = ("undecided" if h_acc is None or h_ece is None else
                "yes" if (h_acc, h_ece) == (p_acc, p_ece) else
                "ECE only" if h_ece == p_ece else "accuracy only" if h_acc == p_acc else "no")
        out.append(f"| {m} | {acc} / {ece:.3f} | acc {word[p_acc]}, ECE {word[p_ece]} | {here} | "
                   f"acc {word[h_acc]}, ECE {word[h_ece]} | {same} |")
    return out


def plot(rows: dict[str, Row], path: Path, title: str) -> Path:
    """Test Acc@1 against ECE: a dot per run, a cross per method's mean over seeds."""
    from labelenh.plots import accuracy_ece_scatter

    # acc1 and ece are recorded for every finished run, so their lists pair up run by run
    points = [(m, a, e) for m, r in rows.items()
              for a, e in zip(r.values.get("acc1", []), r.values.get("ece", []), strict=True)]
    means = [(m, r.mean("acc1"), r.mean("ece")) for m, r in rows.items() if r.values.get("acc1")]
    return accuracy_ece_scatter(points, path, means=means, title=title)


def ordered(rows: dict[str, Row], order: list[str] | None) -> list[str]:
    names = [m for m in (order or sorted(rows)) if m in rows] + [m for m in sorted(rows) if m not in (order or [])]
    return list(dict.fromkeys(names))


def collect_halves(root: Path) -> dict[str, dict[str, Row]]:
    """{half: its rows} for each half under root, read once for the tables and the plots."""
    return {half: collect(root / half) for half in HALVES}


def draw(root: Path, order: list[str] | None = None,
         found: dict[str, dict[str, Row]] | None = None) -> list[Path]:
    """HALF/acc-vs-ece.png for each half that has runs."""
    found = collect_halves(root) if found is None else found
    out = []
    for half, title in HALVES.items():
        rows = found[half]
        if rows:
            rows = {m: rows[m] for m in ordered(rows, order)}
            out.append(plot(rows, root / half / "acc-vs-ece.png", f"{title}: last epoch, test split"))
    return out


def summarize(root: Path, order: list[str] | None = None,
              found: dict[str, dict[str, Row]] | None = None) -> str:
    found = collect_halves(root) if found is None else found
    parts = []
    for half, title in HALVES.items():
        rows = found[half]
        if not rows:
            continue
        names = ordered(rows, order)
        students = [m for m in names if m != "teacher"]
        parts += [f"### {title}", "", *table(rows, names), "", regime(rows), "", *statements(rows, students), ""]
        if half == "clean":
            parts += ["Against the paper's CIFAR-100 ResNet-20 row (a change of less than 0.5 points or 0.005 "
                      "ECE counts as the same there):", "", *paper(rows), ""]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="the driver's --out (holding clean/ and noisy-sym0.4/)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--plots", action="store_true", help="also draw HALF/acc-vs-ece.png per half")
    a = ap.parse_args()
    from reproduce_cifar10_mini import CLEAN_METHODS

    order = ["teacher", *CLEAN_METHODS]
    found = collect_halves(a.root)
    if not any(found.values()):
        halves = " or ".join(f"{h}/" for h in HALVES)
        print(f"error: {a.root} holds no finished runs under {halves}: pass the driver's --out", file=sys.stderr)
        sys.exit(2)
    text = summarize(a.root, order, found)
    print(text)
    if a.out is not None:
        a.out.write_text(text + "\n")
    if a.plots:
        for path in draw(a.root, order, found):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
