"""What the GPU check and the peer benchmark share: model configs, fused variants, special ids, seeded prompts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Model geometries of the peer benchmark (random weights). The special ids are those of the SmolLM2 tokenizer that
# the benchmark saves beside both HF models (onnxruntime-genai's builder needs one): <|im_start|> 1, <|im_end|> 2.
CONFIGS = {
    "smollm2-135m": {"arch": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
    "qwen2.5-0.5b": {"arch": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                     "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
}
# GPT-2 small geometry (random weights) of the device check; GPT-2 has one special id, <|endoftext|>.
GPT2_CONFIG = {"vocab_size": 50257, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
               "intermediate_size": 3072, "max_position_embeddings": 1024, "bos_token_id": 50256,
               "eos_token_id": 50256}

FUSED_VARIANTS = {"fp32": ("fp32", None), "fp16": ("fp16", "float16"), "fp16-head32": ("fp16", "float32"),
                  "int4": ("int4", None)}             # name -> (precision, LM head dtype; None = the graph's)


def special_ids(cfg: dict) -> tuple[int, ...]:
    """The bos/eos/pad ids a config (HF / PaddleNLP config.json keys) names, each once."""
    ids = []
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = cfg.get(key)
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return tuple(ids)


def pad_id(cfg: dict) -> int:
    """The config's pad id; models without one (GPT-2, many LLaMAs) pad with eos, as PaddleNLP and HF do."""
    for key in ("pad_token_id", "eos_token_id"):
        v = cfg.get(key)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    raise ValueError("the model config names neither pad_token_id nor eos_token_id")


def gguf_special_ids(tok: dict) -> dict:
    """GGUF tokenizer fields (`tokenizer.` prefix stripped, as smollm2.read_gguf returns them) -> config keys."""
    keys = {"bos_token_id": "ggml.bos_token_id", "eos_token_id": "ggml.eos_token_id",
            "pad_token_id": "ggml.padding_token_id"}
    return {k: int(tok[g]) for k, g in keys.items() if tok.get(g) is not None}


def random_prompts(rng: np.random.Generator, batch: int, length: int, vocab_size: int,
                   exclude: Sequence[int] = ()) -> np.ndarray:
    """Seeded prompt ids [batch, length] drawn uniformly from the model's own vocabulary, special ids left out."""
    keep = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(list(exclude), dtype=np.int64))
    return keep[rng.integers(0, len(keep), size=(batch, length))]


def agreement(got: list[list[int]], want: list[list[int]]) -> dict:
    """Position-wise token agreement and how many rows match exactly."""
    same = total = 0
    for g, w in zip(got, want):
        n = max(len(g), len(w))
        same += sum(1 for a, b in zip(g, w) if a == b)
        total += n
    return {"token_agreement": same / max(total, 1), "identical_rows": sum(g == w for g, w in zip(got, want)),
            "rows": len(want)}


def median(xs) -> float:
    return float(np.median(xs))


def device_info() -> dict:
    """GPU name and memory (CuPy), nvidia-smi's line, versions of the libraries in the run."""
    import cupy as cp

    from ..env import gpu_names
    props = cp.cuda.runtime.getDeviceProperties(0)
    info = {"gpu": props["name"].decode(), "gpu_memory_gb": round(props["totalGlobalMem"] / 2**30, 1),
            "nvidia_smi": "; ".join(gpu_names())}
    vers = {}
    for mod in ("onnxruntime", "onnxruntime_genai", "torch", "transformers", "cupy", "numpy"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing peer library is recorded as None
            vers[mod] = None
    info["versions"] = vers
    return info


def kernel_times(prof, calls: int, width: int | None = None) -> dict[str, tuple[float, float]]:
    """The CUDA kernels of a torch.profiler run (CUPTI: onnxruntime's, CuPy's and CUDA-graph replays too), per
    call: {name[:width]: (launches, microseconds)} (width None: whole names); host-side events (no device time)
    left out."""
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t and e.count:
            out[e.key[:width]] = (e.count / calls, t / calls)
    return out


def run_report_args(prog: str, doc: str, run_help: str, add_run_args, argv=None):
    """The device benchmarks' two-command CLI: `run --out DIR ...` (there, on the GPU; add_run_args(parser) adds
    the rest) and `report JSON` (Markdown beside a results JSON). -> the parsed args, logging configured."""
    import argparse
    import logging
    from pathlib import Path
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help=run_help)
    r.add_argument("--out", type=Path, required=True)
    add_run_args(r)
    w = sub.add_parser("report", help="Markdown beside a results JSON")
    w.add_argument("json", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return a
