"""The one exception type the CLI turns into a single line on stderr and exit code 2."""


class LabelenhError(Exception):
    """Bad input or an unusable file. The message must name the problem and the fix, on one line."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message as one short line; torch's "Error(s) in loading state_dict for X:"
    preamble is dropped so that the line names the parameter and the reason."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Error(s) in loading")] or [type(e).__name__]
    text = " ".join(lines)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OutputError(LabelenhError):
    """A file could not be written (a full disk, a read-only folder). Unlike a figure that cannot
    be drawn, it is never reduced to a note: the command fails with exit code 2."""
