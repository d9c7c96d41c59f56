"""Reproducible Paddle source models built from pip-installed assets: `paddle2ort zoo build NAME -o DIR`."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import BadInputError

log = logging.getLogger(__name__)

ZOO = ("minilm-sentiment", "smollm2-135m")


def is_current(out: Path, build_key: str) -> bool:
    """True when DIR/zoo.json records this build key and every file it lists is there at its size: the model is
    built (cached). A deleted or truncated file is not a cached build (it was reported cached and exited 0)."""
    marker = Path(out) / "zoo.json"
    if not marker.is_file() or zoo_entries(out) is None:
        return False
    meta = json.loads(marker.read_text())
    files = meta.get("files")
    if meta["build_key"] != build_key or not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        f = Path(out) / rel
        if not f.is_file() or f.stat().st_size != size:
            log.info("zoo build %s: %s is %s, so it is built again", out, rel, "changed" if f.is_file() else "missing")
            return False
    return True


def write_marker(stage: Path, meta: dict) -> None:
    """DIR/zoo.json: the build's facts and the size of every file it wrote (what is_current checks)."""
    files = {p.relative_to(stage).as_posix(): p.stat().st_size for p in sorted(Path(stage).rglob("*"))
             if p.is_file() and p.name != "zoo.json"}
    (Path(stage) / "zoo.json").write_text(json.dumps({**meta, "files": files}, indent=2) + "\n")


def _build_key(name: str) -> str:
    if name == "minilm-sentiment":
        from .minilm_sentiment import BUILD_KEY
    else:
        from .smollm2 import BUILD_KEY
    return BUILD_KEY


ZOO_ENTRIES = {"zoo.json", "model", "tokenizer", "dataset", ".embedder"}


def zoo_entries(dest: Path) -> list[str] | None:
    """None when dest is not a zoo build (no zoo.json with a build key), else what it holds that a build does not."""
    if Path(dest).is_dir() and not any(Path(dest).iterdir()):
        return []
    try:
        meta = json.loads((Path(dest) / "zoo.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict) or "build_key" not in meta:
        return None
    return sorted(p.name for p in Path(dest).iterdir() if p.name not in ZOO_ENTRIES)


def staged_zoo(out: Path):
    """Stage a zoo build beside `out`; an existing `out` is replaced only when it is a zoo build."""
    from ..bundle import staged_bundle
    return staged_bundle(Path(out), overwrite=True, owned=zoo_entries, kind="zoo build")


def check_output(out: Path) -> None:
    """Before any work: `out` is new, or a zoo build (replaced once the new one is complete)."""
    from ..bundle import check_destination
    check_destination(out, overwrite=True, owned=zoo_entries, kind="zoo build")


def build(name: str, out: Path, force: bool = False) -> Path:
    if name not in ZOO:
        raise BadInputError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}")
    from paddle2ort.runtime.files import module_available
    if not module_available("paddle"):
        raise BadInputError("zoo build needs Paddle, which is not installed here (a runtime-only install); install "
                            "the converter side: pip install 'paddle2ort[convert]'")
    if force or not is_current(out, _build_key(name)):
        check_output(out)
    if name == "minilm-sentiment":
        from .minilm_sentiment import build as b
    else:
        from .smollm2 import build as b
    return b(Path(out), force=force)
