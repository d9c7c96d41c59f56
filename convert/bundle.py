"""Stage 6: write the deploy bundle atomically — staged in a temp dir beside the target, then renamed.

`--overwrite` replaces only a paddle2ort bundle (our manifest inside, no foreign files), and never the source
model, a directory holding it, the working directory (or one above it), the home directory or `/`.
Staging dirs carry the owner's pid (`.NAME.staging-PID-XXXX`): the next run sweeps those of killed runs. An old
bundle is swapped for the new in one step where the kernel can (renameat2 RENAME_EXCHANGE); elsewhere it is moved
aside first and put back if anything stops the second rename, or by the next run if the process was killed there.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from paddle2ort.runtime.files import current_umask
from paddle2ort.runtime.manifest import MANIFEST_NAME, VALIDATION_NAME

from .errors import BadInputError
from .paddle_proc import pid_alive, run_token, sweep_stale

log = logging.getLogger(__name__)

# What a bundle of an older schema (no `files` listing) may hold besides its models.
LEGACY_BUNDLE_ENTRIES = {MANIFEST_NAME, VALIDATION_NAME, "validation_inputs.npz", "tokenizer", "fused"}


def _real(p: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def foreign_entries(dest: Path) -> list[str] | None:
    """None when dest is not a paddle2ort bundle; else what it holds that is not part of the bundle."""
    if dest.is_dir() and not any(dest.iterdir()):
        return []                                   # an empty directory holds nothing to lose
    mpath = dest / MANIFEST_NAME
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("schema_version"), int)
            and isinstance(data.get("models"), dict) and "inputs" in data and "opset" in data):
        return None
    files = data.get("files")
    if isinstance(files, dict):
        known = set(files) | {MANIFEST_NAME}
        found = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() or p.is_symlink()]
        return sorted(f for f in found if f not in known)
    model_files = {m.get("file") for m in data["models"].values() if isinstance(m, dict)}
    return sorted(p.name for p in dest.iterdir() if p.name not in LEGACY_BUNDLE_ENTRIES | model_files)


def check_overwrite(dest: Path, sources: tuple[Path, ...] = (), owned=foreign_entries, kind: str = "bundle") -> None:
    """Refuse to replace anything but a paddle2ort output (`owned(dest)` is not None) holding none of the user's
    inputs and no foreign file (`owned(dest)` lists those)."""
    real = _real(dest)
    home = _real(Path.home())
    cwd = _real(Path.cwd())
    why = None
    if real == Path(real.anchor):
        why = "it is the root directory"
    elif real == home:
        why = "it is your home directory"
    elif cwd == real or cwd.is_relative_to(real):
        why = "it is the working directory" if cwd == real else f"it holds the working directory {cwd}"
    else:
        for src in sources:
            s = _real(src)
            if s == real or s.is_relative_to(real):
                why = (f"it is the input {src} (the source model or a file you gave)" if s == real else
                       f"it holds the input {src} (the source model or a file you gave)")
                break
    if why is None:
        extra = owned(dest)
        if extra is None:
            why = (f"it is not a paddle2ort bundle (no paddle2ort {MANIFEST_NAME} inside)" if kind == "bundle" else
                   f"it is not a paddle2ort {kind}")
        elif extra:
            shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            why = f"it holds files that are not part of the {kind} ({shown})"
    if why:
        raise BadInputError(f"output {dest} exists and will not be replaced: {why}. Only a {kind} that paddle2ort "
                            "wrote is ever replaced; choose a new -o path (or move your files away first)")


def check_outside_inputs(dest: Path, inputs, option: str = "-o", command: str = "the conversion") -> None:
    """`dest` (written by `option`) is not a folder the user gave as input, nor inside one: it would be written into
    the user's model (a second program or checkpoint beside the first for the next run to read, a source whose
    fingerprint changed) and what `--overwrite` later replaces would sit among the user's files. `inputs`: (what,
    path) pairs, e.g. ("the source model folder", SRC); files and None are skipped (nothing is written inside a
    file: check_destination names that)."""
    real = _real(dest)
    for what, path in inputs:
        if path is None or not _real(path).is_dir():
            continue
        src = _real(path)
        if real == src or real.is_relative_to(src):
            beside = Path(os.path.relpath(src.parent / f"{src.name or 'output'}-bundle"))
            where = "is" if real == src else "is inside"
            raise BadInputError(f"{option} {dest} {where} {what} {path}, which {command} reads and leaves as it is; "
                                f"give a folder outside it, e.g. {option} {beside}")


def check_destination(dest: Path, overwrite: bool, sources: tuple[Path, ...] = (), owned=foreign_entries,
                      kind: str = "bundle") -> None:
    """Fail before any work if the bundle cannot be written where asked (or would replace what it must not)."""
    dest = Path(os.path.expanduser(str(dest)))
    if len(os.fsencode(dest.name)) > 255:
        raise BadInputError(f"output name {dest.name[:40]}... is {len(os.fsencode(dest.name))} bytes; a file name "
                            "holds at most 255: choose a shorter -o path")
    if dest.is_symlink():
        raise BadInputError(f"output {dest} is a symbolic link (to {os.readlink(dest)}): a {kind} replaces its folder "
                            "whole, which would replace the link, not what it points to; give the folder itself, or "
                            "a new path, and point the link at it after")
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"output path {dest} exists and is not a directory; choose another -o path")
    if dest.exists():
        check_overwrite(dest, sources, owned, kind)      # what must never be replaced, with or without --overwrite
        if dest.is_dir() and os.path.ismount(dest):
            raise BadInputError(f"output {dest} is a mount point: a {kind} is written beside its folder and renamed "
                                "into place, which a mount point cannot take; give a folder inside it, e.g. -o "
                                f"{dest / 'bundle'}")
        if not overwrite:
            raise BadInputError(f"output {kind} {dest} already exists; pass --overwrite to replace it "
                                f"(the old {kind} is kept until the new one has passed validation)")
    if not dest.name or dest.name in (".", ".."):
        raise BadInputError(f"output path {dest} has no directory name; give the bundle directory, e.g. -o bundle")
    anchor = dest.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write the bundle to {dest}: {anchor} is not a writable directory; "
                            "choose an output path you can write to")


# ours: .NAME.staging-PID-TOKEN-XXXX (never .old-); NAME cut to NAME_IN_TEMP characters so the whole stays a legal name
STAGING_RE = re.compile(r"\..+\.staging-(?P<pid>\d+)-(?:(?P<token>[0-9a-f]{8})-)?[A-Za-z0-9_]+")
NAME_IN_TEMP = 64


@contextlib.contextmanager
def staged_bundle(dest: Path, overwrite: bool, sources: tuple[Path, ...] = (), owned=foreign_entries,
                  kind: str = "bundle"):
    """Yield a staging directory; on success it replaces `dest`, on any error it disappears (as do new parents).
    `owned(dest)`: None when an existing dest is not ours (refused), else the foreign files in it (refused if any)."""
    dest = Path(os.path.expanduser(str(dest)))
    if dest.name in ("", ".", ".."):
        dest = Path(os.path.abspath(dest))
    _restore_interrupted(dest)
    check_destination(dest, overwrite, sources, owned, kind)
    created = []
    p = dest.parent
    while not p.exists():
        created.append(p)
        p = p.parent
    staging = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(dest.parent, STAGING_RE)              # those of killed runs (any bundle name in this directory)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name[:NAME_IN_TEMP]}.staging-{os.getpid()}-"
                                                   f"{run_token()}-", dir=dest.parent))
        except OSError as e:             # a folder that takes no new entries (/proc, a read-only mount, a full disk)
            raise BadInputError(f"cannot write the {kind} {dest}: {dest.parent} takes no new folder "
                                f"({e.strerror}); choose an -o path on a writable disk") from e
        staging.chmod(0o777 & ~current_umask())     # mkdtemp makes it 0700; a deploy bundle is read by other users
        yield staging
        _readable_modes(staging)
        if dest.exists():
            if not overwrite:   # appeared while we worked
                raise BadInputError(f"output bundle {dest} appeared during conversion; pass --overwrite")
            check_overwrite(dest, sources, owned, kind)
            _replace(staging, dest)                  # staging now holds the old bundle, removed below
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.rename(staging, dest)
        log.info("bundle written to %s", dest)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for d in created:          # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step: Linux renameat2(RENAME_EXCHANGE), which Python's os does not wrap.
    False where the platform, C library or filesystem lacks it (the caller falls back to two renames)."""
    if sys.platform != "linux":
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:                                            # glibc < 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _old_name(dest: Path, pid: int) -> Path:
    return dest.with_name(f".{dest.name[:NAME_IN_TEMP]}.old-{pid}-{run_token()}")


def _replace(new: Path, dest: Path) -> None:
    """Put directory `new` at `dest` and the directory that was there at `new`, never leaving `dest` empty-handed:
    one atomic exchange, else dest moved aside (.NAME.old-PID-TOKEN) and moved back if the second rename fails."""
    if _exchange(new, dest):
        return
    old = _old_name(dest, os.getpid())
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    os.rename(old, new)


def _restore_interrupted(dest: Path) -> None:
    """A run of this host killed between the two renames of `_replace` left the previous bundle at
    .NAME.old-PID-TOKEN: put it back where nothing took its place, else remove it (the new bundle was published)."""
    if len(dest.name) > NAME_IN_TEMP:            # a cut name may be another bundle's: leave it
        return
    prefix = f".{dest.name}.old-"
    token = run_token()
    try:
        entries = [p for p in dest.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in entries:
        pid, _, tok = p.name[len(prefix):].partition("-")
        if tok != token or not pid.isdigit() or pid_alive(int(pid)) or not p.is_dir() or p.is_symlink():
            continue
        if not os.path.lexists(dest):
            os.rename(p, dest)
            log.warning("restored %s: a run killed while replacing it had moved it to %s", dest, p.name)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _readable_modes(root: Path) -> None:
    """Give every file and folder under `root` the read (and folder search) bits open() and mkdir() would: some
    writers create 0600 files (safetensors' save_file, tempfile), and a bundle is read by other users."""
    mask = current_umask()
    for d, dirs, files in os.walk(root):
        for name in dirs:
            p = os.path.join(d, name)
            os.chmod(p, os.stat(p).st_mode & 0o7777 | (0o555 & ~mask))
        for name in files:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o7777 | (0o444 & ~mask))


def write_json(path: Path, data: dict) -> None:
    from paddle2ort.runtime.files import atomic_write
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
