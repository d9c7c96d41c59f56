"""The deploy bundle's manifest: what a model is (task, labels, inputs/outputs, precision, opset, checksums).

The converter writes it; the runtime reads it. File names never carry meaning: everything is looked up here.
Every file of a bundle (models, tokenizer, validation inputs and report, fused decoders, external weight data) has
its sha256 under `files`; `load_bundle` checks them by default, and every path must stay inside the bundle.
A malformed field is a BundleError (exit 2) naming the field, never a traceback.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BadInputError, BundleError
from .session import OPT_LEVELS, SessionOptions, create_session

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
VALIDATION_NAME = "validation.json"
PRECISION_NAMES = ("fp32", "fp16", "int8", "int4")
IO_DTYPES = ("float32", "float16")
BPE_TOKENIZER_KEYS = {"kind", "files", "eos_token_id", "pad_token_id"}    # what convert-llm writes
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_recorded_ops(ops, fields: dict[str, tuple[str, ...]], where: str, what: str, error=BundleError) -> list:
    """A recorded preprocessing list (a suite's ops as a runtime applies them: extra.detection's Preprocess,
    extra.segmentation's transforms): a list of mappings, each a known `type` with the `fields[type]` the runtime
    reads; `error` raised naming `where` and the op (`what` N)."""
    if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
        raise error(f"{where}: the {what}s must be a list of ops, got {ops!r:.200}")
    for i, op in enumerate(ops):
        kind, at = op.get("type"), f"{where}: {what} {i + 1} ({op.get('type')!r})"
        if kind not in fields:
            raise error(f"{at} is not one the runtime applies ({', '.join(fields)})")
        missing = [k for k in fields[kind] if k not in op]
        if missing:
            raise error(f"{at} lacks {', '.join(missing)}")
    return ops


def _fail(fieldname: str, problem: str) -> BundleError:
    return BundleError(f"manifest field {fieldname!r} {problem}; the bundle is damaged or was edited by hand: "
                       "re-convert the model")


def _typed(value, types, fieldname: str, what: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(fieldname, f"must be {what}, got {value!r}")
    if not isinstance(value, types):
        raise _fail(fieldname, f"must be {what}, got {type(value).__name__} {value!r:.60}")
    return value


def _keys(d: dict, allowed: set, required: set, fieldname: str) -> None:
    unknown, missing = set(d) - allowed, required - set(d)
    if unknown:
        raise _fail(fieldname, f"has unknown key(s) {sorted(unknown)} (allowed: {sorted(allowed)})")
    if missing:
        raise _fail(fieldname, f"lacks key(s) {sorted(missing)}")


def check_relpath(rel, fieldname: str) -> str:
    """A bundle file path: relative, POSIX, no '..', no empty parts (symlinks are checked on disk)."""
    _typed(rel, str, fieldname, "a relative file path (str)")
    p = PurePosixPath(rel)
    if not rel or "\\" in rel or "\x00" in rel or p.is_absolute() or ".." in p.parts or rel.startswith("~"):
        raise _fail(fieldname, f"is {rel!r}: file paths must be relative and stay inside the bundle")
    return rel


def _sha(value, fieldname: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise _fail(fieldname, f"must be a sha256 (64 lowercase hex digits), got {value!r:.80}")
    return value


def _size(value, fieldname: str) -> int:
    _typed(value, int, fieldname, "a byte count (int >= 0)")
    if value < 0:
        raise _fail(fieldname, f"must be a byte count (int >= 0), got {value}")
    return value


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                      # numpy dtype name, e.g. "float32", "int64"
    shape: tuple[int | str, ...]    # ints for static dims, names ("batch", "sequence") for dynamic ones

    @classmethod
    def from_json(cls, d, fieldname: str = "tensor") -> "TensorSpec":
        import numpy as np
        _typed(d, dict, fieldname, "an object {name, dtype, shape}")
        _keys(d, {f.name for f in dataclasses.fields(cls)}, {"name", "dtype", "shape"}, fieldname)
        name = _typed(d["name"], str, f"{fieldname}.name", "a str")
        if not name:
            raise _fail(f"{fieldname}.name", "is empty")
        dtype = _typed(d["dtype"], str, f"{fieldname}.dtype", "a numpy dtype name")
        try:
            np.dtype(dtype)
        except TypeError:
            raise _fail(f"{fieldname}.dtype", f"is {dtype!r}, not a numpy dtype name") from None
        shape = _typed(d["shape"], list, f"{fieldname}.shape", "a list of dims")
        for i, dim in enumerate(shape):
            _typed(dim, (int, str), f"{fieldname}.shape[{i}]", "an int (static) or a str (dynamic dim name)")
            if isinstance(dim, int) and dim < 0:
                raise _fail(f"{fieldname}.shape[{i}]", f"is {dim}; static dims are >= 0")
        return cls(name=name, dtype=dtype, shape=tuple(shape))


@dataclass(frozen=True)
class ModelFile:
    precision: str                  # "fp32" | "fp16" | "int8" | ...
    file: str                       # relative to the bundle directory
    sha256: str
    size_bytes: int
    io_dtype: str = "float32"       # dtype of the float inputs/outputs of this file
    options: dict = field(default_factory=dict)
    # the highest onnxruntime graph optimization level this file loaded at in the gate, where a higher one crashed
    # the loading process (runtime.load_probe); None: every level loads
    max_graph_optimization: str | None = None

    @classmethod
    def from_json(cls, d, fieldname: str = "models") -> "ModelFile":
        _typed(d, dict, fieldname, "an object {precision, file, sha256, size_bytes, io_dtype, options}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        _keys(d, allowed, {"precision", "file", "sha256", "size_bytes"}, fieldname)
        prec = _typed(d["precision"], str, f"{fieldname}.precision", "a str")
        io_dtype = d.get("io_dtype", "float32")
        if io_dtype not in IO_DTYPES:
            raise _fail(f"{fieldname}.io_dtype", f"is {io_dtype!r}; one of {IO_DTYPES}")
        level = d.get("max_graph_optimization")
        if level is not None and level not in OPT_LEVELS:
            raise _fail(f"{fieldname}.max_graph_optimization", f"is {level!r}; one of {OPT_LEVELS} or null")
        return cls(precision=prec, file=check_relpath(d["file"], f"{fieldname}.file"),
                   sha256=_sha(d["sha256"], f"{fieldname}.sha256"),
                   size_bytes=_size(d["size_bytes"], f"{fieldname}.size_bytes"), io_dtype=io_dtype,
                   options=_typed(d.get("options", {}), dict, f"{fieldname}.options", "an object"),
                   max_graph_optimization=level)


def _check_tokenizer(tok) -> dict | None:
    if tok is None:
        return None
    _typed(tok, dict, "tokenizer", "an object or null")
    from paddle2ort.tokenization.base import TokenizerConfig     # the wordpiece section is its dataclass
    known = {"wordpiece": {f.name for f in dataclasses.fields(TokenizerConfig)}, "bpe": BPE_TOKENIZER_KEYS}
    kind = tok.get("kind", "wordpiece")
    if kind not in known:
        raise _fail("tokenizer.kind", f"is {kind!r}; known kinds: {sorted(known)}")
    _keys(tok, known[kind], set(), "tokenizer")
    for key in ("vocab_file", "tokenizer_file"):
        if key in tok:
            check_relpath(tok[key], f"tokenizer.{key}")
    for key in ("pad_token", "cls_token", "sep_token", "unk_token", "files"):
        if key in tok:
            _typed(tok[key], str, f"tokenizer.{key}", "a str")
    for key in ("eos_token_id", "pad_token_id", "max_seq_length"):
        if key in tok:
            _typed(tok[key], int, f"tokenizer.{key}", "an int")
            if tok[key] < (2 if key == "max_seq_length" else 0):
                raise _fail(f"tokenizer.{key}", f"is {tok[key]}, out of range")
    if "do_lower_case" in tok:
        _typed(tok["do_lower_case"], bool, "tokenizer.do_lower_case", "true or false")
    return tok


def _check_fused(extra: dict) -> None:
    fused = extra.get("fused")
    if fused is None:
        return
    _typed(fused, dict, "extra.fused", "an object {precision: {file, sha256, size_bytes, options, validation}}")
    for prec, e in fused.items():
        f = f"extra.fused.{prec}"
        _typed(e, dict, f, "an object")
        _keys(e, set(e), {"file", "sha256", "options"}, f)
        check_relpath(e["file"], f"{f}.file")
        _sha(e["sha256"], f"{f}.sha256")
        _typed(e["options"], dict, f"{f}.options", "an object")
        _typed(e["options"].get("spec"), dict, f"{f}.options.spec", "an object (the decoder geometry)")


def _check_adapter(extra: dict) -> None:
    """extra.adapter (convert-llm --lora / --prefix): its kind, the adapter files' sha256 and, for a prefix, the
    bundle file of its cache rows."""
    ad = extra.get("adapter")
    if ad is None:
        return
    _typed(ad, dict, "extra.adapter", "an object {kind, sha256, ...}")
    if ad.get("kind") not in ("lora", "prefix"):
        raise _fail("extra.adapter.kind", f"is {ad.get('kind')!r}; one of 'lora', 'prefix'")
    for name, sha in _typed(ad.get("sha256"), dict, "extra.adapter.sha256", "an object {file: sha256}").items():
        _sha(sha, f"extra.adapter.sha256[{name!r}]")
    if ad["kind"] == "prefix":
        check_relpath(ad.get("file"), "extra.adapter.file")
        _sha(ad.get("file_sha256"), "extra.adapter.file_sha256")
        n = _typed(ad.get("num_prefix_tokens"), int, "extra.adapter.num_prefix_tokens", "an int")
        if n < 1:
            raise _fail("extra.adapter.num_prefix_tokens", f"is {n}, out of range")


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    task: str | None
    labels: tuple[str, ...] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    models: dict[str, ModelFile]                      # precision -> file
    source: dict[str, Any]                            # format, files, sha256 of the Paddle model
    versions: dict[str, str]
    validation: dict[str, Any] | None = None          # precision -> summary (None when --no-validate)
    tokenizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    files: dict[str, dict] = field(default_factory=dict)   # every bundle file but this one -> {sha256, size_bytes}

    def to_json(self) -> dict:
        """Plain JSON types (lists, not tuples): what from_json reads back."""
        def plain(x):
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x
        d = plain(dataclasses.asdict(self))
        for m in d["models"].values():            # written only where a level crashed onnxruntime
            if m.get("max_graph_optimization") is None:
                m.pop("max_graph_optimization", None)
        return d

    @classmethod
    def from_json(cls, d) -> "Manifest":
        """Parse and check every field; a problem is a BundleError naming the field."""
        if not isinstance(d, dict):
            raise BundleError(f"{MANIFEST_NAME} must hold a JSON object, got a JSON {type(d).__name__}; "
                              "the bundle is damaged: re-convert the model")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported (this paddle2ort reads {SCHEMA_VERSION}); "
                "re-convert the model with this version of paddle2ort")
        _keys(d, {f.name for f in dataclasses.fields(cls)}, {"name", "inputs", "outputs", "opset", "models", "files"},
              "(top level)")
        name = _typed(d["name"], str, "name", "a str")
        task = d.get("task")
        if task is not None:
            _typed(task, str, "task", "a str or null")
        labels = d.get("labels")
        if labels is not None:
            _typed(labels, list, "labels", "a list of str or null")
            for i, lab in enumerate(labels):
                _typed(lab, str, f"labels[{i}]", "a str")
            if not labels or len(set(labels)) != len(labels) or not all(lab.strip() for lab in labels):
                raise _fail("labels", f"must be non-empty, unique, non-blank strings, got {labels!r:.120}")
        specs = {}
        for key in ("inputs", "outputs"):
            _typed(d[key], list, key, "a non-empty list of tensor specs")
            if not d[key]:
                raise _fail(key, "is empty; a model has at least one")
            specs[key] = tuple(TensorSpec.from_json(x, f"{key}[{i}]") for i, x in enumerate(d[key]))
            names = [s.name for s in specs[key]]
            if len(set(names)) != len(names):
                raise _fail(key, f"has duplicate names {names}")
        opset = _typed(d["opset"], int, "opset", "an int")
        if not 1 <= opset <= 100:
            raise _fail("opset", f"is {opset}, out of range")
        models_raw = _typed(d["models"], dict, "models", "an object {precision: model file}")
        if not models_raw:
            raise _fail("models", "is empty; a bundle holds at least one model")
        models = {}
        for prec, mf in models_raw.items():
            models[prec] = ModelFile.from_json(mf, f"models.{prec}")
            if models[prec].precision != prec:
                raise _fail(f"models.{prec}.precision", f"is {models[prec].precision!r}, not {prec!r}")
        if labels is not None and task != "object-detection":   # a detector's: its NMS rows' class ids
            last = specs["outputs"][0].shape[-1] if specs["outputs"][0].shape else None
            if isinstance(last, int) and last != len(labels):
                raise _fail("labels", f"has {len(labels)} labels but output {specs['outputs'][0].name!r} has "
                                      f"{last} classes")
        extra = _typed(d.get("extra", {}), dict, "extra", "an object")
        _check_fused(extra)
        _check_adapter(extra)
        files = _typed(d["files"], dict, "files", "an object {relative path: {sha256, size_bytes}}")
        for rel, e in files.items():
            check_relpath(rel, f"files[{rel!r}]")
            _typed(e, dict, f"files[{rel!r}]", "an object {sha256, size_bytes}")
            _keys(e, {"sha256", "size_bytes"}, {"sha256", "size_bytes"}, f"files[{rel!r}]")
            _sha(e["sha256"], f"files[{rel!r}].sha256")
            _size(e["size_bytes"], f"files[{rel!r}].size_bytes")
        if MANIFEST_NAME in files:
            raise _fail("files", f"lists {MANIFEST_NAME} itself")
        for where, rel, sha in ([(f"models.{p}", m.file, m.sha256) for p, m in models.items()]
                                + [(f"extra.fused.{p}", e["file"], e["sha256"])
                                   for p, e in (extra.get("fused") or {}).items()]
                                + [("extra.adapter", a["file"], a["file_sha256"])
                                   for a in [extra.get("adapter") or {}] if a.get("kind") == "prefix"]):
            if files.get(rel, {}).get("sha256") != sha:
                raise _fail(f"{where}.file", f"names {rel!r}, which `files` does not list with the same sha256")
        validation = d.get("validation")
        if validation is not None:
            _typed(validation, dict, "validation", "an object or null")
        return cls(
            schema_version=version, name=name, task=task, labels=tuple(labels) if labels is not None else None,
            inputs=specs["inputs"], outputs=specs["outputs"], opset=opset, models=models,
            source=_typed(d.get("source", {}), dict, "source", "an object"),
            versions=_typed(d.get("versions", {}), dict, "versions", "an object"),
            validation=validation, tokenizer=_check_tokenizer(d.get("tokenizer")), extra=extra,
            created_at=_typed(d.get("created_at", ""), str, "created_at", "a str"), files=files)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> dict[str, dict]:
    """{relative path: {sha256, size_bytes}} of every regular file under root (the manifest's `files`)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise BundleError(f"{p} is a symbolic link; a bundle holds regular files only")
        if p.is_file() and rel not in exclude:
            out[rel] = {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
    return out


@dataclass(frozen=True)
class Bundle:
    """A deploy bundle on disk: a directory with manifest.json and the files it names."""

    path: Path
    manifest: Manifest
    verified: bool = False          # every file's sha256 was checked when it was loaded

    def resolve(self, file: str, fieldname: str = "file") -> Path:
        """Bundle-relative path -> path on disk, refused when it (or a symlink on the way) leaves the bundle."""
        check_relpath(file, fieldname)
        root = self.path.resolve()
        path = (self.path / file).resolve()
        if not path.is_relative_to(root) or path == root:
            raise BundleError(f"bundle {self.path}: {file} resolves to {path}, outside the bundle (a symbolic "
                              "link?); a bundle's files must lie inside it: re-convert the model")
        return self.path / file

    def model_path(self, precision: str, verify: bool = True) -> Path:
        """Path of one precision's model; with verify, its sha256 is checked against the manifest first."""
        if precision not in self.manifest.models:
            have = ", ".join(self.manifest.models)
            if precision not in PRECISION_NAMES:
                hint = (f"precision names are lowercase: {precision.lower()}" if precision.lower() in PRECISION_NAMES
                        else f"precisions are {', '.join(PRECISION_NAMES)}")
                raise BadInputError(f"unknown precision {precision!r}: {hint} (this bundle has: {have})")
            raise BundleError(f"bundle {self.path} has no {precision!r} model (it has: {have}); pick one of those, or "
                              f"convert with --precision {precision}")
        mf = self.manifest.models[precision]
        return self.checked_path(mf.file, mf.sha256) if verify else self.resolve(mf.file)

    def session_options(self, precision: str, opts: SessionOptions) -> SessionOptions:
        """`opts` for this precision's model: its graph optimization level capped where the manifest records the
        highest level the model loaded at (a higher one crashed onnxruntime in the conversion gate)."""
        cap = self.manifest.models[precision].max_graph_optimization if precision in self.manifest.models else None
        if cap is None or OPT_LEVELS.index(opts.graph_optimization) <= OPT_LEVELS.index(cap):
            return opts
        log.debug("%s: graph optimization %r capped at %r, as the manifest records (a higher level crashed "
                 "onnxruntime loading this model)", self.manifest.models[precision].file, opts.graph_optimization, cap)
        return dataclasses.replace(opts, graph_optimization=cap)

    def open_session(self, precision: str, opts: SessionOptions):
        """onnxruntime session of this precision's model (its checksum checked first), at a level that loads."""
        return create_session(self.model_path(precision, verify=True), self.session_options(precision, opts))

    def checked_path(self, file: str, sha256: str) -> Path:
        """Path of a bundle file after checking it against the sha256 the manifest records for it."""
        path = self.resolve(file)
        if self.verified and self.manifest.files.get(file, {}).get("sha256") == sha256:
            return path
        if not path.is_file():
            raise BundleError(f"bundle {self.path}: {file} is missing; copy the bundle again whole, or re-convert "
                              "the model")
        if sha256_file(path) != sha256:
            raise BundleError(f"bundle {self.path}: {file} changed since conversion (its sha256 differs from "
                              "manifest.json); copy the bundle again whole, or re-convert the model")
        return path

    def verify_checksums(self) -> list[str]:
        """Files whose sha256 no longer matches the manifest, that are missing, or that it does not list."""
        bad = []
        for rel, e in self.manifest.files.items():
            p = self.resolve(rel, f"files[{rel!r}]")
            if not p.is_file():
                bad.append(f"{rel} (missing)")
            elif p.stat().st_size != e["size_bytes"] or sha256_file(p) != e["sha256"]:
                bad.append(f"{rel} (changed: its sha256 differs from the manifest's)")
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            if (p.is_file() or p.is_symlink()) and rel != MANIFEST_NAME and rel not in self.manifest.files:
                bad.append(f"{rel} (not in the manifest)")
        return bad


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle. verify (default): every file's sha256 against the manifest; pass verify=False only
    where the load time matters more than tamper detection (the used model is still checked by model_path)."""
    path = Path(path)
    mpath = path / MANIFEST_NAME
    if path.is_file():
        raise BundleError(f"{path} is a file; give the bundle directory (the folder holding {MANIFEST_NAME})")
    if not path.is_dir():
        raise BundleError(f"bundle directory {path} does not exist; create one with `paddle2ort convert SRC -o {path}`")
    if not mpath.is_file():
        raise BundleError(f"{path} is not a paddle2ort bundle: {MANIFEST_NAME} is missing; "
                          f"create one with `paddle2ort convert SRC -o {path}`")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); re-convert the model") from e
    manifest = Manifest.from_json(data)
    bundle = Bundle(path=path, manifest=manifest)
    for rel in manifest.files:
        bundle.resolve(rel, f"files[{rel!r}]")
    if verify:
        bad = bundle.verify_checksums()
        if bad:
            raise BundleError(f"bundle {path}: files changed, missing or added since conversion: {', '.join(bad)}; "
                              "copy the bundle again whole, or re-convert the model")
        bundle = dataclasses.replace(bundle, verified=True)
    return bundle
