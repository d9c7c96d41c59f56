"""Numeric helpers shared by the classifier, the decode loop and the benchmarks (float64 where it matters)."""
from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the row max (finite for any finite input), in float64."""
    z = np.asarray(x, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    z = np.asarray(x, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
