"""Bundles cannot be fooled and --overwrite cannot destroy: every file checksummed and verified on load, paths
confined to the bundle, every malformed manifest field a BundleError naming it, and replacement refused for anything
that is not our bundle. Synthetic bundles (no Paddle): fast."""
from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddle2ort.convert.bundle import check_destination, check_overwrite, staged_bundle
from paddle2ort.runtime.errors import BadInputError, BundleError
from paddle2ort.runtime.manifest import (MANIFEST_NAME, SCHEMA_VERSION, Manifest, ModelFile, TensorSpec, file_entries,
                                         load_bundle, sha256_file)

pytestmark = pytest.mark.unit


def make_bundle(root: Path, tokenizer: bool = True) -> Path:
    """A bundle as the converter writes it (the model bytes are opaque to the manifest checks)."""
    root.mkdir(parents=True)
    (root / "model.fp32.onnx").write_bytes(b"onnx model bytes")
    (root / "validation.json").write_text("{}")
    (root / "validation_inputs.npz").write_bytes(b"npz bytes")
    if tokenizer:
        (root / "tokenizer").mkdir()
        (root / "tokenizer" / "tokenizer.json").write_text('{"model": {"vocab": {"good": 1, "bad": 2}}}')
        (root / "tokenizer" / "vocab.txt").write_text("[PAD]\ngood\nbad\n")
    f = root / "model.fp32.onnx"
    m = Manifest(schema_version=SCHEMA_VERSION, name="tiny", task="text-classification", labels=("neg", "pos"),
                 inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),),
                 outputs=(TensorSpec("logits", "float32", ("batch", 2)),), opset=17,
                 models={"fp32": ModelFile("fp32", f.name, sha256_file(f), f.stat().st_size)},
                 source={}, versions={}, tokenizer={"kind": "wordpiece", "vocab_file": "tokenizer/vocab.txt",
                                                    "tokenizer_file": "tokenizer/tokenizer.json"} if tokenizer else None,
                 files=file_entries(root))
    (root / MANIFEST_NAME).write_text(json.dumps(m.to_json()))
    return root


def edit_manifest(root: Path, fn) -> Path:
    m = json.loads((root / MANIFEST_NAME).read_text())
    new = fn(m)
    (root / MANIFEST_NAME).write_text(json.dumps(new if isinstance(new, list) else m))
    return root


# ------------------------------------------------------------------------------------------ checksums, verify on load
def test_every_file_is_listed_and_reads_back(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b"))
    assert b.verified
    assert set(b.manifest.files) == {"model.fp32.onnx", "validation.json", "validation_inputs.npz",
                                     "tokenizer/tokenizer.json", "tokenizer/vocab.txt"}
    assert b.model_path("fp32") == tmp_path / "b" / "model.fp32.onnx"


@pytest.mark.parametrize("rel", ["model.fp32.onnx", "tokenizer/tokenizer.json", "tokenizer/vocab.txt",
                                 "validation_inputs.npz", "validation.json"])
def test_changed_file_fails_load_by_default(tmp_path, rel):
    root = make_bundle(tmp_path / "b")
    p = root / rel
    p.write_bytes(p.read_bytes().replace(b"good", b"baad") + b" ")           # e.g. two vocab entries swapped
    with pytest.raises(BundleError, match=rel.replace(".", r"\.")):
        load_bundle(root)


def test_added_and_missing_files_fail(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.onnx"):
        load_bundle(root)
    (root / "extra.onnx").unlink()
    (root / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(BundleError, match="vocab.txt"):
        load_bundle(root)


def test_opting_out_still_checks_the_model_used(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "validation.json").write_text('{"edited": true}')
    b = load_bundle(root, verify=False)                      # explicit opt-out: loads
    assert b.model_path("fp32").is_file()
    (root / "model.fp32.onnx").write_bytes(b"swapped model")
    with pytest.raises(BundleError, match="model.fp32.onnx"):
        b.model_path("fp32")


# ---------------------------------------------------------------------------------------------- paths confined
@pytest.mark.parametrize("path", ["../outside/evil.onnx", "/etc/passwd", "a/../../x.onnx", "~/x.onnx", ""])
def test_model_path_must_stay_inside(tmp_path, path):
    root = make_bundle(tmp_path / "b")

    def move(m):
        m["files"][path] = m["files"].pop("model.fp32.onnx")
        m["models"]["fp32"]["file"] = path
    edit_manifest(root, move)
    with pytest.raises(BundleError, match="inside the bundle"):
        load_bundle(root, verify=False)


def test_symlink_out_of_the_bundle_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((root / "model.fp32.onnx").read_bytes())     # same bytes, same sha256
    (root / "model.fp32.onnx").unlink()
    (root / "model.fp32.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(root)


# ----------------------------------------------------------------------------------------- malformed manifests
def _set(key, value):
    return lambda m: m.__setitem__(key, value)


MALFORMED = {
    "top-level-list": (lambda m: [m], "JSON object"),
    "models-list": (_set("models", [{"file": "model.fp32.onnx"}]), "'models'"),
    "models-empty": (_set("models", {}), "'models'"),
    "outputs-empty": (_set("outputs", []), "'outputs'"),
    "inputs-not-list": (_set("inputs", {"name": "x"}), "'inputs'"),
    "tensor-extra-key": (lambda m: m["inputs"][0].update(layout="NCHW"), "inputs\\[0\\]"),
    "dtype-unknown": (lambda m: m["outputs"][0].update(dtype="float33"), "outputs\\[0\\].dtype"),
    "dim-bool": (lambda m: m["outputs"][0].update(shape=["batch", True]), "shape\\[1\\]"),
    "name-int": (_set("name", 5), "'name'"),
    "opset-bool": (_set("opset", True), "'opset'"),
    "labels-dup": (_set("labels", ["a", "a"]), "'labels'"),
    "labels-vs-classes": (_set("labels", ["a", "b", "c"]), "'labels'"),
    "unknown-top-key": (_set("surprise", 1), "surprise"),
    "tokenizer-unknown-key": (lambda m: m["tokenizer"].update(evil=1), "'tokenizer'"),
    "tokenizer-kind": (lambda m: m["tokenizer"].update(kind="unigram"), "tokenizer.kind"),
    "tokenizer-max-len": (lambda m: m["tokenizer"].update(max_seq_length="128"), "tokenizer.max_seq_length"),
    "sha-short": (lambda m: m["models"]["fp32"].update(sha256="ab"), "sha256"),
    "size-str": (lambda m: m["files"]["validation.json"].update(size_bytes="2"), "size_bytes"),
    "files-missing": (lambda m: m.pop("files"), "files"),
    "files-model-unlisted": (lambda m: m["files"].pop("model.fp32.onnx"), "models.fp32.file"),
    "files-lists-manifest": (lambda m: m["files"].update({MANIFEST_NAME: m["files"]["validation.json"]}),
                             "manifest.json"),
    "options-list": (lambda m: m["models"]["fp32"].update(options=[]), "options"),
    "extra-list": (_set("extra", []), "'extra'"),
    "fused-no-spec": (_set("extra", {"fused": {"fp16": {"file": "f.onnx", "sha256": "0" * 64, "options": {}}}}),
                      "extra.fused.fp16"),
    "schema-old": (_set("schema_version", 1), "schema_version"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_field_is_a_bundle_error_naming_it(tmp_path, name):
    fn, field = MALFORMED[name]
    root = edit_manifest(make_bundle(tmp_path / "b"), fn)
    with pytest.raises(BundleError, match=field) as e:
        load_bundle(root)
    assert e.value.exit_code == 2


def test_manifest_round_trips(tmp_path):
    m = load_bundle(make_bundle(tmp_path / "b")).manifest
    assert Manifest.from_json(copy.deepcopy(m.to_json())) == m


# ----------------------------------------------------------------------------------------------------- overwrite
@pytest.fixture
def in_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_overwrite_replaces_only_our_bundles(in_dir):
    bundle = make_bundle(in_dir / "b")
    check_overwrite(bundle)                               # ours: fine
    (in_dir / "empty").mkdir()
    check_overwrite(in_dir / "empty")                     # nothing to lose: fine
    user = in_dir / "thesis"
    user.mkdir()
    (user / "thesis.txt").write_text("four years")
    with pytest.raises(BadInputError, match="not a paddle2ort bundle"):
        check_overwrite(user)
    (bundle / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="notes.txt"):
        check_overwrite(bundle)


def test_overwrite_never_the_source_cwd_home_or_root(in_dir, monkeypatch):
    bundle = make_bundle(in_dir / "b")
    src = bundle / "model.fp32.onnx"
    with pytest.raises(BadInputError, match="the input"):
        check_overwrite(bundle, (src,))
    with pytest.raises(BadInputError, match="the input"):
        check_overwrite(bundle, (bundle,))
    with pytest.raises(BadInputError, match="working directory"):
        check_overwrite(Path("."))
    with pytest.raises(BadInputError, match="working directory"):
        check_overwrite(in_dir.parent)
    monkeypatch.setenv("HOME", str(bundle))
    with pytest.raises(BadInputError, match="home directory"):
        check_overwrite(bundle)
    with pytest.raises(BadInputError, match="root directory"):
        check_overwrite(Path("/"))


def test_refused_overwrite_is_checked_before_any_work(in_dir):
    user = in_dir / "mine"
    user.mkdir()
    (user / "thesis.txt").write_text("x")
    ran = []
    with pytest.raises(BadInputError):
        with staged_bundle(user, overwrite=True):
            ran.append(1)
    assert not ran and (user / "thesis.txt").read_text() == "x"
    assert sorted(p.name for p in in_dir.iterdir()) == ["mine"]        # no staging dir left


def test_staged_bundle_replaces_an_old_bundle_atomically(in_dir):
    old = make_bundle(in_dir / "b")
    with staged_bundle(old, overwrite=True) as stage:
        make_bundle(stage / "x")                       # something to write
        (stage / "marker").write_text("new")
    assert (old / "marker").read_text() == "new"
    assert sorted(p.name for p in in_dir.iterdir()) == ["b"]


def test_no_overwrite_flag_refuses_existing(in_dir):
    make_bundle(in_dir / "b")
    with pytest.raises(BadInputError, match="--overwrite"):
        check_destination(in_dir / "b", overwrite=False)
    (in_dir / "f").write_text("x")
    with pytest.raises(BadInputError, match="not a directory"):
        check_destination(in_dir / "f", overwrite=True)
    assert os.path.exists(in_dir / "f")


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """Results, JSONL jobs and bundle files are read by other users: the atomic write must not keep mkstemp's 0600."""
    from paddle2ort.runtime.files import atomic_open, atomic_write
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        with atomic_open(tmp_path / "b.jsonl") as f:
            f.write("{}\n")
    finally:
        os.umask(old)
    assert {oct((tmp_path / n).stat().st_mode & 0o777) for n in ("a.json", "b.jsonl")} == {oct(0o644)}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_published_bundle_has_the_modes_the_umask_gives(in_dir, umask):
    """Some writers make 0600 files (safetensors' save_file, mkstemp) and mkdtemp a 0700 folder: the published bundle
    gets the read bits open() and mkdir() would give under the user's umask, no more (a 077 user keeps it private)."""
    old = os.umask(umask)
    try:
        with staged_bundle(in_dir / "b", overwrite=False) as stage:
            (stage / "sub").mkdir(mode=0o700)
            for f in (stage / "model.safetensors", stage / "sub" / "x.onnx"):
                f.write_text("w")
                f.chmod(0o600)
            (stage / "run.sh").write_text("#!/bin/sh\n")
            (stage / "run.sh").chmod(0o700)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [in_dir / "b", *(in_dir / "b").rglob("*")]}
    want_file, want_dir = 0o666 & ~umask & 0o644 | 0o600, 0o777 & ~umask & 0o755 | 0o700
    assert modes == {"b": want_dir, "sub": want_dir, "model.safetensors": want_file, "x.onnx": want_file,
                     "run.sh": 0o700 | (0o444 & ~umask)}   # read bits added, never execute


@pytest.mark.parametrize("text, fragment", [('{"a": ', "not a readable JSON file"), ("[1]", "JSON object, got a JSON list"),
                                            (b"\xff\xfe", "not a readable JSON file")])
def test_read_json_object_names_the_file_the_problem_and_the_fix(tmp_path, text, fragment):
    from paddle2ort.runtime.files import read_json_object
    p = tmp_path / "config.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BadInputError) as e:
        read_json_object(p, "model config", "re-save it")
    assert fragment in str(e.value) and str(p) in str(e.value) and str(e.value).endswith("re-save it")


def test_a_symlinked_or_mounted_output_is_refused_before_any_work(in_dir, monkeypatch):
    """`current -> releases/v3` would be replaced by a folder (the link gone, its target keeping the old bundle); a
    dangling link fails at the final rename; a mount point (a docker volume) cannot be renamed onto: each is one
    clear error up front, naming the fix."""
    target = make_bundle(in_dir / "v3")
    (in_dir / "current").symlink_to(target)
    (in_dir / "dangling").symlink_to(in_dir / "nowhere")
    for link in ("current", "dangling"):
        for overwrite in (False, True):
            with pytest.raises(BadInputError, match="symbolic link"):
                check_destination(in_dir / link, overwrite=overwrite)
    assert (in_dir / "current").is_symlink() and (target / MANIFEST_NAME).is_file()
    volume = make_bundle(in_dir / "volume")
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == volume)
    with pytest.raises(BadInputError, match="mount point.*-o .*volume/bundle"):
        check_destination(volume, overwrite=True)
    check_destination(volume / "bundle", overwrite=False)       # a folder inside it is fine
    with pytest.raises(BadInputError, match="255"):
        check_destination(in_dir / ("b" * 256), overwrite=False)


def test_default_precision_is_one_the_bundle_has(in_dir):
    """No release decision: FP32 where the bundle has it, else the most exact it has (an int8-only bundle was
    refused 'has no fp32 model' by every command run without --precision)."""
    import dataclasses
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.runtime.selection import default_precision
    m = load_bundle(make_bundle(in_dir / "b")).manifest
    assert default_precision(m) == "fp32"
    only = {p: dataclasses.replace(m.models["fp32"], precision=p) for p in ("int4", "int8", "fp16")}
    int8_fp16 = dataclasses.replace(m, models=only)
    assert default_precision(int8_fp16, "cpu") == "int8" and default_precision(int8_fp16, "gpu") == "fp16"
    assert default_precision(m, "cpu", available=("int4",)) == "int4"          # e.g. the fused graphs it has


def test_a_damaged_zoo_build_is_not_taken_as_cached(tmp_path):
    """zoo.json lists every file's size: a deleted or truncated model file means build again (it was reported
    'already built (cached)' and exited 0, without the model)."""
    from paddle2ort.convert.zoo import is_current, write_marker
    out = tmp_path / "zoo"
    (out / "model").mkdir(parents=True)
    (out / "model" / "inference.pdiparams").write_bytes(b"w" * 4096)
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    write_marker(out, {"build_key": "k/v1"})
    assert is_current(out, "k/v1") and not is_current(out, "k/v2")
    (out / "model" / "inference.pdiparams").write_bytes(b"w" * 1000)
    assert not is_current(out, "k/v1")
    (out / "model" / "inference.pdiparams").unlink()
    assert not is_current(out, "k/v1")
    (out / "zoo.json").write_text(json.dumps({"build_key": "k/v1"}))          # a build from before the file list
    assert not is_current(out, "k/v1")


def test_replacing_a_bundle_never_leaves_its_path_empty(tmp_path, monkeypatch):
    """The old bundle was renamed aside and then the new one in: a failure (or a kill) between the two renames left
    no bundle at -o. Linux swaps the two in one step; elsewhere a failed second rename puts the old one back, and a
    run killed there has its previous bundle restored by the next run."""
    import shutil

    import paddle2ort.convert.bundle as bundle
    template = make_bundle(tmp_path / "template")
    out = tmp_path / "out"
    dest = make_bundle(out / "b")
    inode = lambda: dest.stat().st_ino                                      # noqa: E731 - which bundle is there

    def publish():
        with staged_bundle(dest, overwrite=True) as stage:
            shutil.copytree(template, stage, dirs_exist_ok=True)
    if sys.platform == "linux":
        calls, real = [], bundle._exchange
        monkeypatch.setattr(bundle, "_exchange", lambda a, b: calls.append(real(a, b)) or calls[-1])
        before = inode()
        publish()
        assert len(calls) == 1 and inode() != before        # True, or False on a filesystem without it
        assert sorted(p.name for p in out.iterdir()) == ["b"]
    monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)           # a platform without the exchange
    real_rename = os.rename

    def second_rename_fails(src, dst):
        if ".staging-" in str(src):
            raise OSError(errno.EIO, "I/O error")
        return real_rename(src, dst)
    monkeypatch.setattr(bundle.os, "rename", second_rename_fails)
    before = inode()
    with pytest.raises(OSError, match="I/O error"):
        publish()
    monkeypatch.setattr(bundle.os, "rename", real_rename)
    assert inode() == before and sorted(p.name for p in out.iterdir()) == ["b"]
    publish()                                                               # the two renames, both succeeding
    assert inode() != before and sorted(p.name for p in out.iterdir()) == ["b"]
    # killed between the renames: the previous bundle sits at .b.old-PID-TOKEN and nothing at b
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = bundle._old_name(dest, int(dead.stdout))
    before = inode()
    real_rename(dest, aside)
    with pytest.raises(BadInputError, match="--overwrite"):                # it is back, so -o exists again
        with staged_bundle(dest, overwrite=False):
            pass
    assert inode() == before and sorted(p.name for p in out.iterdir()) == ["b"]
