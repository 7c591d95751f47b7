"""The one exception type whose message is meant for the user (the CLI prints it as one line, exit 2)."""


class LatentBasisError(Exception):
    """Bad input or a missing resource, explained in one sentence."""
