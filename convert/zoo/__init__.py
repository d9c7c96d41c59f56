"""Reproducible Paddle source models built from pip-installed assets: `paddle2ort zoo build NAME -o DIR`."""
from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError

ZOO = ("minilm-sentiment", "smollm2-135m")


def is_current(out: Path, build_key: str) -> bool:
    """True when DIR/zoo.json records this build key: the model is built (cached)."""
    import json
    marker = Path(out) / "zoo.json"
    return marker.is_file() and json.loads(marker.read_text()).get("build_key") == build_key


def build(name: str, out: Path, force: bool = False) -> Path:
    if name == "minilm-sentiment":
        from .minilm_sentiment import build as b
        return b(Path(out), force=force)
    if name == "smollm2-135m":
        from .smollm2 import build as b
        return b(Path(out), force=force)
    raise BadInputError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}")
