"""onnxruntime-genai's model folder with `enable_cuda_graph` set on its CUDA provider (its best configuration)."""
from __future__ import annotations

import copy
import json
from pathlib import Path


def with_cuda_graph(cfg: dict) -> dict:
    """A copy of a genai_config.json dict whose decoder's CUDA provider options have enable_cuda_graph "1"."""
    cfg = copy.deepcopy(cfg)
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    provs = so.setdefault("provider_options", [])
    cuda = next((p["cuda"] for p in provs if "cuda" in p), None)
    if cuda is None:
        cuda = {}
        provs.append({"cuda": cuda})
    cuda["enable_cuda_graph"] = "1"
    return cfg


def genai_with_cuda_graph(src: Path, dst: Path) -> Path:
    """dst: the files of src linked, its genai_config.json patched by with_cuda_graph."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "genai_config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    cfg = with_cuda_graph(json.loads((src / "genai_config.json").read_text()))
    (dst / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return dst
