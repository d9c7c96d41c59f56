"""CuPy launchers for the CUDA kernels: sources ship in this package, compiled with NVRTC at first use
(CuPy caches the binary on disk and in-process)."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from ..errors import DeviceError
from .reference import MAX_BEAMS, SamplerParams

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent
THREADS = 1024                                   # common.cuh THREADS


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
    return cp.RawModule(code=src, options=("-std=c++17", f"-I{SOURCES}"))     # common.cuh beside the sources


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


def beam_topk(logits, rows, beam_scores, beams: int, seen=None, stop_ids=None, penalty: float = 1.0,
              suppress_stop: bool = False, stream=None):
    """Launch beam_topk_f16/f32 (one block per beam row) -> each row's 2K best (scores float32 [G*K, 2K],
    flat index int32 [G*K, 2K])."""
    cp = cupy()
    if logits.dtype not in (np.float16, np.float32):
        raise DeviceError(f"beam kernel reads float16/float32 logits, got {logits.dtype}")
    if not 1 <= beams <= MAX_BEAMS:
        raise DeviceError(f"the beam kernel handles 1..{MAX_BEAMS} beams, got {beams}")
    vocab, n_rows = logits.shape[-1], beam_scores.shape[0]
    n_stop = 0 if stop_ids is None else int(stop_ids.size)
    kern = module("beam.cu").get_function("beam_topk_f16" if logits.dtype == np.float16 else "beam_topk_f32")
    null = np.uint64(0)
    with (stream or cp.cuda.get_current_stream()):
        scores = cp.empty((n_rows, 2 * beams), cp.float32)
        index = cp.empty((n_rows, 2 * beams), cp.int32)
        kern((n_rows,), (THREADS,), (logits, rows if rows is not None else null, seen if seen is not None else null,
                                     stop_ids if n_stop else null, beam_scores, scores, index, np.int32(vocab),
                                     np.int64(vocab), np.int32(beams), np.float32(penalty), np.int32(suppress_stop),
                                     np.int32(n_stop)))
    return scores, index
