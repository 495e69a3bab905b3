"""The one exception type the CLI turns into a single line on stderr and exit code 2."""


class LabelenhError(Exception):
    """Bad input or an unusable file. The message must name the problem and the fix, on one line."""
