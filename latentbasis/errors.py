"""The one exception type whose message is meant for the user (the CLI prints it as one line, exit 2), its form
for a page served to others (without_paths), and the escaping every printed message goes through (printable)."""
import os
import re
import unicodedata


class LatentBasisError(Exception):
    """Bad input or a missing resource, explained in one sentence."""


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^/\\\s'\"():,]+)+[/\\]([^/\\\s'\"():,]+)")


def without_paths(message: str) -> str:
    """A message for a page served to others: every absolute path shortened to its file name."""
    return _PATH.sub(r"\1", message)


def printable(text: str) -> str:
    """text with every control and format character escaped (\\x1b, \\n, \\u202e ...): what a file says can be
    shown on a terminal without moving the cursor, colouring it, or forging a line of its own (a lone surrogate,
    from a file name that is not UTF-8, is escaped too)."""
    out = []
    for c in str(text):
        if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def utf8_text(text, name: str) -> str:
    """text, if it is valid Unicode (encodes as UTF-8). A file name the system could not decode reaches Python
    with lone surrogates (\\udcff) that no recipe, file header or JSON can hold: refused by name, before any work."""
    if not isinstance(text, (str, os.PathLike)):
        raise LatentBasisError(f"{name} must be text or a path, got {type(text).__name__}")
    text = os.fspath(text)
    if isinstance(text, bytes):
        raise LatentBasisError(f"{name} must be text or a path, got bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LatentBasisError(f"{name} {printable(text)} is not valid UTF-8 (a file name in another encoding?); "
                               "rename it or give another") from None
    return text
