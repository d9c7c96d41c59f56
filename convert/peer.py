"""Paddle Inference as a benchmark peer: benchmarks reach Paddle only through this, in the worker process."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.manifest import Manifest, sha256_file

from .paddle_proc import run_worker, workdir
from .source import ModelSource, locate


def matching_source(path: str | Path, manifest: Manifest) -> ModelSource:
    """Locate the Paddle model and check it is the one the bundle was converted from (same checksums, file by role:
    another model's files need not be named like the source's)."""
    src = locate(path)
    recorded = manifest.source or {}
    want = recorded.get("sha256", {})
    for f, role in ((src.model_file, "model_file"), (src.params_file, "params_file")):
        name = f.name if f is not None and f.name in want else recorded.get(role)
        if f is not None and name in want and sha256_file(f) != want[name]:
            raise BadInputError(f"{f} is not the model bundle {manifest.name!r} was converted from (sha256 differs "
                                "from the manifest); pass the original Paddle model with --paddle-model")
    return src


def paddle_inference_bench(source: ModelSource, batches: list[dict[str, np.ndarray]], warmup: int, repeats: int,
                           threads: int, output_index: int = 0) -> tuple[dict, list[np.ndarray]]:
    """Time Paddle Inference (CPU) over `batches`; returns (info with per-rep per-batch `times`, outputs)."""
    with workdir("peer") as work:
        np.savez(work / "batches.npz", **{f"{b}/{n}": a for b, feeds in enumerate(batches) for n, a in feeds.items()})
        info = run_worker("bench", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                    "batches_npz": str(work / "batches.npz"), "outputs_npz": str(work / "out.npz"),
                                    "num_batches": len(batches), "warmup": warmup, "repeats": repeats,
                                    "threads": threads, "output_index": output_index}, work)
        data = np.load(work / "out.npz")
        outs = [data[str(b)] for b in range(len(batches))]
    return info, outs
