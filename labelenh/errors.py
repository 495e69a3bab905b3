"""The one exception type the CLI turns into a single line on stderr and exit code 2."""


class LabelenhError(Exception):
    """Bad input or an unusable file. The message must name the problem and the fix, on one line."""


class OutputError(LabelenhError):
    """A file could not be written (a full disk, a read-only folder). Unlike a figure that cannot
    be drawn, it is never reduced to a note: the command fails with exit code 2."""
