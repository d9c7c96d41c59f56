"""Stage 6: write the deploy bundle atomically — staged in a temp dir beside the target, then renamed."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import BadInputError

log = logging.getLogger(__name__)


def check_destination(dest: Path, overwrite: bool) -> None:
    """Fail before any work if the bundle cannot be written where asked."""
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"output path {dest} exists and is not a directory; choose another -o path")
    if dest.exists() and not overwrite:
        raise BadInputError(f"output bundle {dest} already exists; pass --overwrite to replace it "
                            "(the old bundle is kept until the new one has passed validation)")
    anchor = dest.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write the bundle to {dest}: {anchor} is not a writable directory; "
                            "choose an output path you can write to")


@contextlib.contextmanager
def staged_bundle(dest: Path, overwrite: bool):
    """Yield a staging directory; on success it replaces `dest`, on any error it disappears (as do new parents)."""
    check_destination(dest, overwrite)
    created = []
    p = dest.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    staging.chmod(0o755)                 # mkdtemp makes it 0700; a deploy bundle is read by other users
    try:
        yield staging
        old = None
        if dest.exists():
            if not overwrite:   # appeared while we worked
                raise BadInputError(f"output bundle {dest} appeared during conversion; pass --overwrite")
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
        os.rename(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("bundle written to %s", dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for d in created:          # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
