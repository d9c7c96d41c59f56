"""NumPy twins of decode.cu (the kernel engine's step), one function a kernel, same arguments and the same
float32 arithmetic: the engine runs them on CPU hosts and in CI, the device tests compare each kernel with its twin.

Weights are `Packed` (kernels.engine): row-major per output [N, K] float16/float32, or MatMulNBits blocks with a
{scale, zero point} pair per block. Activations are float32 [B, *]; the KV cache [B, KVH, C, D] keeps its dtype.
"""
from __future__ import annotations

import numpy as np

FORMATS = ("f16", "f32", "q8", "q4")


def dequantize(fmt: str, w, sz, k: int, block: int, xp=np, dtype=np.float32):
    """Packed weight -> [N, K] in `dtype`: w = (q - zp) * scale per block of `block` inputs (MatMulNBits' rule);
    xp=cupy dequantizes on the device (the engine's prompt pass)."""
    if fmt in ("f16", "f32"):
        return w.astype(dtype, copy=False)
    n = w.shape[0]
    raw = w.reshape(n, -1)
    if fmt == "q4":
        q = xp.empty((n, raw.shape[1] * 2), np.float32)
        q[:, 0::2], q[:, 1::2] = raw & 0xF, raw >> 4
    else:
        q = raw.astype(np.float32)
    scale = (sz & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float32)
    zp = (sz >> 16).astype(np.uint16).view(np.float16).astype(np.float32)
    q = q.reshape(n, -1, block)
    return ((q - zp[..., None]) * scale[..., None]).reshape(n, -1)[:, :k].astype(dtype)


def rms(x: np.ndarray, eps: float) -> np.ndarray:
    """1 / rms of each row [B, 1] (the kernels' rsqrt(mean(x^2) + eps))."""
    x = np.asarray(x, np.float32)
    return (1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps))).astype(np.float32)


A16 = np.float32(2.0 ** -6)        # decode.cu gemv3: x * gamma * A16 rounded to float16 (kept in float16's range)


QK = 32                            # cpu_step.c: int8 products quantize their input a block of 32 at a time


def quantize_a8(x: np.ndarray) -> np.ndarray:
    """x [..., K] (K a multiple of 32) as cpu_step.c's int8 products read it, dequantized: per block of 32,
    round(x / s) * s with s = max|x| / 127 (ggml Q8_0's rule). The C sums exact integer dot products of these
    integers, so its product equals dequantized weights times this, up to float32 summation order."""
    x = np.asarray(x, np.float32)
    b = x.reshape(-1, QK)
    s = np.abs(b).max(1, keepdims=True) / np.float32(127)
    inv = np.where(s > 0, np.float32(1) / np.where(s > 0, s, 1), 0).astype(np.float32)
    return (np.rint(b * inv) * s).astype(np.float32).reshape(x.shape)


def _dot(dense: np.ndarray, x: np.ndarray, gamma, eps: float, a16: bool = False, a8: bool = False) -> np.ndarray:
    """y = (x * gamma) @ W^T, times 1/rms(x) when gamma is given (the kernels apply the norm to the dot product).
    a16 (the v3 GEMVs): the activations enter as float16(x * gamma * A16) and y is scaled back by 1 / A16; `dense`
    is then the float16-rounded weight (dequantize(..., dtype=float16)). a8 (cpu_step.c's int8 products): the
    activations enter as quantize_a8(x * gamma)."""
    x = np.asarray(x, np.float32)
    xg = x if gamma is None else x * np.asarray(gamma, np.float32)
    if a8:
        xg = quantize_a8(xg)
    y = ((xg * A16).astype(np.float16).astype(np.float32) @ dense.T) * np.float32(1 / A16) if a16 else xg @ dense.T
    return y if gamma is None else y * rms(x, eps)


def embed_rows(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.asarray(table, np.float32)[np.asarray(ids).reshape(-1)]


def gemv_resid(dense: np.ndarray, x: np.ndarray, out: np.ndarray, a16: bool = False, a8: bool = False) -> None:
    """out += x @ W^T (o-proj, down-proj)."""
    out += _dot(dense, x, None, 0.0, a16, a8)


def gemv_logits(dense: np.ndarray, x: np.ndarray, gamma, eps: float, a16: bool = False,
                a8: bool = False) -> np.ndarray:
    """LM head over the final RMSNorm -> float32 [B, V]."""
    return _dot(dense, x, gamma, eps, a16, a8)


def gemv_swiglu(dense: np.ndarray, x: np.ndarray, gamma, eps: float, inter: int, a16: bool = False,
                a8: bool = False) -> np.ndarray:
    """RMSNorm -> packed gate|up -> silu(gate) * up, float32 [B, I]."""
    y = _dot(dense, x, gamma, eps, a16, a8)
    g, u = y[:, :inter], y[:, inter:]
    return g / (1 + np.exp(-g)) * u


def rotate(y: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary of [..., D] at per-row cos/sin [..., D/2]."""
    h = y.shape[-1] // 2
    a, b = y[..., :h], y[..., h:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def gemv_qkv(dense: np.ndarray, x: np.ndarray, gamma, eps: float, bias, q_out: np.ndarray, kc: np.ndarray,
             vc: np.ndarray, cos: np.ndarray, sin: np.ndarray, seqlens: np.ndarray, nh: int, kvh: int,
             a16: bool = False, a8: bool = False) -> None:
    """RMSNorm -> packed q|k|v (+ bias) -> rotary on q and k at position seqlens[b]; q to q_out [B, NH*D], k and v
    written into this layer's cache [B, KVH, C, D] at seqlens[b]."""
    y = _dot(dense, x, gamma, eps, a16, a8)
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    b_sz, d = y.shape[0], kc.shape[-1]
    heads = y.reshape(b_sz, nh + 2 * kvh, d)
    pos = np.asarray(seqlens, np.int64)
    c, s = np.asarray(cos, np.float32)[pos][:, None], np.asarray(sin, np.float32)[pos][:, None]
    qk = rotate(heads[:, :nh + kvh], c, s)
    q_out[...] = qk[:, :nh].reshape(b_sz, -1)
    rows = np.arange(b_sz)
    kc[rows, :, pos] = qk[:, nh:].astype(kc.dtype)
    vc[rows, :, pos] = heads[:, nh + kvh:].astype(vc.dtype)


def _split_partials(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, seqlens: np.ndarray, scale: float, chunk: int,
                    nsplit: int, one_split) -> tuple[np.ndarray, np.ndarray]:
    """The flash-decoding partials, split by split: one_split(qh [KVH, G, D], k, v [KVH, T, D] float32) -> (o
    [KVH, G, D] unnormalized, m, l [KVH, G]) for the split's positions. -> part_o [B, NH, S, D], part_ml
    [B, NH, S, 2] (max, sum; unused splits zero)."""
    b_sz, kvh, _, d = kc.shape
    nh = q.shape[1] // d
    part_o = np.zeros((b_sz, nh, nsplit, d), np.float32)
    part_ml = np.zeros((b_sz, nh, nsplit, 2), np.float32)
    qh = np.asarray(q, np.float32).reshape(b_sz, kvh, nh // kvh, d) * np.float32(scale)
    for b in range(b_sz):
        n = int(seqlens[b]) + 1
        for s in range(-(-n // chunk)):
            t0, t1 = s * chunk, min(n, (s + 1) * chunk)
            o, m, l_ = one_split(qh[b], np.asarray(kc[b, :, t0:t1], np.float32), np.asarray(vc[b, :, t0:t1],
                                                                                            np.float32))
            part_o[b, :, s] = o.reshape(nh, d)
            part_ml[b, :, s, 0] = m.reshape(nh)
            part_ml[b, :, s, 1] = l_.reshape(nh)
    return part_o, part_ml


def attn_split(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, seqlens: np.ndarray, scale: float, chunk: int,
               nsplit: int) -> tuple[np.ndarray, np.ndarray]:
    """Flash-decoding partials: per (row, head, split) the unnormalized sum of softmax-numerators times V over the
    split's positions and its (max, sum). -> part_o [B, NH, S, D], part_ml [B, NH, S, 2] (unused splits zero)."""
    def one_split(qh, k, v):
        sc = np.einsum("hgd,htd->hgt", qh, k)
        m = sc.max(-1, keepdims=True)
        p = np.exp(sc - m)
        return np.einsum("hgt,htd->hgd", p, v), m[..., 0], p.sum(-1)
    return _split_partials(q, kc, vc, seqlens, scale, chunk, nsplit, one_split)


def attn_online(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, seqlens: np.ndarray, scale: float, chunk: int,
                nsplit: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """attn_split's partials as decode.cu attn_online computes them: in each split, lane group g of `groups` takes
    positions g, g + groups, ... one at a time with an online softmax (running max m, sum l, output o rescaled by
    e^(m_old - m_new)); the groups then merge with weights e^(m_g - M), M the largest m_g."""
    def one_split(qh, k, v):
        m = np.full((groups,) + qh.shape[:2], -np.inf, np.float32)
        l_ = np.zeros_like(m)
        o = np.zeros((groups,) + qh.shape, np.float32)
        for t in range(k.shape[1]):
            gi = t % groups
            sc = np.einsum("hgd,hd->hg", qh, k[:, t])
            mn = np.maximum(m[gi], sc)
            c, p_ = np.exp(m[gi] - mn), np.exp(sc - mn)
            l_[gi] = l_[gi] * c + p_
            o[gi] = o[gi] * c[..., None] + p_[..., None] * v[:, t][:, None, :]
            m[gi] = mn
        mx = m.max(0)
        f = np.exp(m - mx)                                                     # empty groups: e^-inf = 0
        return (f[..., None] * o).sum(0), mx, (f * l_).sum(0)
    return _split_partials(q, kc, vc, seqlens, scale, chunk, nsplit, one_split)


def attn_combine(part_o: np.ndarray, part_ml: np.ndarray, seqlens: np.ndarray, chunk: int) -> np.ndarray:
    """Merge the splits holding positions -> float32 [B, NH*D]."""
    b_sz, nh, _, d = part_o.shape
    out = np.empty((b_sz, nh, d), np.float32)
    for b in range(b_sz):
        used = (int(seqlens[b]) + chunk) // chunk
        m, l_ = part_ml[b, :, :used, 0], part_ml[b, :, :used, 1]
        f = np.exp(m - m.max(-1, keepdims=True))
        out[b] = (f[..., None] * part_o[b, :, :used]).sum(1) / (f * l_).sum(-1, keepdims=True)
    return out.reshape(b_sz, nh * d)
