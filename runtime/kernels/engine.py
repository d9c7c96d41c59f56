"""The kernel engine: a bundle's fused-decoder weights run by our own CUDA kernels (decode.cu) behind the one
step API (`generation.Decoder`), so the one Generator drives it like the onnxruntime fused graph
(runtime.fused.FusedDecoder), which stays the fallback and the parity oracle.

A decode step is 5 kernels a layer (LLaMA / Qwen2 family: RMSNorm + packed QKV GEMV + bias + rotary + KV append;
split-K flash-decoding attention, its last block a head merging the splits; o-proj + residual; RMSNorm + gate|up
GEMV + SwiGLU; down-proj + residual) plus the embedding gather and the final norm + LM head, captured in one CUDA
graph per batch size and replayed; the sampler kernel then writes the next ids and advances the positions in place,
as with the fused graph. `step="persistent"` (or "auto": where it times faster at a batch size's first use) runs all
layers in one persistent kernel instead, the phases separated by grid barriers (persistent.py: on an H200 it is
1.9x slower, so it is not the default; llm-gpu/run22-h200). On sm_90+ every step
kernel is launched with programmatic dependent launch (kernels/pdl.py: it may start while the previous one ends and
waits in the kernel before its first dependent read); `pipeline=True` launches it one whole kernel ahead, so a
layer GEMV's weights stream into L2 while the kernel before it computes (decode.cu PIPE; same arithmetic).
Weights are read as the bundle stores them: float16/float32, or MatMulNBits int8/int4 blocks (scale and integer or
float zero point per block), never dequantized in memory for the step. Three GEMV generations (`gemv=`): "v3"
(tensor cores, sm_80+: mma.sync on 16 weight rows x 8 batch rows, activations rounded to float16 (W16A16 / W8A16 /
W4A16), v2 where a product does not fit it), "v2" (float32 activations, K split over a block's warps for
small-N products, the norm's statistics from the main loop, int8/int4 scale and zero point factored out of each
chunk, one batch row a block at batch 1) and "v1" (the first kernels, kept as the fallback); gemv_plan picks the
entry a product launches. The default "auto" times v3 and v2 per product at a batch size's first use and keeps the
faster (KernelEngine._tune). Two attention kernels (`attention=`): "v2"
(attn_online: one pass, an online softmax per lane group; the default where the head size fits it) and "v1"
(attn_split: scores, softmax and P @ V in three phases). decode.cu is compiled one module a weight format (they
depend on the head size only) plus one for attention (head size, GQA group, chunk). The prompt pass (prefill) is the
fused graph's prompt call cut before its LM head where onnxruntime's CUDA provider loads (our head kernel then
computes the last rows' logits; padded to a length bucket and replayed as a CUDA graph unless `prompt_graphs=False`:
run32 measured TTFT 6.0 -> 2.9 ms at prompt 128), else the
same math as dense matrix products (cuBLAS through CuPy; NumPy on CPU).
On the CPU (NumPy arrays) the step is the compiled CPU step (cpu_step.c through kernels/cpu.py: the whole step in
one OpenMP parallel region, float32 and int8 weights as stored, int8 products on int8-quantized inputs; built once
per host where a C compiler with OpenMP is there, `native=`), its prompt pass the fused graph's; else, and in the
tests that check them, every step kernel is replaced by its NumPy twin (engine_reference.py).

Shapes: B batch rows, C cache capacity, H hidden, NH / KVH query / key-value heads, D head size, I FFN size.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError, DeviceError
from ..fused import DeviceStateMemory, append_by_steps, check_cache_room
from . import engine_reference as R
from . import persistent as S

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "decode.cu"
EPL = {"f16": 8, "f32": 4, "q8": 16, "q4": 32}        # elements a lane loads at once (16 bytes), decode.cu Fmt
BT, GW, ATT_THREADS = 8, 4, 128                     # decode.cu: batch rows per GEMV block, warps per block
ATT2_THREADS = 256                                  # decode.cu attn_online's block
SHARED_LIMIT = 48 * 1024


@dataclass
class Packed:
    """One linear layer as the kernels read it: y = x @ W^T with W [N, K]."""
    fmt: str                       # f16 | f32 | q8 | q4
    w: Any                         # f16/f32 [N, K]; q8/q4 uint8 [N, K/block * block*bits/8]
    sz: Any                        # q8/q4: uint32 [N, K/block] = float16 scale | float16 zero point << 16
    n: int
    k: int
    block: int = 0

    @property
    def kb(self) -> int:
        return -(-self.k // self.block) if self.block else 0

    @property
    def row_bytes(self) -> int:
        return int(self.w.shape[1] * self.w.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        return int(self.w.nbytes + (self.sz.nbytes if self.sz is not None else 0))

    def dense(self, xp=np, dtype=np.float32):
        return R.dequantize(self.fmt, self.w, self.sz, self.k, self.block, xp, dtype)

    def to(self, xp) -> "Packed":
        return Packed(self.fmt, xp.asarray(self.w), None if self.sz is None else xp.asarray(self.sz), self.n,
                      self.k, self.block)


@dataclass
class Layer:
    ln1: Any
    ln2: Any
    qkv: Packed
    bias: Any                      # packed q|k|v bias or None
    o: Packed
    gate_up: Packed                # rows 0..I-1 gate, I..2I-1 up
    down: Packed


@dataclass
class Weights:
    embed: Any                     # [V, H]
    cos: Any                       # float32 [max_positions, D/2]
    sin: Any
    layers: list[Layer]
    norm: Any
    head: Packed                   # [V, H]

    def step_bytes(self) -> int:
        """Bytes of weights one decode step reads (the embedding is gathered row by row)."""
        per = sum(l.qkv.nbytes + l.o.nbytes + l.gate_up.nbytes + l.down.nbytes + l.ln1.nbytes + l.ln2.nbytes
                  + (l.bias.nbytes if l.bias is not None else 0) for l in self.layers)
        return int(per + self.head.nbytes + self.norm.nbytes)


def _pair(scales: np.ndarray, zp: np.ndarray | None, n: int, kb: int, bits: int) -> np.ndarray:
    """{scale, zero point} per block as uint32 (float16 bits each); integer zero points (uint8, 4-bit ones packed
    two a byte) and float ones alike; no zero points means the MatMulNBits default 2^(bits-1)."""
    s = np.asarray(scales).astype(np.float16).reshape(n, kb)
    if zp is None:
        z = np.full((n, kb), 1 << (bits - 1), np.float16)
    elif zp.dtype == np.uint8:
        z8 = zp.reshape(n, -1)
        if bits == 4:
            z8 = np.stack([z8 & 0xF, z8 >> 4], -1).reshape(n, -1)
        z = z8[:, :kb].astype(np.float16)
    else:
        z = zp.astype(np.float16).reshape(n, kb)
    return s.view(np.uint16).astype(np.uint32) | (z.view(np.uint16).astype(np.uint32) << 16)


def load_weights(model_path: str | Path, spec: dict) -> Weights:
    """The fused decoder file's weights (convert.llm.fused names), on the host, in the kernels' layout."""
    if spec.get("family", "llama") != "llama":
        raise BadInputError(f"the kernel engine runs the LLaMA/Qwen2 fused decoder; this one is {spec['family']!r}: "
                            "use the onnxruntime fused decoder (engine='onnxruntime')")
    try:                                   # the onnx package reads the initializers (onnxruntime cannot)
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise DeviceError("the kernel engine reads the bundle's weights with the onnx package: pip install "
                          "onnx==1.17.0 (or use the onnxruntime fused decoder, engine='onnxruntime')") from e
    m = onnx.load(str(model_path), load_external_data=True)
    init = {t.name: t for t in m.graph.initializer}
    uses = collections.Counter(i for n in m.graph.node for i in n.input if i in init)
    got: dict[str, np.ndarray] = {}

    def arr(name: str) -> np.ndarray:
        """An initializer as an array; its bytes leave the proto as they are read, so the load holds about one
        copy of the weights at a time, not the proto's, the arrays' and the transposes' at once."""
        if name not in got:
            got[name] = numpy_helper.to_array(init[name])
            init[name].ClearField("raw_data")
        return got[name]

    lin: dict[str, Packed] = {}
    for node in m.graph.node:
        name = re.sub(r"_Q\d+$", "", node.name)
        if node.op_type == "MatMul" and node.input[1] in init:
            w = arr(node.input[1])
            fmt = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32"}[w.dtype]
            lin[name] = Packed(fmt, np.ascontiguousarray(w.T), None, w.shape[1], w.shape[0])
            uses[node.input[1]] -= 1
            if not uses[node.input[1]]:
                del got[node.input[1]]                    # only its transpose is kept
        elif node.op_type == "MatMulNBits":
            a = {x.name: x.i for x in node.attribute}
            k, n, bits, block = a["K"], a["N"], a["bits"], a["block_size"]
            if block % EPL[f"q{bits}"]:
                raise BadInputError(f"{node.name}: block size {block} is below the kernel's {EPL[f'q{bits}']} "
                                    f"{bits}-bit elements a lane; use the onnxruntime fused decoder")
            kb = -(-k // block)
            zp = arr(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            lin[name] = Packed(f"q{bits}", arr(node.input[1]).reshape(n, -1), _pair(arr(node.input[2]), zp, n, kb,
                                                                                    bits), n, k, block)
    need = ["lm_head"] + [f"layers.{i}.{p}" for i in range(spec["num_layers"])
                          for p in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")]
    missing = [n for n in need if n not in lin]
    if missing:
        raise BadInputError(f"{model_path} is not a LLaMA-family fused decoder the engine can read (no "
                            f"{', '.join(missing[:4])}); use the onnxruntime fused decoder")
    layers = []
    for i in range(spec["num_layers"]):
        q = f"layers.{i}."
        layers.append(Layer(ln1=arr(q + "input_layernorm"), ln2=arr(q + "post_attention_layernorm"),
                            qkv=lin[q + "qkv_proj"], bias=arr(q + "qkv_bias") if q + "qkv_bias" in init else None,
                            o=lin[q + "o_proj"], gate_up=lin[q + "gate_up_proj"], down=lin[q + "down_proj"]))
    return Weights(embed=arr("embed_tokens"), cos=arr("cos_cache").astype(np.float32),
                   sin=arr("sin_cache").astype(np.float32), layers=layers, norm=arr("norm"), head=lin["lm_head"])


def check_geometry(spec: dict, weights: Weights) -> None:
    """What decode.cu assumes, checked once: one clear error naming the fallback."""
    d, nh, kvh = spec["head_dim"], spec["num_heads"], spec["kv_heads"]
    bad = []
    if d % 32 or d > 256 or d & (d - 1):
        bad.append(f"head size {d} (the attention kernel needs 32, 64, 128 or 256)")
    if nh % kvh:
        bad.append(f"{nh} query heads over {kvh} key/value heads")
    for name, p in [("lm_head", weights.head)] + [(f"layers.{i}.{n}", getattr(l, n)) for i, l in
                                                   enumerate(weights.layers) for n in ("qkv", "o", "gate_up", "down")]:
        if p.k % EPL[p.fmt] or (p.n % 2 and name.endswith(("head", "o", "down"))):
            bad.append(f"{name} [{p.n}, {p.k}] (inputs a multiple of {EPL[p.fmt]}, an even number of outputs)")
            break
    if bad:
        raise BadInputError("the kernel engine cannot run this decoder: " + "; ".join(bad)
                            + "; use the onnxruntime fused decoder (engine='onnxruntime')")


def cache_zeros(shape: tuple, dtype) -> np.ndarray:
    """A zeroed host KV cache whose pages are mapped as they are first written, in 4 KiB pages: numpy asks for
    transparent huge pages on large arrays, and with the [.., C, D] layout every (layer, K/V, row, head) slice then
    shares a 2 MiB page with its neighbours, so the first positions of each slice commit the whole cache (measured:
    a 7-token prompt at batch 8 committed all 1.44 GB of a 4,096-position cache; in 4 KiB pages, what is written).
    Where mmap cannot say that (not Linux), numpy's zeros."""
    import mmap
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not hasattr(mmap, "MADV_NOHUGEPAGE") or nbytes == 0:
        return np.zeros(shape, dtype)
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)     # zero pages until written
    mm.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mm, dtype).reshape(shape)          # the array holds the mapping


CPU_STEPS = ("auto", "native", "onnxruntime")    # KernelEngine(cpu_step=): what runs a CPU batch size's step
NATIVE_ROWS = 2                                  # cpu_step="auto": the compiled step up to this many rows
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512)   # prompt_graphs: padded lengths whose prompt pass is a CUDA graph


def prompt_bucket(n: int, capacity: int) -> int | None:
    """The padded length a prompt of n tokens runs at with prompt_graphs (None: longer than the largest bucket or
    the cache, so it runs as it is: such a pass is GPU-bound, not launch-bound)."""
    b = next((b for b in PROMPT_BUCKETS if b >= n), None)
    return b if b is not None and b <= capacity else None


ATTENTION_VERSIONS = ("v2", "v1")
ATTENTION_KERNEL = {"v2": "attn_online", "v1": "attn_split"}     # decode.cu entries


def attention_fits(group: int, head_dim: int, chunk: int) -> bool:
    """attn_split's float32 shared arrays (q [G][HD], scores [G][CHUNK], per-warp sums [W][G][HD]) fit a block."""
    return 4 * (group * head_dim + group * chunk + (ATT_THREADS // 32) * group * head_dim) <= SHARED_LIMIT


def online_attention_fits(group: int, head_dim: int) -> bool:
    """decode.cu ATTN_V2_FITS: attn_online's lane groups (head_dim / 8 lanes) tile a warp (any GQA group: a block
    takes a slice of at most 4 of its heads)."""
    return head_dim % 8 == 0 and 32 % (head_dim // 8) == 0


def head_slices(group: int) -> int:
    """decode.cu ATT_HS: attn_online blocks a K/V head (slices of at most 4 of its GQA group's query heads)."""
    return -(-group // 4)


def attention_versions(group: int, head_dim: int, chunk: int = 128) -> list[str]:
    """The attention kernels a geometry can run at this split size, the default first."""
    return ((["v2"] if online_attention_fits(group, head_dim) else [])
            + (["v1"] if attention_fits(group, head_dim, chunk) else []))


def attention_version(group: int, head_dim: int, version: str | None = None) -> str:
    """The attention kernel a geometry runs: v2 (attn_online, one pass) where it fits, else v1 (attn_split);
    an explicit version is checked."""
    if version is None:
        return "v2" if online_attention_fits(group, head_dim) else "v1"
    if version not in ATTENTION_VERSIONS:
        raise BadInputError(f"attention must be one of {', '.join(ATTENTION_VERSIONS)}, got {version!r}")
    if version == "v2" and not online_attention_fits(group, head_dim):
        raise BadInputError(f"attention v2 needs a head size of 8 x a power of two up to 256, got {head_dim}; use "
                            "attention='v1' or leave it unset")
    return version


def attention_chunk(spec: dict, version: str | None = None) -> int:
    """Positions per flash-decoding split: 128 (for v1, 64 where the shared memory of a large group needs it; v2's
    does not depend on it): short contexts still spread over a few blocks a K/V head, long ones over many
    (benchmarks/results/llm-gpu/attn-chunk-h200: smaller splits do not make short contexts faster)."""
    g, d = spec["num_heads"] // spec["kv_heads"], spec["head_dim"]
    if attention_version(g, d, version) == "v2":
        return 128
    for chunk in (128, 64):
        if attention_fits(g, d, chunk):
            return chunk
    raise BadInputError(f"GQA group of {g} heads of size {d} does not fit the attention kernel's shared memory; "
                        "use the onnxruntime fused decoder")


FORMAT_BIT = {"f16": 0, "f32": 1, "q8": 2, "q4": 3}     # decode.cu F16 .. Q4 (the FMTS bit of a format)
GEMV_VERSIONS = ("v3", "v2", "v1")
GEMV_CHOICES = ("auto",) + GEMV_VERSIONS              # auto: per product and batch size, the faster of v3 and v2
V3_FORMATS = ("f16", "q8", "q4")                      # decode.cu gemv3: float16 activations into mma.sync
V3_SPLITS = (1, 2, 4, 8, 16)                          # decode.cu GEMV3_MODE: K-split warps a task
V3S_SPLITS = (4, 8, 16)                               # decode.cu GEMV3S_MODE: the same, K also split across blocks
V3S_MODES = ("resid", "swiglu", "qkv")                # (gemv3s_*: not the LM head, whose rows fill the GPU anyway)
V3S_SLICES = (2, 4)                                   # blocks a task's K is split over, tried by gemv="auto"
MODES = ("resid", "logits", "swiglu", "qkv")
V2_SHAPES = ((2, 1, 1), (2, 4, 1), (4, 1, 1), (4, 4, 1), (4, 1, 8), (4, 4, 8))  # decode.cu GEMV2_MODE (R, KS, NB)


@functools.lru_cache(maxsize=None)
def compiled(options: tuple[str, ...]):
    """decode.cu with these -D options (NVRTC; CuPy caches the binary on disk), compiled now."""
    from .cuda import cupy
    cp = cupy()
    log.info("compiling decode.cu %s", " ".join(options))
    mod = cp.RawModule(code=SOURCE.read_text(encoding="utf-8"), options=("-std=c++17",) + options)
    mod.get_function(module_names(options)[0])            # RawModule compiles lazily: now, so errors surface here
    return mod


def module_options(head_dim: int, group: int, chunk: int, fmts: Sequence[str] = tuple(EPL),
                   pipeline: bool = False) -> list[tuple]:
    """The modules of one geometry: the attention one (depends on D, the GQA group, the chunk) and one a weight
    format (depends on D only: shared between models of one head size, compiled in parallel by bench_engine).
    pipeline: compiled with decode.cu's PIPE (each kernel lets the next launch once its own wait is over, and a
    layer GEMV prefetches all its weights while it waits): the same arithmetic, launched one kernel ahead."""
    pipe = ("-DPIPE=1",) if pipeline else ()
    mods = [(f"-DHD={head_dim}", f"-DGQA={group}", f"-DCHUNK={chunk}", "-DFMTS=0", "-DWITH_ATTN=1") + pipe]
    return mods + [(f"-DHD={head_dim}", f"-DFMTS={1 << FORMAT_BIT[f]}", "-DWITH_ATTN=0") + pipe for f in fmts]


def gemv_names(fmt: str) -> list[str]:
    """Every GEMV entry of one format (v1: gemv_*, v2: gemv2_*_r{R}_k{KS}_b{NB}, v3: gemv3_*_k{KS})."""
    return ([f"gemv_{m}_{fmt}{r}" for m in MODES for r in ("", "_r4")]
            + [f"gemv2_{m}_{fmt}_r{r}_k{k}_b{b}" for m in MODES for r, k, b in V2_SHAPES]
            + ([f"gemv3_{m}_{fmt}_k{k}" for m in MODES for k in V3_SPLITS]
               + [f"gemv3s_{m}_{fmt}_k{k}" for m in V3S_MODES for k in V3S_SPLITS] if fmt in V3_FORMATS else []))


def module_names(options: tuple[str, ...]) -> list[str]:
    if "-DWITH_ATTN=1" in options:
        d = {o[2:].split("=")[0]: int(o.split("=")[1]) for o in options if o.startswith("-D") and "=" in o}
        return (["embed_rows"] + (["attn_split"] if attention_fits(d["GQA"], d["HD"], d["CHUNK"]) else [])
                + (["attn_online"] if online_attention_fits(d["GQA"], d["HD"]) else []))
    bits = int(next(o for o in options if o.startswith("-DFMTS="))[7:])
    return [n for f, bit in FORMAT_BIT.items() if bits >> bit & 1 for n in gemv_names(f)]


@dataclass(frozen=True)
class Plan:
    """How one GEMV launches: the kernel, weight rows a warp (R), warps splitting K (KS), batch rows a block (NB),
    blocks splitting K (KSL: gemv3s_* entries, grid.z; their partial sums go through split_scratch's buffers)."""
    name: str
    r: int
    ks: int = 1
    nb: int = BT
    ksl: int = 1

    @property
    def warps(self) -> int:
        """Warps a block: GW, or KS where more warps split K (v3)."""
        return max(GW, self.ks)

    @property
    def version(self) -> str:
        return "v1" if self.name.startswith("gemv_") else "v" + self.name[4]


def v3_fits(p: Packed, mode: str, head_dim: int) -> bool:
    """gemv3's shapes: a float16/int8/int4 weight, 16 rows a warp task (8 gate|up or rotary pairs), K in 16-byte
    chunks."""
    return (p.fmt in V3_FORMATS and p.n % 16 == 0 and p.k % EPL[p.fmt] == 0
            and (mode != "qkv" or (head_dim // 2) % 8 == 0))


def v3_plans(p: Packed, mode: str, batch: int, head_dim: int) -> list[Plan]:
    """Every v3 launch of one product that does real work: each K split over warps (V3_SPLITS), and for the
    split-K modes each split over warps x blocks (V3S_SPLITS x V3S_SLICES) that leaves every warp a step of K
    (gemv="auto" times them; empty where the product does not fit v3)."""
    if not v3_fits(p, mode, head_dim):
        return []
    steps = -(-p.k // (4 * EPL[p.fmt]))
    plans = [Plan(f"gemv3_{mode}_{p.fmt}_k{ks}", 16, ks, 8) for ks in V3_SPLITS if ks == 1 or ks <= steps]
    if mode in V3S_MODES:
        plans += [Plan(f"gemv3s_{mode}_{p.fmt}_k{ks}", 16, ks, 8, ksl) for ks in V3S_SPLITS for ksl in V3S_SLICES
                  if ks * ksl <= steps]
    return plans


def auto_plans(p: Packed, mode: str, batch: int, head_dim: int, v1_rows: int) -> list[Plan]:
    """What gemv="auto" times for one product, in its order: v3's heuristic plan, the v2 plan, then every other v3
    split (v3_plans); pick_fastest keeps the first unless a later one wins by its margin."""
    return [gemv_plan(p, mode, batch, v, head_dim, v1_rows) for v in ("v3", "v2")] + v3_plans(p, mode, batch, head_dim)


def split_scratch(xp, plans: Sequence[tuple[Packed, Plan]], batch: int) -> tuple[Any, Any]:
    """The buffers of the block-split plans among `plans` ((weight, plan) pairs) at this batch size: float32
    partial sums (a task, batch tile and slice: 32 lanes x 5) and int32 counters (a task and batch tile; zero, and
    left zero by every launch). One pair serves a whole step: its launches run one after another."""
    tiles = -(-batch // 8)
    split = [(p, plan) for p, plan in plans if plan.ksl > 1]
    slots = max([tiles * (p.n // plan.r) for p, plan in split], default=1)
    part = max([tiles * (p.n // plan.r) * plan.ksl * 160 for p, plan in split], default=1)
    return xp.zeros(part, np.float32), xp.zeros(slots, np.int32)


def v3_split(tasks: int, steps: int, batch: int) -> int:
    """K-split warps a v3 task: doubled while the grid has fewer than 2,048 warps and each warp keeps >= 2 steps."""
    ks, tiles = 1, -(-batch // 8)
    while ks < V3_SPLITS[-1] and tasks * ks * tiles < 2048 and steps >= 4 * ks:
        ks *= 2
    return ks


def gemv_plan(p: Packed, mode: str, batch: int, version: str = "v2", head_dim: int = 64, v1_rows: int = 2) -> Plan:
    """The engine's choice for one product. v3 (tensor cores, float16 activations) where the weight's format and
    shape fit it, else v2. v2: batch 1 one row a block, else 8 (weights read once for 8 rows);
    4 weight rows a warp for int8/int4 (each activation load serves 4 rows) and from batch 2, else 2; 4 warps split
    K where one warp would loop (more chunks than it keeps in flight) and the rows alone give few warps.
    v1 (the first kernels): v1_rows rows a warp (KernelEngine.rows_per_warp)."""
    if version == "v1":
        return Plan(f"gemv_{mode}_{p.fmt}" + ("_r4" if v1_rows == 4 else ""), v1_rows)
    if version == "v3":
        if not v3_fits(p, mode, head_dim):
            return gemv_plan(p, mode, batch, "v2", head_dim, v1_rows)
        ks = v3_split(p.n // 16, -(-p.k // (4 * EPL[p.fmt])), batch)
        return Plan(f"gemv3_{mode}_{p.fmt}_k{ks}", 16, ks, 8)
    if version != "v2":
        raise BadInputError(f"gemv must be one of {', '.join(GEMV_VERSIONS)}, got {version!r}")
    nb = 1 if batch == 1 else 8
    r = 4 if nb == 8 or p.fmt in ("q8", "q4") else 2
    fits = lambda r: p.n % r == 0 and (mode != "qkv" or (head_dim // 2) % (r // 2) == 0)  # noqa: E731
    if not fits(r):
        if nb == 8:
            return gemv_plan(p, mode, batch, "v1", head_dim, 2)
        r = 2
    chunks, in_flight = -(-p.k // (32 * EPL[p.fmt])), 8 // r
    ks = 4 if chunks > in_flight and (p.n // r) * -(-batch // nb) <= 4096 else 1
    return Plan(f"gemv2_{mode}_{p.fmt}_r{r}_k{ks}_b{nb}", r, ks, nb)


def pick_fastest(candidates: dict, time_us, margin: float = 0.03) -> dict:
    """{key: [Plan, ...]} -> {key: the plan timed fastest}: time_us(key, plan) -> microseconds; a later candidate
    must beat the best so far by `margin` (timing noise does not flip a choice between kernels of equal speed)."""
    out = {}
    for key, plans in candidates.items():
        best, best_us = None, float("inf")
        for plan in dict.fromkeys(plans):
            us = time_us(key, plan)
            if best is None or us < best_us * (1 - margin):
                best, best_us = plan, us
        out[key] = best
    return out


def launch_gemv(kern: dict, mode: str, p: Packed, x, gamma, eps: float, batch: int, out, ldo: int = 0,
                inter: int = 0, bias=None, kc=None, vc=None, cos=None, sin=None, seqlens=None, nh: int = 0,
                kvh: int = 0, cap: int = 0, rows_per_warp: int = 2, plan: Plan | None = None,
                scratch: tuple | None = None) -> None:
    """One decode.cu GEMV (mode resid | logits | swiglu | qkv) on the current stream; arguments as its twin's.
    plan: which kernel (gemv_plan); without one the v1 kernel with rows_per_warp 2 or 4 rows a warp. scratch:
    split_scratch's (partials, counters), for a plan that splits K across blocks (ksl > 1)."""
    i32, null = np.int32, np.uint64(0)
    opt = lambda a: null if a is None else a  # noqa: E731
    plan = plan or Plan(f"gemv_{mode}_{p.fmt}" + ("_r4" if rows_per_warp == 4 else ""), rows_per_warp)
    tasks = p.n // plan.r                             # gate j with up j for SwiGLU, d with d + D/2 for rotary
    grid = (-(-tasks // (plan.warps // plan.ks)), -(-batch // plan.nb), plan.ksl)
    args = (p.w, opt(p.sz), i32(p.kb), i32(p.block), i32(p.row_bytes), x, opt(gamma), np.float32(eps), i32(p.k),
            i32(tasks), i32(batch), out, i32(ldo), i32(inter), opt(bias), opt(kc), opt(vc), opt(cos), opt(sin),
            opt(seqlens), i32(nh), i32(kvh), i32(cap))
    if plan.ksl > 1:
        if scratch is None:
            raise BadInputError(f"{plan.name} splits K over {plan.ksl} blocks: pass split_scratch's buffers")
        args += tuple(scratch)
    kern[plan.name](grid, (plan.warps * 32,), args)


def attention_twin(version: str, head_dim: int):
    """The NumPy twin of attention `version`: (q, kc, vc, seqlens, scale, chunk, nsplit) -> (part_o, part_ml)."""
    if version == "v1":
        return R.attn_split
    return functools.partial(R.attn_online, groups=(ATT2_THREADS // 32) * (32 // (head_dim // 8)))


def launch_attention(kern: dict, q, kc, vc, seqlens, part_o, part_ml, out, scale: float, counter,
                     version: str = "v1") -> None:
    """attn_split (v1: grid splits x K/V heads x rows) or attn_online (v2: splits x K/V heads x head slices x
    rows), the last block of each (row, heads) merging the splits: q [B, NH*D], kc/vc [B, KVH, C, D] -> out
    [B, NH*D]; counter int32 [B, NH] zeros (a slot a block column; left zero)."""
    b, kvh, cap, d = kc.shape
    nsplit = part_o.shape[2]
    i32 = np.int32
    grid, threads = (nsplit, kvh, b), ATT_THREADS
    if version == "v2":
        grid, threads = (nsplit, kvh * head_slices(part_o.shape[1] // kvh), b), ATT2_THREADS
    kern[ATTENTION_KERNEL[version]](grid, (threads,), (
        q, kc, vc, seqlens, part_o, part_ml, out, counter, i32(kvh), i32(cap), i32(nsplit), np.float32(scale)))


def kernels(head_dim: int, group: int, chunk: int, fmts: Sequence[str] = tuple(EPL), pdl: bool = False,
            pipeline: bool = False) -> dict:
    """decode.cu's kernels for one geometry and these weight formats, by name; pdl: each launched with
    programmatic stream serialization (kernels/pdl.py), called the same way; pipeline: module_options'."""
    out = {}
    for opts in module_options(head_dim, group, chunk, fmts, pipeline):
        mod = compiled(opts)
        out.update((n, mod.get_function(n)) for n in module_names(opts))
    if pdl:
        from . import pdl as P
        from .cuda import cupy
        out = {n: P.PdlKernel(f, cupy()) for n, f in out.items()}
    return out


@dataclass
class State:
    """Fixed-address buffers of one batch size (the captured CUDA graph refers to them)."""
    batch: int
    cache: Any                     # [L, 2, B, KVH, C, D]
    ids: Any                       # int64 [B, 1]
    seqlens: Any                   # int32 [B]: the next token's position
    logits: Any                    # float32 [B, 1, V]
    resid: Any = None              # float32 [B, H]
    q: Any = None                  # float32 [B, NH*D]
    attn: Any = None
    act: Any = None                # float32 [B, I]
    part_o: Any = None             # float32 [B, NH, S, D]
    part_ml: Any = None            # float32 [B, NH, S, 2]
    counter: Any = None            # int32 [B, NH]: split blocks done, a slot a (K/V head, head slice) (attention)
    step: Any = None               # persistent.StepPlan where this batch size runs the persistent step
    scratch: Any = None            # split_scratch's (partials, counters) for GEMV plans that split K over blocks
    graph: Any = None
    warm: bool = False
    prompts: dict = field(default_factory=dict)   # prompt_graphs: padded length -> (ids, hidden, binding, graph id)
    cpu_step: str | None = None    # CPU: what runs this batch size's step ("native", "onnxruntime" or "twins")
    ort_step: Any = None           # CPU: (the fused graph's decode-step IO binding over these buffers, its state)


class KernelEngine(DeviceStateMemory):
    """generation.Decoder over our kernels. device: "gpu" (CuPy, CUDA graph) or "cpu" (the compiled CPU step where
    it builds and fits, else the NumPy twins; native=False: the twins). session: SessionOptions of the prompt
    pass's onnxruntime session and, on the CPU, the compiled step's threads (intra_op_threads, 0: one per physical
    core)."""

    limit_name = "the cache capacity"
    limit_fix = "raise the capacity up to the model's positions (generate --max-context N; max_length=N)"

    def __init__(self, model_path: str | Path, spec: dict, device: str = "gpu", max_length: int | None = None,
                 cuda_graph: bool = True, device_id: int = 0, weights: Weights | None = None,
                 chunk: int | None = None, prefill: str = "auto", gemv: str = "auto", pdl: bool | None = None,
                 attention: str | None = None, step: str = "kernels", pipeline: bool = False,
                 prompt_graphs: bool = True, native: bool | None = None, session=None, cpu_step: str = "auto"):
        if gemv not in GEMV_CHOICES:
            raise BadInputError(f"gemv must be one of {', '.join(GEMV_CHOICES)}, got {gemv!r}")
        if step not in S.STEP_CHOICES:
            raise BadInputError(f"step must be one of {', '.join(S.STEP_CHOICES)}, got {step!r}")
        if cpu_step not in CPU_STEPS:
            raise BadInputError(f"cpu_step must be one of {', '.join(CPU_STEPS)}, got {cpu_step!r}")
        self.cpu_step = cpu_step
        self.chosen: dict[tuple, Plan] = {}                 # gemv="auto": (batch, fmt, N, K, mode) -> the plan timed
        self.steps_timed: dict[int, dict] = {}              # step="auto": batch -> both steps' microseconds
        self.spec, self.gemv, self.step_mode = spec, gemv, step
        self.num_layers, self.kv_heads, self.head_dim = spec["num_layers"], spec["kv_heads"], spec["head_dim"]
        self.num_heads, self.hidden, self.inter = spec["num_heads"], spec["hidden_size"], spec["intermediate_size"]
        self.vocab_size, self.eps = spec["vocab_size"], float(spec["norm_eps"])
        self.capacity = int(max_length or min(spec["max_positions"], 4096))
        if self.capacity > spec["max_positions"]:
            raise BadInputError(f"max_length {self.capacity} exceeds the model's {spec['max_positions']} positions")
        host = weights or load_weights(model_path, spec)
        if device == "gpu":                # decode.cu's limits; the twins and the compiled CPU step check their own
            check_geometry(spec, host)
        self.attention = attention_version(self.num_heads // self.kv_heads, self.head_dim, attention)
        self.chunk = int(chunk or attention_chunk(spec, self.attention))
        if self.attention == "v1" and not attention_fits(self.num_heads // self.kv_heads, self.head_dim, self.chunk):
            raise BadInputError(f"an attention split of {self.chunk} positions does not fit the kernel's shared "
                                f"memory for this geometry; leave chunk unset (the engine picks "
                                f"{attention_chunk(spec, 'v1')})")
        self.nsplit = -(-self.capacity // self.chunk)
        self.scale = float(1.0 / np.sqrt(self.head_dim))
        if device == "gpu":
            from .cuda import cupy
            cp = self.xp = cupy()
            try:
                cp.cuda.Device(device_id).use()
            except Exception as e:
                raise DeviceError(f"no usable CUDA device {device_id} for the kernel engine ({e})") from e
            self.stream, self.native = cp.cuda.Stream(non_blocking=True), None
            self.cache_dtype = np.float16
            self.w = self._to_device(host)
            cc = int(cp.cuda.Device().compute_capability)
            if self.gemv in ("v3", "auto") and cc < 80:
                log.warning("the v3 GEMVs need tensor-core mma.sync (sm_80+), this GPU is sm_%d: the engine runs v2",
                            cc)
                self.gemv = "v2"
            fmts = sorted({p.fmt for p in [host.head] + [getattr(l, n) for l in host.layers
                                                         for n in ("qkv", "o", "gate_up", "down")]})
            from . import pdl as P
            self.pdl = P.supported(cp) if pdl is None else bool(pdl)
            self.pipeline = bool(pipeline) and self.pdl     # without PDL there is no next kernel to launch early
            self.k = kernels(self.head_dim, self.num_heads // self.kv_heads, self.chunk, fmts, self.pdl,
                             self.pipeline)
            if pdl is None and self.pdl and not self._pdl_launches():
                self.pdl = self.pipeline = False
                self.k = kernels(self.head_dim, self.num_heads // self.kv_heads, self.chunk, fmts)
        else:
            self.xp, self.stream, self.k, self.pdl, self.pipeline = np, None, None, False, False
            self.cache_dtype = np.dtype(host.embed.dtype).type
            self.w = host
            self._dense = {}                                # id(Packed) -> float32 [N, K] for the twins
            self.native = self._native(native, session.intra_op_threads if session is not None else None)
        self.cuda_graph = cuda_graph and self.xp is not np
        self.prompt_graphs = bool(prompt_graphs) and self.cuda_graph    # the prompt pass replayed per length bucket
        self.prompt_hidden = False                          # the prompt graph stops before the LM head (GPU)
        self.prompt_graph = self._prompt_graph(model_path, prefill, session)
        self.weight_bytes = self.w.step_bytes()
        self.states: dict[int, State] = {}
        self.active: State | None = None
        self.filled = 0

    # ------------------------------------------------------------------ set-up
    def _native(self, native: bool | None, threads: int | None):
        """CPU: the compiled step (kernels/cpu.py) -- native=True requires it, None uses it where it builds and
        fits this decoder (else the NumPy twins, saying why), False runs the twins."""
        if native is False:
            return None
        from . import cpu
        try:
            return cpu.CpuStep(self, threads)
        except (BadInputError, DeviceError) as e:
            if native:
                raise
            log.info("the compiled CPU step is not used (%s): the NumPy twins run the step", e)
            return None

    def _pdl_launches(self) -> bool:
        """pdl=None (auto): one real launch (the embedding gather of one row into a scratch buffer) with the
        attribute; a driver that refuses it (virtualized or shared GPUs may) leaves the engine on plain launches."""
        xp = self.xp
        try:
            with self.stream:
                self.k["embed_rows"]((1,), (256,), (self.w.embed, xp.zeros(1, np.int64),
                                                    xp.empty((1, self.hidden), np.float32), np.int32(self.hidden)))
            self.stream.synchronize()
            return True
        except Exception as e:  # noqa: BLE001 - any refusal means: launch without the attribute
            log.warning("programmatic dependent launch refused (%s): the kernel engine launches in plain stream "
                        "order", e)
            return False

    def _to_device(self, h: Weights) -> Weights:
        xp = self.xp
        f16 = lambda a: None if a is None else xp.asarray(np.asarray(a, np.float16))  # noqa: E731
        layers = [Layer(ln1=f16(l.ln1), ln2=f16(l.ln2), qkv=l.qkv.to(xp), bias=f16(l.bias), o=l.o.to(xp),
                        gate_up=l.gate_up.to(xp), down=l.down.to(xp)) for l in h.layers]
        return Weights(embed=f16(h.embed), cos=xp.asarray(h.cos), sin=xp.asarray(h.sin), layers=layers,
                       norm=f16(h.norm), head=h.head.to(xp))

    def _prompt_graph(self, model_path, prefill: str, session=None):
        """The prompt pass: "kernels" (ours, dense products through CuPy), "onnxruntime" (the fused graph's
        prompt call, cuBLAS + flash attention, writing our cache buffers in place; on the GPU cut before its LM
        head (fused.without_head), our head kernel then computes each row's last logits) or "auto" (the fused graph
        where onnxruntime's CUDA provider loads, else ours). -> the FusedDecoder used for prompts, or None."""
        if prefill not in ("auto", "kernels", "onnxruntime"):
            raise BadInputError(f"prefill must be auto, kernels or onnxruntime, got {prefill!r}")
        if prefill == "kernels" or (prefill == "auto" and self.xp is np and self.native is None):
            return None
        from ..fused import FusedDecoder, without_head
        from ..session import SessionOptions, gpu_available
        if prefill == "auto" and self.xp is not np and not gpu_available():
            return None
        device = "cpu" if self.xp is np else "gpu"            # on the CPU: the twins' cache, filled by onnxruntime
        model, spec = model_path, self.spec
        if self.xp is not np:             # our LM head kernel computes the last rows' logits: the graph stops before
            cut = without_head(model_path)
            if cut is not None:
                model, spec = cut, dict(self.spec, vocab_size=self.hidden)
        try:
            so = SessionOptions(device=device) if session is None else dataclasses.replace(session, device=device)
            dec = FusedDecoder(model, spec, so, max_length=self.capacity,
                               cuda_graph=self.prompt_graphs and model is not model_path)
            self.prompt_hidden = model is not model_path
            self.prompt_graphs = self.prompt_graphs and self.prompt_hidden and not dec.picked_head
            return dec
        except (BadInputError, DeviceError) as e:
            if prefill == "onnxruntime":
                raise
            log.info("prompt pass by the kernel engine (%s)", e)
            return None

    @property
    def prefill_by(self) -> str:
        return "onnxruntime fused graph" if self.prompt_graph is not None else "kernel engine"

    def state_bytes(self, batch: int, prompt_len: int = 0) -> int:
        it = np.dtype(self.cache_dtype).itemsize
        kv = 2 * self.num_layers * batch * self.kv_heads * self.capacity * self.head_dim * it
        scratch = 4 * batch * (self.vocab_size + 2 * self.hidden + 2 * self.num_heads * self.head_dim + self.inter
                               + self.num_heads * self.nsplit * (self.head_dim + 2))
        prompt = 4 * batch * max(prompt_len, 1) * (2 * self.hidden + 2 * self.inter + self.num_heads * max(
            prompt_len, 1))
        return kv + scratch + prompt

    def state(self, batch: int) -> State:
        if batch in self.states:
            return self.states[batch]
        if not 1 <= batch <= 1024:
            raise BadInputError(f"batch size must be in 1..1024, got {batch}")
        xp = self.xp
        if xp is not np:
            need, free = self.state_bytes(batch), self.bytes_available()
            if need > free:
                raise DeviceError(f"batch {batch} needs {need / 2**30:.2f} GiB on the GPU for its KV cache (capacity "
                                  f"{self.capacity} tokens) and buffers, but {free / 2**30:.2f} GiB is free: use a "
                                  "smaller batch or max_length")
        nd = self.num_heads * self.head_dim
        with self.on_stream():
            shape = (self.num_layers, 2, batch, self.kv_heads, self.capacity, self.head_dim)
            st = State(batch=batch, cache=xp.zeros(shape, self.cache_dtype) if xp is not np else
                       cache_zeros(shape, self.cache_dtype),
                       ids=xp.zeros((batch, 1), np.int64), seqlens=xp.zeros(batch, np.int32),
                       logits=xp.zeros((batch, 1, self.vocab_size), np.float32),
                       resid=xp.zeros((batch, self.hidden), np.float32), q=xp.zeros((batch, nd), np.float32),
                       attn=xp.zeros((batch, nd), np.float32), act=xp.zeros((batch, self.inter), np.float32),
                       part_o=xp.zeros((batch, self.num_heads, self.nsplit, self.head_dim), np.float32),
                       part_ml=xp.zeros((batch, self.num_heads, self.nsplit, 2), np.float32),
                       counter=xp.zeros((batch, self.num_heads), np.int32))
        self.states[batch] = st
        if self.gemv == "auto" and xp is not np:
            self._tune(st)
        if xp is not np:
            with self.on_stream():
                st.scratch = split_scratch(xp, [(p, self.plan(p, mode, batch)) for i in [*range(self.num_layers), None]
                                                for p, mode, _ in self._gemvs(st, i)], batch)
            st.step = self._persistent(st)
        return st

    def _persistent(self, st: State):
        """The persistent step for st's batch size (persistent.py), or None for the kernel-a-phase step: step=
        "persistent" requires it; "auto" times both (whole steps in CUDA graphs) and keeps it where it is faster by
        3%, and where it cannot run (unfit geometry, a GPU or driver that refuses the cooperative launch) says why
        and keeps the kernels."""
        if self.step_mode == "kernels":
            return None
        if self.gemv not in ("v3", "auto"):
            if self.step_mode == "persistent":
                raise BadInputError(f"the persistent step runs the v3 GEMVs, the engine was asked for {self.gemv}: "
                                    "use gemv='v3' or 'auto', or step='kernels'")
            return None
        from .bench_engine import time_graph
        try:
            sp = S.plan(self, st, self.xp)
            if self.step_mode == "persistent":
                return sp
            self.synchronize()
            us = {"kernels": time_graph(self.xp, lambda: self._launch_layers(st), 3, 5),
                  "persistent": time_graph(self.xp, lambda: sp.launch(self, st), 3, 5)}
        except Exception as e:  # noqa: BLE001 - auto: any refusal keeps the kernel-a-phase step
            if self.step_mode == "persistent":
                raise
            log.info("batch %d: the kernel-a-phase step (the persistent one does not run here: %s)", st.batch, e)
            return None
        self.synchronize()
        faster = us["persistent"] < us["kernels"] * (1 - 0.03)
        self.steps_timed[st.batch] = dict(us, chosen="persistent" if faster else "kernels")
        log.info("batch %d: persistent step %.1f us, kernel-a-phase %.1f us: the %s one", st.batch,
                 us["persistent"], us["kernels"], self.steps_timed[st.batch]["chosen"])
        return sp if faster else None

    def release(self, batch: int | None = None) -> None:
        for b in ([batch] if batch is not None else list(self.states)):
            if self.active is self.states.pop(b, None):
                self.active = None
        if self.xp is not np:
            self.xp.get_default_memory_pool().free_all_blocks()

    # ------------------------------------------------------------------ the step on the device
    def _gemvs(self, st: State, i: int | None) -> list[tuple[Packed, str, dict]]:
        """Layer i's four products (None: the LM head) as (weight, mode, launch_gemv's buffers) on st's buffers."""
        w = self.w
        if i is None:
            return [(w.head, "logits", dict(x=st.resid, gamma=w.norm, out=st.logits, ldo=self.vocab_size))]
        layer = w.layers[i]
        return [(layer.qkv, "qkv", dict(x=st.resid, gamma=layer.ln1, out=st.q, bias=layer.bias, kc=st.cache[i, 0],
                                        vc=st.cache[i, 1], cos=w.cos, sin=w.sin, seqlens=st.seqlens,
                                        nh=self.num_heads, kvh=self.kv_heads, cap=self.capacity)),
                (layer.o, "resid", dict(x=st.attn, gamma=None, out=st.resid, ldo=self.hidden)),
                (layer.gate_up, "swiglu", dict(x=st.resid, gamma=layer.ln2, out=st.act, inter=self.inter)),
                (layer.down, "resid", dict(x=st.act, gamma=None, out=st.resid, ldo=self.hidden))]

    def _gemv(self, st: State, p: Packed, mode: str, bufs: dict, plan: Plan | None = None) -> None:
        launch_gemv(self.k, mode, p, eps=self.eps, batch=st.batch, plan=plan or self.plan(p, mode, st.batch),
                    scratch=st.scratch, **bufs)

    def _launch(self, st: State) -> None:
        """The whole decode step as kernel launches on the current stream (what the CUDA graph captures): the
        layers by the persistent kernel or a kernel a phase, then the final norm + LM head."""
        if st.step is not None:
            st.step.launch(self, st)
        else:
            self._launch_layers(st)
        self._gemv(st, *self._gemvs(st, None)[0])

    def _launch_layers(self, st: State) -> None:
        """The embedding gather and every layer, five kernels a layer."""
        w, b = self.w, st.batch
        self.k["embed_rows"]((b,), (256,), (w.embed, st.ids, st.resid, np.int32(self.hidden)))
        for i in range(self.num_layers):
            qkv, *rest = self._gemvs(st, i)
            self._gemv(st, *qkv)
            launch_attention(self.k, st.q, st.cache[i, 0], st.cache[i, 1], st.seqlens, st.part_o, st.part_ml,
                             st.attn, self.scale, st.counter, self.attention)
            for call in rest:
                self._gemv(st, *call)

    @staticmethod
    def _key(p: Packed, mode: str, batch: int) -> tuple:
        return batch, p.fmt, p.n, p.k, mode

    def plan(self, p: Packed, mode: str, batch: int) -> Plan:
        """The kernel of one product at this batch size: gemv_plan with the engine's version, or (gemv="auto") the
        plan _tune timed fastest for this shape and batch (v3 until it has)."""
        if self.gemv == "auto":
            chosen = self.chosen.get(self._key(p, mode, batch))
            return chosen or gemv_plan(p, mode, batch, "v3", self.head_dim, self.rows_per_warp(batch))
        return gemv_plan(p, mode, batch, self.gemv, self.head_dim, self.rows_per_warp(batch))

    def _tune(self, st: State) -> None:
        """gemv="auto", once a batch size (its buffers are new; the prompt pass and the step rewrite every one the
        timing writes): each distinct product (format, N, K, mode) not chosen before timed with its v3 plan
        (gemv_plan), its v2 plan and every other v3 split of K over warps and blocks (v3_plans), 10 launches in a
        CUDA graph replayed 10 times, the fastest kept (pick_fastest: a later one must win by 3%; engines that must
        compute alike share one `chosen` dict). On an H200 v3 (tensor cores) wins every product from batch 2 on;
        at batch 1 v2 wins most FP16 products, v3 split over 4-8 warps (int8 down: also over 4 blocks) the int4
        and int8 ones (run26-h200 kernel_bench.json, "auto" rows)."""
        from .bench_engine import time_graph
        calls: dict[tuple, tuple] = {}
        for i in [*range(self.num_layers), None]:
            for p, mode, bufs in self._gemvs(st, i):
                calls.setdefault(self._key(p, mode, st.batch), (p, mode, bufs))
        cands = {key: auto_plans(p, mode, st.batch, self.head_dim, self.rows_per_warp(st.batch))
                 for key, (p, mode, _) in calls.items() if key not in self.chosen}
        with self.on_stream():
            st.scratch = split_scratch(self.xp, [(calls[key][0], plan) for key, plans in cands.items()
                                                 for plan in plans], st.batch)
        self.synchronize()                                  # the buffers are zeroed on the engine's stream

        def time_us(key, plan):
            p, mode, bufs = calls[key]
            return time_graph(self.xp, lambda: self._gemv(st, p, mode, bufs, plan), 10, 10)
        self.chosen.update(pick_fastest(cands, time_us))
        self.synchronize()
        log.info("GEMV plans for batch %d: %s", st.batch, "; ".join(
            f"{m} {f} {n}x{k}: {self.chosen[(b, f, n, k, m)].name}" for (b, f, n, k, m) in calls))

    def plans_chosen(self) -> dict[str, str]:
        """What gemv="auto" picked: '<mode> <fmt> NxK b<batch>' -> kernel entry."""
        return {f"{m} {f} {n}x{k} b{b}": plan.name for (b, f, n, k, m), plan in self.chosen.items()}

    def rows_per_warp(self, batch: int) -> int:
        """4 weight rows a warp from batch 4 on (each activation load serves 4 rows), where every output count
        allows it; else 2 (more warps for the bandwidth of small batches)."""
        w = self.w
        even = all(p.n % 4 == 0 for l in w.layers for p in (l.qkv, l.o, l.gate_up, l.down)) and w.head.n % 4 == 0
        return 4 if batch >= 4 and even and self.head_dim % 4 == 0 else 2

    def _twins(self, st: State, a8: bool = False) -> None:
        """The same step with the NumPy twins (CPU hosts, CI). a8: int8 products quantize their input as the
        compiled CPU step does (cpu_step.c), the twin it is checked against."""
        w, dense = self.w, self._dense_of
        q8 = lambda p: a8 and p.fmt == "q8"          # noqa: E731
        st.resid[...] = R.embed_rows(w.embed, st.ids)
        for i, layer in enumerate(w.layers):
            R.gemv_qkv(dense(layer.qkv), st.resid, layer.ln1, self.eps, layer.bias, st.q, st.cache[i, 0],
                       st.cache[i, 1], w.cos, w.sin, st.seqlens, self.num_heads, self.kv_heads, a8=q8(layer.qkv))
            po, pml = attention_twin(self.attention, self.head_dim)(st.q, st.cache[i, 0], st.cache[i, 1],
                                                                     st.seqlens, self.scale, self.chunk, self.nsplit)
            st.attn[...] = R.attn_combine(po, pml, st.seqlens, self.chunk)
            R.gemv_resid(dense(layer.o), st.attn, st.resid, a8=q8(layer.o))
            st.act[...] = R.gemv_swiglu(dense(layer.gate_up), st.resid, layer.ln2, self.eps, self.inter,
                                        a8=q8(layer.gate_up))
            R.gemv_resid(dense(layer.down), st.act, st.resid, a8=q8(layer.down))
        st.logits[:, 0] = R.gemv_logits(dense(w.head), st.resid, w.norm, self.eps, a8=q8(w.head))

    def _choose_cpu_step(self, st: State) -> str:
        """CPU: what runs st's batch size, chosen at its first step. Where the fused graph is there (the prompt
        pass's; its decode step then bound to these same buffers): cpu_step="onnxruntime" runs its step, "auto"
        the compiled step up to NATIVE_ROWS rows and onnxruntime's beyond; otherwise the compiled step where it is
        built, else the NumPy twins (native=False asks for them). A row a step is a chain of
        matrix-vector products, where one parallel region wins, several rows are small matrix products, where
        onnxruntime's GEMMs win (SmolLM2 on the 2-core AVX-512 VNNI box, ms a step compiled / onnxruntime's step,
        timed by hand in session 20 on the step committed in cf118f6, one try each, not a results file: int8 b1
        6.5 / 8.5, b2 8.5 / 9.6, b4 12.9 / 12.2, b8 29 / 23; fp32 b2 18.0 / 22.5, b4 26.5 / 23.8, b8 55 / 30; the
        rule's result against the fused graph alone is benchmarks/results/llm-cpu/step-batch/). Timing both at a
        batch size's first use was tried and dropped: right after the prompt pass onnxruntime's spinning threads
        slow the compiled step's, and the choice flipped between runs."""
        if self.prompt_graph is not None and (self.cpu_step == "onnxruntime" or (
                self.cpu_step == "auto" and st.batch > NATIVE_ROWS and self.native is not None)):
            ort = self.prompt_graph
            ds = dataclasses.replace(self._prompt_state(st), logits=st.logits, total=np.array(self.capacity, np.int32),
                                     picks=np.zeros((st.batch, 1), np.int64) if ort.picked_head else None)
            st.ort_step = (ort.bind_call(ds, st.ids, ds.total, st.logits)[0], ds)     # ds: what it binds, held
        st.cpu_step = "onnxruntime" if st.ort_step is not None else "native" if self.native is not None else "twins"
        log.debug("batch %d: the %s decode step", st.batch, {"native": "compiled", "twins": "NumPy twins'",
                                                               "onnxruntime": "onnxruntime fused graph's"}[st.cpu_step])
        return st.cpu_step

    def _dense_of(self, p: Packed) -> np.ndarray:
        key = id(p)
        if key not in self._dense:
            self._dense[key] = p.dense()
        return self._dense[key]

    def decode_one_token(self, st: State):
        """One token a row from st.ids at positions st.seqlens -> logits float32 [B, 1, V] (the fixed buffer)."""
        if self.xp is np:
            how = st.cpu_step or self._choose_cpu_step(st)
            if how == "native":
                self.native(st)
            elif how == "onnxruntime":
                self.prompt_graph.run_bound(st.ort_step[0], -1)
            else:
                self._twins(st)
            return st.logits
        with self.stream:
            if st.graph is not None:
                st.graph.launch(self.stream)
            elif not self.cuda_graph or not st.warm:
                self._launch(st)                       # the first step runs eagerly (modules load, nothing captured)
                st.warm = True
            else:
                self.stream.begin_capture()
                try:
                    self._launch(st)
                finally:
                    st.graph = self.stream.end_capture()
                st.graph.launch(self.stream)
        return st.logits

    # ------------------------------------------------------------------ the prompt pass
    def _matmul(self, x, p: Packed):
        """x [M, K] float32 -> x @ W^T float32 (float16 tensor-core GEMM on the device, float32 on the host)."""
        xp = self.xp
        if xp is np:
            return x @ self._dense_of(p).T
        w = p.w if p.fmt == "f16" else p.dense(xp, np.float16)
        return (x.astype(np.float16) @ w.T).astype(np.float32)

    def _norm(self, x, gamma):
        xp = self.xp
        return x * (1.0 / xp.sqrt((x * x).mean(-1, keepdims=True) + self.eps)) * gamma.astype(np.float32)

    def _prefill_onnxruntime(self, st: State, prompts: Sequence[Sequence[int]]):
        """The fused graph's prompt call with its K/V outputs bound to our cache (same layout, per layer)."""
        ort = self.prompt_graph
        bucket = prompt_bucket(max(len(p) for p in prompts), self.capacity) if self.prompt_graphs else None
        if bucket is not None:
            return self._prefill_bucket(st, prompts, bucket)
        self.synchronize()                                # our stream's writes land before onnxruntime's stream reads
        with ort.on_stream():
            logits, rows = ort.prefill(self._prompt_state(st), prompts, 0, last_only=not self.prompt_hidden)
        ort.synchronize()
        if not self.prompt_hidden:
            return logits, rows
        with self.on_stream():                            # "logits" are the final-norm hidden states
            return self._head_of(st, logits[rows].astype(np.float32)), None

    def _prompt_state(self, st: State):
        """st's buffers as the fused graph's DecodeState: its K/V outputs bound to our cache (same layout, per
        layer), our ids and seqlens."""
        from ..fused import DecodeState
        return DecodeState(batch=st.batch, kv=[st.cache[i, j] for i in range(self.num_layers) for j in (0, 1)],
                           ids=st.ids, seqlens=st.seqlens, logits=None)

    def _head_of(self, st: State, x):
        """Our LM head on each row's last prompt position (float32 [B, H], on our stream) -> logits [B, V]."""
        out = self.xp.empty((st.batch, self.vocab_size), np.float32)
        launch_gemv(self.k, "logits", self.w.head, x, None, self.eps, st.batch, out, ldo=self.vocab_size,
                    plan=self.plan(self.w.head, "logits", st.batch))
        return out

    def _prefill_bucket(self, st: State, prompts: Sequence[Sequence[int]], bucket: int):
        """prompt_graphs: the cut fused graph's prompt call on prompts right-padded to `bucket` positions, its
        inputs and outputs bound once to fixed buffers (the ids, the hidden states, our cache, our seqlens), captured
        as a CUDA graph at its first use and replayed after (onnxruntime's gpu_graph_id), so its ~15 kernels a layer
        cost one launch; then our head kernel on each row's last prompt position. The padded positions are computed
        and written to the cache past each row's end, as for the shorter rows of any right-padded batch: a decode
        step writes position len before anything attends to it."""
        ort, xp, b = self.prompt_graph, self.xp, st.batch
        lens = np.array([len(p) for p in prompts], np.int64)
        ids = np.zeros((b, bucket), np.int64)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
        if bucket not in st.prompts:
            ids_d = xp.zeros((b, bucket), np.int64)
            hidden = xp.zeros((b, bucket, self.hidden), ort.logits_dtype)
            total = np.array(bucket, np.int32)                 # held: the binding refers to it
            st.prompts[bucket] = (ids_d, hidden, *ort.bind_call(self._prompt_state(st), ids_d, total, hidden), total)
        ids_d, hidden, binding, gid, _ = st.prompts[bucket]
        self.synchronize()                                # our stream's writes land before onnxruntime's stream reads
        with ort.on_stream():
            ids_d[...] = xp.asarray(ids)
            st.seqlens[...] = xp.asarray((lens - 1).astype(np.int32))
            ort.run_bound(binding, gid)
        ort.synchronize()
        with self.on_stream():
            return self._head_of(st, hidden[xp.arange(b), xp.asarray(lens - 1)].astype(np.float32)), None

    def prefill(self, st: State, prompts: Sequence[Sequence[int]]):
        """Right-padded prompt pass: fills the cache at positions 0..len-1 -> (logits, rows): rows[b] picks row
        b's last prompt token (None: logits [B, V] hold only those)."""
        if self.prompt_graph is not None:
            return self._prefill_onnxruntime(st, prompts)
        xp, w = self.xp, self.w
        lens = np.array([len(p) for p in prompts], np.int64)
        s, b = int(lens.max()), st.batch
        if s > self.capacity:
            raise BadInputError(f"prompt of {s} tokens exceeds the cache capacity {self.capacity}")
        ids = np.zeros((b, s), np.int64)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
        nh, kvh, d, g = self.num_heads, self.kv_heads, self.head_dim, self.num_heads // self.kv_heads
        with self.on_stream():
            x = w.embed[xp.asarray(ids)].astype(np.float32).reshape(b * s, self.hidden)
            cos, sin = w.cos[:s][None, :, None], w.sin[:s][None, :, None]
            causal = xp.asarray(np.triu(np.full((s, s), -np.inf, np.float32), 1))
            for i, layer in enumerate(w.layers):
                y = self._matmul(self._norm(x, layer.ln1), layer.qkv)
                if layer.bias is not None:
                    y = y + layer.bias.astype(np.float32)
                y = y.reshape(b, s, nh + 2 * kvh, d)
                qk = R.rotate(y[:, :, :nh + kvh], cos, sin)
                st.cache[i, 0, :, :, :s] = qk[:, :, nh:].transpose(0, 2, 1, 3).astype(self.cache_dtype)
                st.cache[i, 1, :, :, :s] = y[:, :, nh + kvh:].transpose(0, 2, 1, 3).astype(self.cache_dtype)
                q = qk[:, :, :nh].transpose(0, 2, 1, 3)                                   # [B, NH, S, D]
                attn = xp.empty((b, nh, s, d), np.float32)
                for r in range(b):
                    k = xp.repeat(st.cache[i, 0, r, :, :s].astype(np.float32), g, axis=0)  # [NH, S, D]
                    v = xp.repeat(st.cache[i, 1, r, :, :s].astype(np.float32), g, axis=0)
                    sc = q[r] @ k.transpose(0, 2, 1) * self.scale + causal
                    sc = xp.exp(sc - sc.max(-1, keepdims=True))
                    attn[r] = (sc / sc.sum(-1, keepdims=True)) @ v
                x = x + self._matmul(attn.transpose(0, 2, 1, 3).reshape(b * s, nh * d), layer.o)
                gu = self._matmul(self._norm(x, layer.ln2), layer.gate_up)
                gate, up = gu[:, :self.inter], gu[:, self.inter:]
                x = x + self._matmul(gate / (1 + xp.exp(-gate)) * up, layer.down)
            last = x.reshape(b, s, self.hidden)[xp.arange(b), xp.asarray(lens - 1)]
            logits = self._matmul(self._norm(last, w.norm), w.head)
            st.seqlens[...] = xp.asarray((lens - 1).astype(np.int32))
        return logits, None

    # ------------------------------------------------------------------ the Decoder protocol
    @property
    def next_ids(self):
        return self.active.ids if self.active is not None else None

    @property
    def seqlens(self):
        return self.active.seqlens if self.active is not None else None

    def start(self, batch: int) -> None:
        self.active, self.filled = self.state(batch), 0

    def append(self, chunks: Sequence[Sequence[int]], past: np.ndarray, room: int):
        """First call (empty cache): the prompt pass. Later turns: the chunks fed as decode steps (as the fused
        graph's decoder does). -> (logits, rows) as generation.Decoder.append says."""
        st = self.active
        n = np.array([len(c) for c in chunks], np.int64)
        past = np.asarray(past, np.int64)
        check_cache_room(past, n, room, self.capacity)
        if not past.any():
            logits, rows = self.prefill(st, chunks)
            self.filled = int(n.max())
            return logits, rows
        with self.on_stream():
            last = append_by_steps(self, st, chunks, past, np.float32)
        self.filled = int((past + n).max())
        return last, None

    def step(self, real=None):
        """One token a row from next_ids (a finished row's pads are never attended by its real tokens)."""
        self.filled += 1
        return self.decode_one_token(self.active), None

    def reorder(self, src: np.ndarray) -> None:
        with self.on_stream():
            idx, f = self.xp.asarray(src), self.filled
            c = self.active.cache
            c[:, :, :, :, :f] = c[:, :, idx, :, :f]

    def host(self, a) -> np.ndarray:
        return a.get(stream=self.stream) if self.xp is not np else np.asarray(a)

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def on_stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()



def open_decoder(model_path: str | Path, spec: dict, engine: str = "auto", device: str = "gpu",
                 max_length: int | None = None, cuda_graph: bool = True, session=None):
    """The decoder of a fused-decoder file: engine="kernels" (ours: CUDA kernels on the GPU; on the CPU the compiled
    step where it builds and fits, else the NumPy twins), "onnxruntime" (the fused graph) or "auto" (ours where it
    runs: on the GPU where CuPy and a device are there and the model fits the kernels, on the CPU where the compiled
    step builds and fits; else the fused graph, saying why -- never the twins, which onnxruntime outruns).
    session: the SessionOptions of the onnxruntime sessions (the prompt pass's, the fallback's) and, on the CPU, the
    compiled step's threads (intra_op_threads; 0: one per physical core)."""
    from ..fused import FusedDecoder
    from ..session import SessionOptions
    if engine not in ("auto", "kernels", "onnxruntime"):
        raise BadInputError(f"engine must be auto, kernels or onnxruntime, got {engine!r}")
    so = SessionOptions(device=device) if session is None else dataclasses.replace(session, device=device)
    if engine in ("kernels", "auto"):
        try:
            return KernelEngine(model_path, spec, device=device, max_length=max_length, cuda_graph=cuda_graph,
                                native=True if engine == "auto" and device == "cpu" else None, session=so)
        except (BadInputError, DeviceError) as e:
            if engine == "kernels":
                raise
            log.info("kernel engine not used (%s): the onnxruntime fused graph runs the decoder", e)
    return FusedDecoder(model_path, spec, so, max_length=max_length, cuda_graph=cuda_graph)
