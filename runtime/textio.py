"""Reading user text files: one place for the UTF-8 check and its error (file:line, the bytes, the fix)."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import BadInputError


UTF16_32_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
                 (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE"))      # longest first: FF FE opens both LEs


def split_lines(text: str) -> list[str]:
    """Lines as a text file has them: split at \\n (\\r\\n and \\r too), never inside a line at U+2028, U+0085, a
    form feed or the other separators str.splitlines() also breaks at (a JSON string may hold them raw)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines       # a final newline ends the last line, it opens none


def read_utf8_lines(path: str | Path, missing_hint: str = "") -> list[str]:
    """Lines of a UTF-8 text file ("-": standard input; a leading byte-order mark dropped); BadInputError names a
    missing/unreadable file or the first bad line."""
    path = Path(path)
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()      # "-": standard input
    except FileNotFoundError as e:
        raise BadInputError(f"{path} is missing" + (f": {missing_hint}" if missing_hint else "")) from e
    except OSError as e:
        raise BadInputError(f"cannot read {path}: {e.strerror}") from e
    name = "standard input" if str(path) == "-" else str(path)
    for bom, encoding in UTF16_32_BOMS:           # a UTF-16/32 file's NULs would pass as text: name the encoding
        if raw.startswith(bom):
            raise BadInputError(f"{name} is {encoding} (it starts with the byte-order mark {bom.hex(' ')}), not "
                                f"UTF-8; re-encode it as UTF-8, e.g. iconv -f {encoding} -t UTF-8")
    try:
        return split_lines(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInputError(f"{name}:{line} is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                            "re-encode the file as UTF-8") from e
