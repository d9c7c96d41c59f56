"""Reproducible Paddle source models built from pip-installed assets: `paddle2ort zoo build NAME -o DIR`."""
from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError

ZOO = ("minilm-sentiment", "smollm2-135m")


def build(name: str, out: Path, force: bool = False) -> Path:
    if name == "minilm-sentiment":
        from .minilm_sentiment import build as b
        return b(Path(out), force=force)
    if name == "smollm2-135m":
        from .smollm2 import build as b
        return b(Path(out), force=force)
    raise BadInputError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}")
