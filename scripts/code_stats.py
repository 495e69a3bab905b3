"""Structure measures of the `labelenh` package, read with `ast` (nothing is imported).

    python scripts/code_stats.py [--root labelenh] [--list]

Prints one table:
- functions over 50 and over 60 lines (def line to last line, docstring included,
  decorators not; nested functions count on their own as well);
- classes over 200 lines; modules over 400 lines;
- imports of `labelenh.methods` from inside `labelenh.store` (the store sits below the
  methods, so it must not know them);
- imports of private names across modules: `from labelenh.a import _x`, and a private
  module (`_mix`) imported from outside the package that holds it;
- places a training option is spelled (best effort). The options are the fields of the
  `TrainConfig` and `DataSettings` dataclasses, found by name anywhere in the package. A
  *place* is a source line that declares or passes the option by name: a dataclass field
  or function parameter called `name`, a call keyword `name=`, a string `"name"` (dict keys,
  `getattr`) or a string holding the flag `--name-with-dashes` (typer options, messages).
  Plain reads (`cfg.name`) are uses, not spellings, and are not counted. The table gives the
  median and the largest count over the options; `--list` prints each;
- places a training option is declared or carried by hand: the same count restricted to the
  dataclass field, `--flag` strings anywhere (messages, other commands' options of the same
  name) and any spelling inside `labelenh.cli` (typer parameters, flag dicts, keywords), the
  help's example command lines left out. 1 is the declaration alone.
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
from pathlib import Path

OPTION_CLASSES = ("TrainConfig", "DataSettings")


def _modname(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _option_fields(trees: dict[str, ast.Module]) -> list[str]:
    names: list[str] = []
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in OPTION_CLASSES:
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.append(item.target.id)
    return sorted(set(names))


def _spellings(trees: dict[str, ast.Module], options: list[str], plumbing: bool = False) -> dict[str, int]:
    """{option: places}. With `plumbing`, only the places that declare an option or carry it by
    hand from the command line to the settings: the dataclass field, a `--flag` string anywhere,
    and any spelling inside `labelenh.cli` (typer parameters, flag dicts, keywords)."""
    wanted = set(options)
    flag = {f"--{o.replace('_', '-')}": o for o in options}
    flag_re = re.compile(r"--[a-z][a-z0-9-]*")
    places: dict[str, set[tuple[str, int]]] = {o: set() for o in options}
    for mod, tree in trees.items():
        cli = mod.startswith("labelenh.cli")
        if plumbing and mod == "labelenh.cli._examples":
            continue  # the help's example command lines: documentation, as README
        fields = {id(item) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name in OPTION_CLASSES
                  for item in node.body if isinstance(item, ast.AnnAssign)}
        for node in ast.walk(tree):
            hits: list[tuple[str, int]] = []
            if plumbing and not cli:
                if id(node) in fields:
                    hits.append((node.target.id, node.lineno))
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    hits += [(flag[f], node.lineno) for f in flag_re.findall(node.value) if f in flag]
                for name, line in hits:
                    places[name].add((mod, line))
                continue
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                hits.append((node.target.id, node.lineno))
            elif isinstance(node, ast.arg):
                hits.append((node.arg, node.lineno))
            elif isinstance(node, ast.keyword) and node.arg:
                hits.append((node.arg, node.lineno))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                hits.append((node.value, node.lineno))
                hits += [(flag[f], node.lineno) for f in flag_re.findall(node.value) if f in flag]
            for name, line in hits:
                if name in wanted:
                    places[name].add((mod, line))
    return {o: len(p) for o, p in places.items()}


def measure(root: Path) -> tuple[list[tuple[str, str]], dict[str, list[str]], dict[str, int]]:
    files = sorted(root.rglob("*.py"))
    trees = {_modname(f, root): ast.parse(f.read_text(), str(f)) for f in files}
    pkgs = {_modname(f, root) for f in files if f.name == "__init__.py"}
    lines = {_modname(f, root): len(f.read_text().splitlines()) for f in files}
    found: dict[str, list[str]] = {k: [] for k in ("f50", "f60", "c200", "m400", "store_methods", "private")}
    for mod, tree in trees.items():
        if lines[mod] > 400:
            found["m400"].append(f"{mod} ({lines[mod]})")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                n = node.end_lineno - node.lineno + 1
                label = f"{mod}.{node.name} ({n})"
                if isinstance(node, ast.ClassDef):
                    if n > 200:
                        found["c200"].append(label)
                else:
                    if n > 50:
                        found["f50"].append(label)
                    if n > 60:
                        found["f60"].append(label)
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.ImportFrom):
                targets.append((_resolve(mod, node, mod in pkgs), [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                targets += [(a.name, []) for a in node.names]
            for target, names in targets:
                if mod.startswith("labelenh.store") and (
                    target.startswith("labelenh.methods")
                    or (target == "labelenh" and "methods" in names)
                ):
                    found["store_methods"].append(f"{mod} <- {target}")
                if not target.startswith("labelenh"):
                    continue
                for name in names:
                    if _private(name) and target != mod:
                        found["private"].append(f"{mod} <- {target}.{name}")
                parts = target.split(".")
                for i, part in enumerate(parts):
                    # a private module may be used by its own package, not from outside it
                    if _private(part) and not (mod + ".").startswith(".".join(parts[:i]) + "."):
                        found["private"].append(f"{mod} <- {target}")
                        break
    fields = _option_fields(trees)
    options = _spellings(trees, fields)
    plumbing = _spellings(trees, fields, plumbing=True)
    rows = [
        ("functions over 50 lines", str(len(found["f50"]))),
        ("functions over 60 lines", str(len(found["f60"]))),
        ("classes over 200 lines", str(len(found["c200"]))),
        ("modules over 400 lines", str(len(found["m400"]))),
        ("labelenh.store imports of labelenh.methods", str(len(found["store_methods"]))),
        ("imports of private names across modules", str(len(found["private"]))),
    ]
    if options:
        counts = list(options.values())
        rows.append(
            (
                f"places a training option is spelled ({len(counts)} options)",
                f"median {statistics.median(counts):g}, max {max(counts)}",
            )
        )
        hand = list(plumbing.values())
        rows.append(
            (
                "places a training option is declared or carried by hand",
                f"median {statistics.median(hand):g}, max {max(hand)}",
            )
        )
    found["plumbing"] = [f"{o}: {n}" for o, n in sorted(plumbing.items(), key=lambda kv: -kv[1]) if n > 1]
    return rows, found, options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "labelenh"))
    ap.add_argument("--list", action="store_true", help="also list every unit counted")
    args = ap.parse_args()
    rows, found, options = measure(Path(args.root))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    if args.list:
        for key, items in found.items():
            if items:
                print(f"\n{key}:")
                for item in items:
                    print(f"  {item}")
        print("\noption spellings:")
        for name, n in sorted(options.items(), key=lambda kv: -kv[1]):
            print(f"  {name}: {n}")


if __name__ == "__main__":
    main()
