"""Reading user text files: one place for the UTF-8 check and its error (file:line, the bytes, the fix)."""
from __future__ import annotations

from pathlib import Path

from .errors import BadInputError


def read_utf8_lines(path: str | Path, missing_hint: str = "") -> list[str]:
    """Lines of a UTF-8 text file; BadInputError names a missing/unreadable file or the first bad line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise BadInputError(f"{path} is missing" + (f": {missing_hint}" if missing_hint else "")) from e
    except OSError as e:
        raise BadInputError(f"cannot read {path}: {e.strerror}") from e
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInputError(f"{path}:{line} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                            "re-encode the file as UTF-8") from e
