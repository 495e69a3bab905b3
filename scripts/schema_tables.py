"""Write the store schema's tables into README.md from labelenh/store/schema.py, their one
source (between the README's schema-table markers).

    python scripts/schema_tables.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelenh.store.schema import markdown_tables  # noqa: E402

BEGIN = "<!-- schema tables: generated from labelenh/store/schema.py by `python scripts/schema_tables.py` -->\n"
END = "<!-- end of the schema tables -->\n"


def readme_tables(text: str) -> tuple[int, int]:
    """(start, end) of the generated part of README's text, between the markers."""
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    return a, b


def rendered() -> str:
    return "\n" + markdown_tables() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README differs, write nothing")
    args = ap.parse_args()
    path = ROOT / "README.md"
    text = path.read_text()
    a, b = readme_tables(text)
    if text[a:b] == rendered():
        return 0
    if args.check:
        print("README.md's schema tables differ from labelenh/store/schema.py: run "
              "python scripts/schema_tables.py", file=sys.stderr)
        return 1
    path.write_text(text[:a] + rendered() + text[b:])
    print("README.md: schema tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
