"""`paddle2ort bench-llm` with a new user's bad and unusual inputs: each is refused with one message (exit 2, no
traceback) before any row is timed, and leaves the work directory as it was; the llama.cpp peer's cached GGUFs are
per source file, and a failed one leaves nothing half written; a run without a plot drops the earlier run's.

Cases run in this process through test_bad_inputs' runner pieces (its W world, shared tiny LLaMA bundle, snapshot);
the llama.cpp environment is a stub whose `import llama_cpp` works, so the peer's checks are reached."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from test_bad_inputs import W, bllm, refused_up_front, shared  # noqa: F401 (fixture)


def fake_llamacpp(root: Path) -> Path:
    """An interpreter whose `import llama_cpp` works (a stub: version and system info only), as `importable` wants."""
    lib = root / "lib" / "llama_cpp"
    lib.mkdir(parents=True, exist_ok=True)
    (lib / "__init__.py").write_text('__version__ = "0.0-stub"\n\n\ndef llama_print_system_info():\n'
                                     '    return b"CPU : AVX2 = 1 |"\n')
    exe = root / "python"
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={lib.parent} exec {sys.executable} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def tiny_gguf(path: Path, seed: int = 0) -> Path:
    from gguf_models import write_gguf
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(path, "llama", seed=seed)
    return path


def _peer(w: W) -> str:
    return str(fake_llamacpp(w.tmp.parent / "llamacpp-env"))


def _context(w: W) -> int:
    return json.loads((w.bundle("llm") / "manifest.json").read_text())["extra"]["llm"]["max_context"]


CASES = [   # (id, fragment expected in the output, argv)
    ("check-prompts-not-utf8", "prompts.txt:2 is not valid utf-8",
     lambda w: bllm(w, "--gguf", w.text("m.gguf", "x"), "--check-prompts", w.text("prompts.txt", b"hi\n\xff\xfe\n"))),
    ("check-prompts-empty", "holds no prompt",
     lambda w: bllm(w, "--gguf", w.text("m.gguf", "x"), "--check-prompts", w.text("prompts.txt", ""))),
    ("check-prompts-blank-lines", "holds no prompt",
     lambda w: bllm(w, "--gguf", w.text("m.gguf", "x"), "--check-prompts", w.text("prompts.txt", "\n  \n\t\n"))),
    ("check-prompts-directory", "is a directory; give a text file",
     lambda w: bllm(w, "--gguf", w.text("m.gguf", "x"), "--check-prompts", w.text("d/x", "") and w.p("d"))),
    ("check-prompts-past-context", "exceeds the model's context",
     lambda w: bllm(w, "--batch-sizes", "1", "--prompt-len", "4", "--new-tokens", "2", "--gguf",
                    w.text("m.gguf", "x"), "--check-prompts", w.text("prompts.txt", "hi\n" + "word " * _context(w)))),
    ("precision-twice", "names an item twice", lambda w: bllm(w, "--precision", "fp32,fp32")),
    ("precision-upper-case", "precision names are lower case: --precision fp32",
     lambda w: bllm(w, "--precision", "FP32")),
    ("batch-sizes-twice", "names an item twice", lambda w: bllm(w, "--batch-sizes", "1,1")),
    ("new-tokens-one", "--new-tokens must be >= 2", lambda w: bllm(w, "--new-tokens", "1")),
    ("gguf-not-a-gguf", "is not a readable gguf file",
     lambda w: bllm(w, "--batch-sizes", "1", "--gguf", w.text("m.gguf", "not a gguf"), "--llamacpp-python", _peer(w))),
    ("gguf-of-another-model", "is not the bundle's model: its vocab_size",
     lambda w: bllm(w, "--batch-sizes", "1", "--gguf", tiny_gguf(w.tmp.parent / "other.gguf"),
                    "--llamacpp-python", _peer(w))),
    ("gguf-without-a-peer-row", "add 1 to --batch-sizes",
     lambda w: bllm(w, "--batch-sizes", "2", "--gguf", w.text("m.gguf", "x"))),
    ("llamacpp-python-missing", "--llamacpp-python",
     lambda w: bllm(w, "--gguf", w.text("m.gguf", "x"), "--llamacpp-python", w.p("no-venv/bin/python"))),
    ("llamacpp-python-without-gguf", "pass --gguf", lambda w: bllm(w, "--llamacpp-python", sys.executable)),
    ("check-new-tokens-without-prompts", "pass --check-prompts", lambda w: bllm(w, "--check-new-tokens", "8")),
    ("output-inside-the-bundle", "inside the bundle",
     lambda w: ["bench-llm", w.bundle("llm"), "--output", w.bundle("llm"), "--batch-sizes", "1"]),
    ("paddle-model-not-a-model", "not a paddlenlp model directory",
     lambda w: bllm(w, "--paddle-model", w.text("pm/notes.txt", "x") and w.p("pm"))),
    ("paddle-model-of-another-shape", "is not the bundle's source model: its vocab_size 500",
     lambda w: bllm(w, "--paddle-model", w.llm_src('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", '
                                                   '"vocab_size": 500}'))),
]


@pytest.mark.parametrize("cid,fragment,argv", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_up_front(cid, fragment, argv, shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = refused_up_front(argv, fragment, shared, tmp_path, monkeypatch, capsys,
                           XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert "INFO paddle2ort.benchmarks.llm" not in out, "a row was timed before the refusal"
    assert not list((tmp_path / "cache").glob("paddle2ort/llamacpp/*"))       # no peer GGUF was written


@pytest.mark.unit
def test_the_token_check_needs_the_bundles_fp32_model():
    from paddle2ort.benchmarks.llm import LLMBenchConfig, check_prompts_fit
    from paddle2ort.runtime.errors import BadInputError
    cfg = LLMBenchConfig(bundle=Path("b"), check_prompts=("hi",))
    with pytest.raises(BadInputError, match="has no fp32 model .it has: int8.; convert with --precision fp32 too"):
        check_prompts_fit(cfg, None, 256, ("int8",))


def test_peer_ggufs_are_cached_per_source_file_not_per_name(llm_bundle, tmp_path, monkeypatch):
    """Two GGUFs named alike (another model's, or the source rewritten) each get their own F32 conversion: the
    cache once kept a file per stem, so the second run compared against the first model's weights."""
    import gguf

    from paddle2ort.benchmarks import llamacpp
    from paddle2ort.benchmarks.llm import LLMBenchConfig, llamacpp_jobs
    from paddle2ort.convert.llm.gguf_import import dequantized
    from paddle2ort.runtime.manifest import load_bundle
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(llamacpp, "check_source_gguf", lambda path, llm: None, raising=False)   # not the bundle's
    python, bundle = fake_llamacpp(tmp_path / "env"), load_bundle(llm_bundle)
    paths = []
    for seed in (1, 2):
        src = tiny_gguf(tmp_path / f"m{seed}" / "model.gguf", seed)
        cfg = LLMBenchConfig(bundle=llm_bundle, batch_sizes=(1,), prompt_len=4, new_tokens=2, gguf=src,
                             llamacpp_python=python)
        job, = llamacpp_jobs(cfg, ("fp32",), 1, bundle)["jobs"]
        want = dequantized(gguf.GGUFReader(str(src)))["token_embd.weight"]
        np.testing.assert_array_equal(dequantized(gguf.GGUFReader(job["model"]))["token_embd.weight"], want)
        paths.append(job["model"])
    assert paths[0] != paths[1]
    assert not list((tmp_path / "cache").rglob("*.part"))


@pytest.mark.unit
def test_source_gguf_is_checked_against_the_bundle(tmp_path):
    import gguf

    from paddle2ort.benchmarks.llamacpp import check_source_gguf
    from paddle2ort.runtime.errors import BadInputError
    src = tiny_gguf(tmp_path / "m.gguf")
    n = len(gguf.GGUFReader(str(src)).fields["tokenizer.ggml.tokens"].contents())
    check_source_gguf(src, {"vocab_size": n, "num_layers": 2, "hidden_size": 256})          # its own shape: fine
    with pytest.raises(BadInputError, match=r"its num_layers 2 \(the bundle's: 3\)"):
        check_source_gguf(src, {"vocab_size": n, "num_layers": 3, "hidden_size": 256})


@pytest.mark.unit
def test_a_failed_peer_gguf_leaves_nothing_half_written(tmp_path, monkeypatch):
    import errno

    import gguf

    from paddle2ort.benchmarks.llamacpp import write_gguf
    src = tiny_gguf(tmp_path / "src" / "m.gguf")

    def disk_full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)   # header and metadata written
    with pytest.raises(OSError, match="No space left"):
        write_gguf(src, tmp_path / "cache" / "m.F32.gguf", "F32")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_run_without_a_plot_drops_the_earlier_runs_plot(llm_bundle, tmp_path, monkeypatch):
    """The plot shows batch 1: a later run into the same folder at batch 2 alone has none, and the earlier run's
    llm.png would sit beside the new llm.json as if it were this run's."""
    from paddle2ort.cli import main
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("matplotlib")
    argv = ["-q", "bench-llm", str(llm_bundle), "--output", "res", "--prompt-len", "4", "--new-tokens", "2",
            "--threads", "1", "--no-floor"]
    assert main([*argv, "--batch-sizes", "1"]) == 0
    assert (tmp_path / "res" / "llm.png").is_file()
    assert main([*argv, "--batch-sizes", "2"]) == 0
    assert json.loads((tmp_path / "res" / "llm.json").read_text())["config"]["batch_sizes"] == [2]
    assert not (tmp_path / "res" / "llm.png").exists()
