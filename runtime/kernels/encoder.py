"""A transformer encoder (BERT / ERNIE / MiniLM layers) on our kernels: cuBLASLt GEMMs with fused epilogues
(cublaslt.py) and encoder.cu's embedding + LayerNorm, LayerNorm and packed-QKV flash attention, the whole forward
replayed as one CUDA graph per (batch, seq) shape. On CPU hosts every kernel is its NumPy twin (`*_reference`), which
the GPU tests hold the kernels to.

A layer: qkv = x Wqkv + b (epilogue) -> attention on the packed rows with key-length masking -> h = LN(x + att Wo +
bo) (the residual rides the GEMM's epilogue) -> h' = LN(h + gelu(h W1 + b1) W2 + b2). float16 buffers, float32
statistics and accumulation. The GELU is cuBLASLt's tanh form (cublaslt.GELU_TANH_VS_ERF_MAX from BERT's erf form).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .cublaslt import matmul_reference

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("encoder.cu")
HEAD_DIMS = (32, 64, 128)          # attention_qkv_f16's HD: multiples of 16 whose fragments fit the registers
MAX_HIDDEN = 1024                  # layer_norm: 4 x 8 float16 a lane
ROWS_PER_BLOCK = 8                 # layer_norm / embed: a warp a row
ATTENTION_WARPS = (4, 8)           # attention_qkv_f16's AW: 16 queries a warp, a block's warps share its K/V loads
ATTENTION_KEYS = (32, 64, 128)     # its KB: keys a step (128: one step for sequences <= 128; head size <= 64)
ATTENTION_STAGES = (1, 2)          # its KV_STAGES: 2 overlaps the next step's K/V loads (cp.async; head <= 64, KB <= 64)
ATTENTION_MIN_BLOCKS = (1, 4, 5, 6, 8)   # its MINB: __launch_bounds__' blocks an SM (caps the registers a thread)


@dataclass(frozen=True)
class AttentionConfig:
    """attention_qkv_f16's compile-time shape: warps a block, keys a step, K/V stages, and the blocks an SM asked of
    the register allocator (1: no cap; 5 / 6 at 4 warps cap a thread at 96 / 80 registers, which puts BERT-base's
    768 blocks of 32 x 128 in about one wave of an H200's 132 SMs instead of 1.45)."""
    warps: int = 4
    keys: int = 64
    stages: int = 1
    min_blocks: int = 1

    def check(self, head_dim: int) -> None:
        for name, value, allowed in (("warps", self.warps, ATTENTION_WARPS), ("keys", self.keys, ATTENTION_KEYS),
                                     ("stages", self.stages, ATTENTION_STAGES),
                                     ("min_blocks", self.min_blocks, ATTENTION_MIN_BLOCKS)):
            if value not in allowed:
                raise BadInputError(f"attention {name} must be one of {allowed}, got {value}")
        if self.keys > 64 and head_dim > 64:
            raise BadInputError(f"attention keys {self.keys} needs head size <= 64 (shared memory), got {head_dim}")
        if self.stages > 1 and (head_dim > 64 or self.keys > 64):
            raise BadInputError(f"attention stages {self.stages} needs head size <= 64 and <= 64 keys a step, got "
                                f"head size {head_dim}, {self.keys} keys")

    def options(self, head_dim: int) -> tuple[str, ...]:
        return ("-std=c++17", f"-DHD={head_dim}", f"-DAW={self.warps}", f"-DKB={self.keys}",
                f"-DKV_STAGES={self.stages}", f"-DMINB={self.min_blocks}")


@dataclass
class Layer:
    wqkv: np.ndarray        # [H, 3H]: Q | K | V columns, heads contiguous in each
    bqkv: np.ndarray        # [3H]
    wo: np.ndarray          # [H, H]
    bo: np.ndarray
    ln1: tuple[np.ndarray, np.ndarray]
    w1: np.ndarray          # [H, I]
    b1: np.ndarray
    w2: np.ndarray          # [I, H]
    b2: np.ndarray
    ln2: tuple[np.ndarray, np.ndarray]


@dataclass
class EncoderWeights:
    """word / pos / types / emb_ln None: the caller computes the embeddings (forward's `hidden0`), e.g. onnxruntime
    running a graph's own embedding ops."""
    word: np.ndarray | None         # [V, H]
    pos: np.ndarray | None          # [P, H]
    types: np.ndarray | None        # [TV, H]
    emb_ln: tuple[np.ndarray, np.ndarray] | None
    layers: list[Layer]
    num_heads: int
    eps: float = 1e-12

    @property
    def hidden(self) -> int:
        return self.layers[0].wqkv.shape[0]

    @property
    def embeds(self) -> bool:
        return self.word is not None

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    def check(self, gpu: bool = True) -> None:
        """Shapes that disagree, and (gpu) geometries the kernels do not take (the twins take any): BadInputError."""
        h, nh = self.hidden, self.num_heads
        if h % nh:
            raise BadInputError(f"hidden {h} is not a multiple of its {nh} heads")
        if gpu and self.head_dim not in HEAD_DIMS:
            raise BadInputError(f"hidden {h} / {nh} heads = head size {h / nh:g}: the attention kernel takes "
                                f"{', '.join(map(str, HEAD_DIMS))}")
        if gpu and (h % 8 or h > MAX_HIDDEN):
            raise BadInputError(f"hidden size {h}: the LayerNorm kernel takes multiples of 8 up to {MAX_HIDDEN}")
        for i, l in enumerate(self.layers):
            shapes = {"wqkv": (l.wqkv.shape, (h, 3 * h)), "wo": (l.wo.shape, (h, h)),
                      "w1": (l.w1.shape, (h, l.w1.shape[1])), "w2": (l.w2.shape, (l.w1.shape[1], h))}
            bad = [f"{k} {got} (want {want})" for k, (got, want) in shapes.items() if tuple(got) != want]
            if bad:
                raise BadInputError(f"layer {i}: {', '.join(bad)}")

    def astype(self, dtype) -> "EncoderWeights":
        c = lambda a: None if a is None else np.ascontiguousarray(a, dtype)   # noqa: E731
        return EncoderWeights(c(self.word), c(self.pos), c(self.types),
                              tuple(map(c, self.emb_ln)) if self.emb_ln else None,
                              [Layer(c(l.wqkv), c(l.bqkv), c(l.wo), c(l.bo), tuple(map(c, l.ln1)), c(l.w1), c(l.b1),
                                     c(l.w2), c(l.b2), tuple(map(c, l.ln2))) for l in self.layers],
                              self.num_heads, self.eps)


def random_weights(layers: int, hidden: int, heads: int, inter: int, vocab: int, positions: int = 512,
                   seed: int = 0, std: float = 0.02) -> EncoderWeights:
    rng = np.random.default_rng(seed)
    n = lambda *s: (rng.standard_normal(s) * std).astype(np.float16)   # noqa: E731
    ln = lambda: (np.ones(hidden, np.float16), np.zeros(hidden, np.float16))   # noqa: E731
    return EncoderWeights(n(vocab, hidden), n(positions, hidden), n(2, hidden), ln(),
                          [Layer(n(hidden, 3 * hidden), n(3 * hidden), n(hidden, hidden), n(hidden), ln(),
                                 n(hidden, inter), n(inter), n(inter, hidden), n(hidden), ln())
                           for _ in range(layers)], heads)


# ------------------------------------------------------------------ twins
def f16(a: np.ndarray) -> np.ndarray:
    """A float16 buffer's value, as float32."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def layer_norm_reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float32)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma.astype(np.float32) + beta.astype(np.float32)


def embed_reference(ids: np.ndarray, types: np.ndarray | None, w: EncoderWeights) -> np.ndarray:
    """embed_layer_norm_f16: [B, S] ids -> [B*S, H] (the float16-rounded sum, normalized)."""
    b, s = ids.shape
    t = np.zeros_like(ids) if types is None else types
    e = (w.word[ids].astype(np.float32) + w.pos[np.arange(s)][None].astype(np.float32)
         + w.types[t].astype(np.float32))
    return layer_norm_reference(f16(e), *w.emb_ln, w.eps).reshape(b * s, -1)


def attention_reference(qkv: np.ndarray, lens: np.ndarray, num_heads: int, scale: float) -> np.ndarray:
    """attention_qkv_f16: qkv [B*S, 3H] -> [B*S, H]; keys >= lens[b] masked (every query row computed)."""
    b = len(lens)
    t, h3 = qkv.shape
    s, h = t // b, h3 // 3
    d = h // num_heads
    x = np.asarray(qkv, np.float32).reshape(b, s, 3, num_heads, d)
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))          # [B, NH, S, D]
    sc = q @ k.transpose(0, 1, 3, 2) * scale
    masked = np.arange(s)[None, :] >= np.clip(lens, 0, s)[:, None]            # [B, S keys]
    sc = np.where(masked[:, None, None, :], -np.inf, sc)
    m = sc.max(-1, keepdims=True)
    p = np.exp(sc - np.where(np.isfinite(m), m, 0))
    den = p.sum(-1, keepdims=True)
    o = np.where(den > 0, (p @ v) / np.where(den > 0, den, 1), 0)
    return o.transpose(0, 2, 1, 3).reshape(t, h)


def forward_reference(w: EncoderWeights, ids: np.ndarray, lens: np.ndarray, types: np.ndarray | None = None,
                      hidden0: np.ndarray | None = None) -> np.ndarray:
    """The whole stack as the device computes it (float16 rounding where a float16 buffer is written) ->
    [B*S, H] float32. hidden0 [B, S, H]: the embeddings, where the weights have none."""
    scale = 1.0 / np.sqrt(w.head_dim)
    x = f16(embed_reference(ids, types, w) if w.embeds else np.asarray(hidden0).reshape(-1, w.hidden))
    for l in w.layers:
        qkv = f16(matmul_reference(x, l.wqkv, l.bqkv, None, "bias"))
        att = f16(attention_reference(qkv, lens, w.num_heads, scale))
        x = f16(layer_norm_reference(f16(matmul_reference(att, l.wo, l.bo, x, "bias")), *l.ln1, w.eps))
        ff = f16(matmul_reference(x, l.w1, l.b1, None, "gelu_bias"))
        x = f16(layer_norm_reference(f16(matmul_reference(ff, l.w2, l.b2, x, "bias")), *l.ln2, w.eps))
    return x


# ------------------------------------------------------------------ the device
@functools.lru_cache(maxsize=None)
def compiled(head_dim: int, attention: AttentionConfig = AttentionConfig()):
    from .cuda import cupy
    cp = cupy()
    log.info("compiling encoder.cu for head size %d, attention %s", head_dim, attention)
    mod = cp.RawModule(code=SOURCE.read_text(encoding="utf-8"), options=attention.options(head_dim))
    mod.get_function("attention_qkv_f16")               # compiles now, so errors surface here
    return mod


def launch_layer_norm(x, gamma, beta, out, eps: float) -> None:
    t, h = x.shape
    compiled(64).get_function("layer_norm_f16")(((t + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,), (32 * ROWS_PER_BLOCK,),
                                                (x, gamma, beta, out, np.int32(t), np.int32(h), np.float32(eps)))


def launch_embed(ids, types, w, scratch, out, seq: int) -> None:
    t, h = out.shape
    null = np.uint64(0)
    compiled(64).get_function("embed_layer_norm_f16")(
        ((t + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,), (32 * ROWS_PER_BLOCK,),
        (ids, types if types is not None else null, w.word, w.pos, w.types, w.emb_ln[0], w.emb_ln[1], scratch, out,
         np.int32(t), np.int32(seq), np.int32(h), np.float32(w.eps)))


def launch_attention(qkv, lens, out, num_heads: int, seq: int, scale: float,
                     attention: AttentionConfig = AttentionConfig()) -> None:
    t, h = out.shape
    batch, per_block = t // seq, 16 * attention.warps
    compiled(h // num_heads, attention).get_function("attention_qkv_f16")(
        (batch * num_heads, (seq + per_block - 1) // per_block), (32 * attention.warps,),
        (qkv, lens, out, np.int32(seq), np.int32(num_heads), np.float32(scale)))


@dataclass
class Buffers:
    ids: object
    types: object
    lens: object
    x: object
    tmp: object
    qkv: object
    att: object
    ff: object
    x0: object = None       # the embedded input, where the weights have no embeddings (copied into x each run)
    graph: object = None
    stream: object = None


class KernelEncoder:
    """forward(ids, lens[, types]) -> last hidden states [B, S, H] (float16 on the GPU; float32 twins on CPU).

    gemm_tune: time the cuBLASLt heuristic's first algorithms on each GEMM alone and keep the fastest. Off by
    default: in the whole forward the heuristic's first algorithm was as fast or faster in 5 of 6 geometry x card
    runs (BERT-base b32 1.572 vs 1.595 ms on an H200, 1.578 vs 1.669 on an H100: benchmarks/results/encoder/
    kernel-encoder-run41, -run42-h100), a GEMM timed alone on buffers that stay in L2 not being the GEMM in the
    forward, whose weights arrive from HBM."""

    def __init__(self, weights: EncoderWeights, device: str = "gpu", cuda_graph: bool = True,
                 attention: AttentionConfig = AttentionConfig(), gemm_tune: bool = False):
        weights.check(gpu=device == "gpu")
        attention.check(weights.head_dim)
        self.attention, self.host = attention, weights
        self.num_heads, self.eps = weights.num_heads, weights.eps
        self.scale = float(1.0 / np.sqrt(weights.head_dim))
        if device == "gpu":
            from .cublaslt import LtMatmul
            from .cuda import cupy
            self.xp = cp = cupy()
            self.w = self._to_device(weights.astype(np.float16))
            self.lt = LtMatmul(tune=gemm_tune)
            compiled(weights.head_dim, attention)
            compiled(64)
        else:
            self.xp, self.w, self.lt = np, weights, None
        self.cuda_graph = cuda_graph and self.xp is not np
        self.shapes: dict[tuple[int, int], Buffers] = {}

    def _to_device(self, w: EncoderWeights) -> EncoderWeights:
        d = lambda a: None if a is None else self.xp.asarray(a)   # noqa: E731
        return EncoderWeights(d(w.word), d(w.pos), d(w.types), tuple(map(d, w.emb_ln)) if w.emb_ln else None,
                              [Layer(d(l.wqkv), d(l.bqkv), d(l.wo), d(l.bo), tuple(map(d, l.ln1)), d(l.w1), d(l.b1),
                                     d(l.w2), d(l.b2), tuple(map(d, l.ln2))) for l in w.layers], w.num_heads, w.eps)

    def buffers(self, batch: int, seq: int) -> Buffers:
        if (batch, seq) in self.shapes:
            return self.shapes[(batch, seq)]
        if self.w.embeds and seq > self.w.pos.shape[0]:
            raise BadInputError(f"sequence length {seq} exceeds the model's {self.w.pos.shape[0]} positions")
        cp, t, h = self.xp, batch * seq, self.w.hidden
        inter = self.w.layers[0].w1.shape[1]
        z = lambda *s: cp.zeros(s, np.float16)   # noqa: E731
        buf = Buffers(ids=cp.zeros((batch, seq), np.int64), types=cp.zeros((batch, seq), np.int64),
                      lens=cp.zeros(batch, np.int32), x=z(t, h), tmp=z(t, h), qkv=z(t, 3 * h), att=z(t, h),
                      ff=z(t, inter), x0=None if self.w.embeds else z(t, h))
        self.shapes[(batch, seq)] = buf
        return buf

    def _launch(self, buf: Buffers, seq: int) -> None:
        w, lt = self.w, self.lt
        if w.embeds:
            launch_embed(buf.ids, buf.types, w, buf.tmp, buf.x, seq)
        else:                                   # every pass starts from the loaded input (the layers overwrite x)
            self.xp.copyto(buf.x, buf.x0)
        for l in w.layers:
            lt(buf.x, l.wqkv, buf.qkv, bias=l.bqkv, epilogue="bias")
            launch_attention(buf.qkv, buf.lens, buf.att, self.num_heads, seq, self.scale, self.attention)
            lt(buf.att, l.wo, buf.tmp, bias=l.bo, residual=buf.x, epilogue="bias")
            launch_layer_norm(buf.tmp, *l.ln1, buf.x, self.eps)
            lt(buf.x, l.w1, buf.ff, bias=l.b1, epilogue="gelu_bias")
            lt(buf.ff, l.w2, buf.tmp, bias=l.b2, residual=buf.x, epilogue="bias")
            launch_layer_norm(buf.tmp, *l.ln2, buf.x, self.eps)

    def _need_hidden0(self, hidden0) -> None:
        if not self.w.embeds and hidden0 is None:
            raise BadInputError("these weights have no embeddings: pass hidden0, the embedded input [B, S, H]")

    def load(self, ids: np.ndarray, lens: np.ndarray, types: np.ndarray | None = None,
             hidden0: np.ndarray | None = None) -> Buffers:
        """Copy a batch into its shape's bound buffers, on the shape's stream (outside the timed replay); hidden0:
        the embeddings, where the weights have none."""
        self._need_hidden0(hidden0)
        batch, seq = ids.shape
        buf = self.buffers(batch, seq)
        if buf.stream is None:
            buf.stream = self.xp.cuda.Stream(non_blocking=True)
        with buf.stream:
            buf.ids.set(np.ascontiguousarray(ids, np.int64), stream=buf.stream)
            buf.types.set(np.ascontiguousarray(np.zeros_like(ids) if types is None else types, np.int64),
                          stream=buf.stream)
            buf.lens.set(np.ascontiguousarray(lens, np.int32), stream=buf.stream)
            if not self.w.embeds:
                buf.x0.set(np.ascontiguousarray(np.asarray(hidden0).reshape(buf.x0.shape), np.float16),
                           stream=buf.stream)
        return buf

    def run(self, batch: int, seq: int) -> None:
        """The forward on the bound buffers (after load): the shape's CUDA graph, captured at its first run after
        one launched pass (which makes the GEMM plans and compiles the kernels outside the capture), or launched."""
        buf = self.buffers(batch, seq)
        if buf.stream is None:
            buf.stream = self.xp.cuda.Stream(non_blocking=True)
        with buf.stream:
            if not self.cuda_graph:
                self._launch(buf, seq)
                return
            if buf.graph is None:
                self._launch(buf, seq)
                buf.stream.begin_capture()
                try:
                    self._launch(buf, seq)
                finally:
                    buf.graph = buf.stream.end_capture()
            buf.graph.launch(buf.stream)

    def forward(self, ids: np.ndarray, lens: np.ndarray, types: np.ndarray | None = None,
                hidden0: np.ndarray | None = None):
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise BadInputError(f"ids must be [batch, seq], got shape {ids.shape}")
        batch, seq = ids.shape
        if self.xp is np:
            self._need_hidden0(hidden0)
            return forward_reference(self.w, ids, np.asarray(lens), types, hidden0).reshape(batch, seq, -1)
        buf = self.load(ids, lens, types, hidden0)
        self.run(batch, seq)
        buf.stream.synchronize()
        return buf.x.reshape(batch, seq, -1)
