"""Device kernels of the decode loop and the one place that routes to a kernel or its NumPy twin.

CuPy arrays go to the CUDA kernel (kernels/cuda.py), NumPy arrays to the twin (kernels/reference.py); both update
the loop state the same way, so the on-device loop runs unchanged on CPU hosts and in CI.
"""
from __future__ import annotations

import numpy as np

from .reference import MAX_BEAMS, SamplerParams, merge_beams, philox_uniform, sampling_probs

__all__ = ["MAX_BEAMS", "SamplerParams", "beam_topk", "merge_beams", "on_device", "philox_uniform", "sample_rows",
           "sampling_probs"]


def on_device(arr) -> bool:
    return not isinstance(arr, np.ndarray) and type(arr).__module__.startswith("cupy")


def sample_rows(logits, rows, p: SamplerParams, next_ids, seen=None, stop_ids=None, tokens_out=None, seqlens=None,
                finished=None, stream=None) -> None:
    """Process one row of logits per batch row, choose the next tokens and advance the loop state in place."""
    if on_device(logits):
        from . import cuda
        cuda.sample_rows(logits, rows, p, next_ids, seen, stop_ids, tokens_out, seqlens, finished, stream)
    else:
        from . import reference
        reference.sample_rows(logits, rows, p, next_ids, seen,
                              np.zeros(0, np.int32) if stop_ids is None else stop_ids, tokens_out, seqlens, finished)


def beam_topk(logits, rows, beam_scores, beams: int, seen=None, stop_ids=None, penalty: float = 1.0,
              suppress_stop: bool = False, stream=None, banned=None):
    """Each beam row's 2K best (beam, token) continuations -> (scores [G*K, 2K], flat index k * V + t [G*K, 2K]);
    merge_beams takes each prompt's 2K best of them. banned: bool [G*K, V] of tokens a row may not take (host
    arrays only: no-repeat-ngram)."""
    if on_device(logits):
        if banned is not None:
            raise NotImplementedError("banned tokens (no-repeat-ngram) are a host-array option of beam_topk")
        from . import cuda
        return cuda.beam_topk(logits, rows, beam_scores, beams, seen, stop_ids, penalty, suppress_stop, stream)
    from . import reference
    return reference.beam_topk(logits, rows, beam_scores, beams, seen,
                               np.zeros(0, np.int32) if stop_ids is None else stop_ids, penalty, suppress_stop,
                               banned)
