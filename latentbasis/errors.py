"""The one exception type whose message is meant for the user (the CLI prints it as one line, exit 2), and its
form for a page served to others (without_paths)."""
import re


class LatentBasisError(Exception):
    """Bad input or a missing resource, explained in one sentence."""


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^/\\\s'\"():,]+)+[/\\]([^/\\\s'\"():,]+)")


def without_paths(message: str) -> str:
    """A message for a page served to others: every absolute path shortened to its file name."""
    return _PATH.sub(r"\1", message)
