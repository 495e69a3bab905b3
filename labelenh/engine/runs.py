"""Run folders: the files a run writes and the names a run folder may have."""

from __future__ import annotations

import unicodedata

from labelenh.errors import LabelenhError

RUN_FILES = ["checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json", "config.json", "env.json"]
NAME_MAX_BYTES = 255  # the longest file name most file systems accept


def check_run_name(name: str) -> str:
    """`name` unchanged if it is one plain path component: a run folder name must never reach
    outside --runs-dir (/, \\, ..), hide (.), or break the lines of logs (control characters)."""
    if not isinstance(name, str) or not name.strip():
        raise LabelenhError(f"--name must be a non-empty folder name, got {name!r}")
    bad = next((ch for ch in name if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None or name in (".", ".."):
        what = repr(bad) if bad is not None else repr(name)
        raise LabelenhError(
            f"--name {name!r} is not one folder name (it holds {what}): use letters, digits, '-', '_' "
            "and '.', e.g. --name teach-resnet20"
        )
    if name != name.strip() or len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise LabelenhError(
            f"--name {name[:40]!r}…: a folder name may not start or end with a space or exceed "
            f"{NAME_MAX_BYTES} bytes"
        )
    return name
