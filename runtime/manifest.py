"""The deploy bundle's manifest: what a model is (task, labels, inputs/outputs, precision, opset, checksums).

The converter writes it; the runtime reads it. File names never carry meaning: everything is looked up here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
VALIDATION_NAME = "validation.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                      # numpy dtype name, e.g. "float32", "int64"
    shape: tuple[int | str, ...]    # ints for static dims, names ("batch", "sequence") for dynamic ones

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))


@dataclass(frozen=True)
class ModelFile:
    precision: str                  # "fp32" | "fp16" | "int8" | ...
    file: str                       # relative to the bundle directory
    sha256: str
    size_bytes: int
    io_dtype: str = "float32"       # dtype of the float inputs/outputs of this file
    options: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "ModelFile":
        return cls(**d)


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

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels) if self.labels is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version {version!r} is not supported (this paddle2ort reads {SCHEMA_VERSION}); "
                "re-convert the model with this version of paddle2ort")
        try:
            return cls(
                schema_version=version, name=d["name"], task=d.get("task"),
                labels=tuple(d["labels"]) if d.get("labels") is not None else None,
                inputs=tuple(TensorSpec.from_json(x) for x in d["inputs"]),
                outputs=tuple(TensorSpec.from_json(x) for x in d["outputs"]),
                opset=int(d["opset"]),
                models={k: ModelFile.from_json(v) for k, v in d["models"].items()},
                source=d.get("source", {}), versions=d.get("versions", {}),
                validation=d.get("validation"), tokenizer=d.get("tokenizer"),
                extra=d.get("extra", {}), created_at=d.get("created_at", ""),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest is malformed ({type(e).__name__}: {e}); re-convert the model") from e


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A deploy bundle on disk: a directory with manifest.json and the files it names."""

    path: Path
    manifest: Manifest

    def model_path(self, precision: str, verify: bool = False) -> Path:
        """Path of one precision's model; with verify, its sha256 is checked against the manifest first."""
        if precision not in self.manifest.models:
            raise BundleError(
                f"bundle {self.path} has no {precision!r} model (it has: {', '.join(self.manifest.models)}); "
                f"convert with --precision {precision}")
        mf = self.manifest.models[precision]
        return self.checked_path(mf.file, mf.sha256) if verify else self.path / mf.file

    def checked_path(self, file: str, sha256: str) -> Path:
        """Path of a bundle file after checking it against the sha256 the manifest records for it."""
        path = self.path / file
        if not path.is_file() or sha256_file(path) != sha256:
            raise BundleError(f"bundle {self.path}: {file} changed or is missing since conversion (sha256 "
                              "differs from manifest.json); re-convert the model")
        return path

    def verify_checksums(self) -> list[str]:
        """Return the files whose sha256 no longer matches the manifest (empty when intact)."""
        bad = []
        for mf in self.manifest.models.values():
            p = self.path / mf.file
            if not p.is_file() or sha256_file(p) != mf.sha256:
                bad.append(mf.file)
        return bad


def load_bundle(path: str | Path, verify: bool = False) -> Bundle:
    path = Path(path)
    mpath = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"bundle directory {path} does not exist; create one with `paddle2ort convert SRC -o {path}`")
    if not mpath.is_file():
        raise BundleError(f"{path} is not a paddle2ort bundle: {MANIFEST_NAME} is missing; "
                          f"create one with `paddle2ort convert SRC -o {path}`")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); re-convert the model") from e
    bundle = Bundle(path=path, manifest=Manifest.from_json(data))
    if verify:
        bad = bundle.verify_checksums()
        if bad:
            raise BundleError(f"bundle {path}: files changed or missing since conversion: {', '.join(bad)} "
                              "(sha256 differs from manifest.json); re-convert the model")
    return bundle
