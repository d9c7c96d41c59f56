"""The one logits-processing module: NumPy twins of the CUDA kernels (sampling.cu, beam.cu) — same algorithm,
same Philox uniforms, same state updates.

Every decode loop chooses tokens through these (host arrays) or the kernels (device arrays), via
runtime.kernels; the device tests compare the kernels with them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_BEAMS = 32                                   # beam.cu MAX_BEAMS: its shared buffers hold 2 x 32 candidates
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)


def philox_uniform(seed: int, step: int, rows: np.ndarray) -> np.ndarray:
    """Philox4x32-10 with counter (step, row, 0, 0) and key (seed lo, seed hi) -> [len(rows)] uniforms in [0, 1)
    carrying 24 random bits (bit-identical to the kernel's draw)."""
    rows = np.asarray(rows, np.uint64)
    c0 = np.full(rows.shape, step & 0xFFFFFFFF, np.uint64)
    c1, c2, c3 = rows & _LO, np.zeros_like(rows), np.zeros_like(rows)
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    for _ in range(10):
        p0, p1 = _M0 * c0, _M1 * c2
        hi0, lo0, hi1, lo1 = p0 >> np.uint64(32), p0 & _LO, p1 >> np.uint64(32), p1 & _LO
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + np.uint64(_W0)) & _LO
        k1 = (k1 + np.uint64(_W1)) & _LO
    return (c0 >> np.uint64(8)).astype(np.float64) / 16777216.0


@dataclass(frozen=True)
class SamplerParams:
    """One step's logits processing; the kernel receives the same fields (sampling.cu `Params`)."""
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    penalty: float = 1.0
    suppress_stop: bool = False
    step: int = 0
    seed: int = 0
    pad_id: int = 0


def processed_logits(logits: np.ndarray, seen: np.ndarray | None, stop_ids: np.ndarray, p: SamplerParams) -> np.ndarray:
    """[B, V] float32 after the repetition penalty and stop suppression (before temperature)."""
    x = logits.astype(np.float32)
    if seen is not None and p.penalty != 1.0:
        x = np.where(seen.astype(bool), np.where(x > 0, x / np.float32(p.penalty), x * np.float32(p.penalty)), x)
    if p.suppress_stop and len(stop_ids):
        x = x.copy()
        x[:, stop_ids] = -np.inf
    return x


def keep_mask(x: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Tokens kept by top-k (ties at the k-th value kept) then top-p (smallest set of the most likely whose mass
    reaches p; ties at the threshold kept). x: [B, V] tempered logits."""
    keep = x > -np.inf
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = np.partition(x, -top_k, axis=-1)[:, -top_k][:, None]
        keep &= x >= kth
    if top_p < 1.0:
        e = np.where(keep, np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)), 0.0)
        order = np.argsort(-x, axis=-1, kind="stable")
        se = np.take_along_axis(e, order, -1)
        cum = np.cumsum(se, -1)
        z = cum[:, -1:]
        # threshold value: the first sorted position whose cumulative mass reaches p * z
        first = np.argmax(cum >= top_p * z, axis=-1)
        tau = np.take_along_axis(np.take_along_axis(x, order, -1), first[:, None], -1)
        keep &= x >= tau
    return keep


def sampling_probs(logits: np.ndarray, p: SamplerParams, seen: np.ndarray | None = None,
                   stop_ids: np.ndarray = np.zeros(0, np.int32)) -> np.ndarray:
    """The distribution sample_rows draws from (float64 [B, V]): processed, tempered, top-k/top-p kept."""
    x = processed_logits(logits, seen, stop_ids, p) / np.float32(p.temperature)
    keep = keep_mask(x, p.top_k, p.top_p)
    e = np.where(keep, np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)), 0.0)
    return e / e.sum(-1, keepdims=True)


def sample_rows(logits: np.ndarray, rows: np.ndarray | None, p: SamplerParams, next_ids: np.ndarray,
                seen: np.ndarray | None = None, stop_ids: np.ndarray = np.zeros(0, np.int32),
                tokens_out: np.ndarray | None = None, seqlens: np.ndarray | None = None,
                finished: np.ndarray | None = None) -> None:
    """Twin of sample_rows_f32/f16: logits [N, V] (rows picks one per batch row, else row b), state updated in place.
    next_ids int64 [B] (or [B, 1]), seen uint8 [B, V], tokens_out int32 [B, max_new], seqlens int32 [B],
    finished uint8 [B]."""
    b = next_ids.shape[0]
    lg = logits.reshape(-1, logits.shape[-1])
    lg = lg[np.asarray(rows)] if rows is not None else lg[:b]
    x = processed_logits(lg, seen, stop_ids, p)
    if not p.do_sample:
        tok = x.argmax(-1)
    else:
        x = x / np.float32(p.temperature)
        keep = keep_mask(x, p.top_k, p.top_p)
        e = np.where(keep, np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)), 0.0)
        cdf = np.cumsum(e, -1)
        u = philox_uniform(p.seed, p.step, np.arange(b))
        tok = np.minimum((cdf <= (u * cdf[:, -1])[:, None]).sum(-1), x.shape[-1] - 1)
        last = x.shape[-1] - 1 - np.argmax(keep[:, ::-1], -1)
        tok = np.where(keep[np.arange(b), tok], tok, last)
    tok = tok.astype(np.int64)
    done = finished.astype(bool).copy() if finished is not None else np.zeros(b, bool)
    tok = np.where(done, p.pad_id, tok)
    next_ids.reshape(b)[:] = tok
    if tokens_out is not None:
        tokens_out[:, p.step] = tok
    if seqlens is not None:
        seqlens += 1
    live = ~done
    if seen is not None:
        seen[np.arange(b)[live], tok[live]] = 1
    if finished is not None and not p.suppress_stop and len(stop_ids):
        finished[live & np.isin(tok, stop_ids)] = 1


def beam_topk(logits: np.ndarray, rows: np.ndarray | None, beam_scores: np.ndarray, beams: int,
              seen: np.ndarray | None = None, stop_ids: np.ndarray = np.zeros(0, np.int32), penalty: float = 1.0,
              suppress_stop: bool = False, banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Twin of beam_topk_f32/f16: logits [N, V] (rows picks one per beam row, else row i), beam_scores float32
    [G * K] -> each beam row's 2K best candidates (scores float32 [G * K, 2K], flat index int32 k * V + t within
    its prompt), best first, ties to the lower index; candidate = (beam score + penalized logit) -
    logsumexp(penalized row) in float32, stop tokens -inf while suppressed; -inf never chosen, unfilled (-inf, -1)."""
    n_rows, want = beam_scores.shape[0], 2 * beams
    lg = logits.reshape(-1, logits.shape[-1])
    lg = lg[np.asarray(rows)] if rows is not None else lg[:n_rows]
    x = processed_logits(lg, seen, stop_ids, SamplerParams(penalty=penalty))
    vocab = x.shape[-1]
    m = x.max(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = m + np.log(np.exp(x - m).sum(-1, keepdims=True, dtype=np.float32))
        s = beam_scores.astype(np.float32)[:, None]
        cand = np.where(s == -np.inf, np.float32(-np.inf), (s + x) - lse).astype(np.float32)
    if suppress_stop and len(stop_ids):
        cand[:, stop_ids] = -np.inf                                                   # after the log-softmax
    if banned is not None:
        cand[banned] = -np.inf                                                        # idem (no-repeat-ngram)
    if vocab < want:                                                                  # tiny vocabulary: pad
        cand = np.concatenate([cand, np.full((n_rows, want - vocab), -np.inf, np.float32)], axis=1)
    order = np.argsort(-cand, axis=-1, kind="stable")[:, :want]
    scores = np.take_along_axis(cand, order, -1)
    flat = order + (np.arange(n_rows) % beams)[:, None] * vocab
    return scores.astype(np.float32), np.where(scores > -np.inf, flat, -1).astype(np.int32)


def merge_beams(scores: np.ndarray, index: np.ndarray, beams: int) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's 2K best of its K rows' lists ([G * K, 2K] -> [G, 2K]): the overall best are among the
    rows' best; rows come in flat-index order, so a stable sort keeps ties at the lower index."""
    want = 2 * beams
    s = scores.reshape(-1, beams * want)
    i = index.reshape(-1, beams * want)
    order = np.argsort(-s, axis=-1, kind="stable")[:, :want]
    return np.take_along_axis(s, order, -1), np.take_along_axis(i, order, -1)
