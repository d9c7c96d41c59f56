"""CuPy launchers for the CUDA kernels: sources ship in this package, compiled with NVRTC at first use
(CuPy caches the binary on disk and in-process)."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from ..errors import DeviceError
from .reference import SamplerParams

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent
THREADS = 1024                                   # sampling.cu THREADS


def cupy():
    try:
        import cupy as cp
    except ImportError as e:
        raise DeviceError("the on-device loop needs CuPy: pip install 'paddle2ort[gpu]' (cupy-cuda13x)") from e
    return cp


@functools.lru_cache(maxsize=None)
def module(name: str):
    cp = cupy()
    src = (SOURCES / name).read_text(encoding="utf-8")
    log.info("compiling %s with NVRTC (cached after the first time)", name)
    return cp.RawModule(code=src, options=("-std=c++17",))


def sample_rows(logits, rows, p: SamplerParams, next_ids, seen=None, stop_ids=None, tokens_out=None, seqlens=None,
                finished=None, stream=None) -> None:
    """Launch sample_rows_f16/f32 (one block per batch row) on `stream` (default: CuPy's current stream)."""
    cp = cupy()
    if logits.dtype not in (np.float16, np.float32):
        raise DeviceError(f"sampler kernel reads float16/float32 logits, got {logits.dtype}")
    b, vocab = next_ids.shape[0], logits.shape[-1]
    n_stop = 0 if stop_ids is None else int(stop_ids.size)
    max_new = tokens_out.shape[1] if tokens_out is not None else 0
    kern = module("sampling.cu").get_function("sample_rows_f16" if logits.dtype == np.float16 else "sample_rows_f32")
    null = np.uint64(0)                          # a NULL pointer argument
    args = (logits, rows if rows is not None else null, seen if seen is not None else null,
            stop_ids if n_stop else null, next_ids, tokens_out if tokens_out is not None else null,
            seqlens if seqlens is not None else null, finished if finished is not None else null,
            np.int32(vocab), np.int64(vocab), np.float32(p.temperature), np.int32(p.top_k), np.float32(p.top_p),
            np.float32(p.penalty), np.int32(p.do_sample), np.int32(p.suppress_stop), np.int32(n_stop),
            np.int32(p.step), np.int32(max_new), np.int32(p.pad_id), np.uint64(p.seed & 0xFFFFFFFFFFFFFFFF))
    with (stream or cp.cuda.get_current_stream()):
        kern((b,), (THREADS,), args)
