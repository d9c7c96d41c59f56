"""The persistent decode step (KernelEngine step="persistent"): every layer of a step in one kernel
(decode.cu `step_layers`), one block an SM, all resident (a cooperative launch), the five phases of a layer
separated by grid barriers instead of kernel boundaries; the LM head stays its own kernel.

Why it was tried: at batch 1 a 0.5B step's GEMVs sit at the few-microsecond floor of a kernel (a layer's four
GEMVs 20 us for 30 MB, the o-proj's 0.8 MB 3 us); inside one kernel a phase boundary is a barrier, and each phase's
weights are prefetched into L2 before it. Measured (llm-gpu/run22-h200): 1.9x slower than the kernel-a-phase step
on an H200 (a grid barrier 2.97 us vs a kernel boundary with programmatic dependent launch 2.52 us, and one
231-register block an SM keeps fewer loads in flight), so the engine's default is step="kernels"; "auto" times both.

Each phase runs the kernel-a-phase step's device code (gemv3 with 8-warp blocks, attn_online_block) over virtual
blocks, so it computes what those kernels compute; only a GEMV split across blocks (ksl > 1) adds its K slices'
sums in another (fixed) order. Its twin is therefore the kernel-a-phase step's (engine_reference), and the bench
validates it against that step on the GPU (bench_engine validate-step).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadInputError

log = logging.getLogger(__name__)

STEP_CHOICES = ("kernels", "persistent", "auto")   # auto: the faster of the two, timed at a batch size's first use
WARPS = 8                                          # decode.cu STEP_WARPS: a block of the persistent step
PRODUCTS = ("qkv", "o", "gate_up", "down")         # decode.cu StepLayer.w order and its -D KS_* options
KS_OPTION = {"qkv": "KS_QKV", "o": "KS_O", "gate_up": "KS_GU", "down": "KS_DN"}
FIELDS = 13                                        # decode.cu StepLayer: w[4], sz[4], ln1, ln2, bias, kc, vc


def split(tasks: int, steps: int, batch: int, blocks: int) -> tuple[int, int]:
    """One product's work on a grid of `blocks` 8-warp blocks -> (KS: warps of a block splitting K, 1..8;
    ksl: blocks splitting K). KS doubles while the product's warps (tasks x KS x batch tiles) are fewer than the
    grid's and each warp keeps a K step; then ksl doubles while its virtual blocks are fewer than the grid's blocks
    and each warp keeps a step (a 16-row task of a small product then spreads over more SMs)."""
    tiles = -(-batch // 8)
    ks = 1
    while ks < WARPS and tasks * ks * tiles < WARPS * blocks and 2 * ks <= steps:
        ks *= 2
    ksl, groups = 1, -(-tasks // (WARPS // ks))
    while groups * ksl * tiles < blocks and 2 * ks * ksl <= steps:
        ksl *= 2
    return ks, ksl


def unfit(layers: list, head_dim: int, online_attention: bool, cc: int) -> str | None:
    """Why the persistent step cannot run these layers (None: it can): it needs sm_80+ (tensor cores), attention
    v2, one weight format for every product of every layer (float16, int8 or int4) with one quantization block,
    and shapes the v3 GEMVs take."""
    from .engine import v3_fits
    if cc < 80:
        return f"compute capability {cc / 10:.1f} (the persistent step needs 8.0+)"
    if not online_attention:
        return "attention v1 (the persistent step runs attention v2)"
    prods = [(getattr(l, n), m) for l in layers for n, m in zip(PRODUCTS, ("qkv", "resid", "swiglu", "resid"))]
    fmts, blocks = {p.fmt for p, _ in prods}, {p.block for p, _ in prods}
    if len(fmts) != 1 or len(blocks) != 1:
        return f"layers mix weight formats {sorted(fmts)} or quantization blocks {sorted(blocks)}"
    bad = [f"{p.fmt} [{p.n}, {p.k}] {m}" for p, m in prods if not v3_fits(p, m, head_dim)]
    if bad:
        return f"products the v3 GEMVs do not take ({bad[0]})"
    shapes = {(getattr(l, n).n, getattr(l, n).k) for l in layers for n in PRODUCTS}
    if len(shapes) != len(PRODUCTS):
        return "layers of different shapes"
    return None


def options(head_dim: int, group: int, chunk: int, fmt: str, ks: dict[str, int]) -> tuple[str, ...]:
    """The step module's -D options (engine.compiled compiles and caches it)."""
    from .engine import FORMAT_BIT
    return (f"-DHD={head_dim}", f"-DGQA={group}", f"-DCHUNK={chunk}", "-DFMTS=0", "-DWITH_ATTN=1", "-DWITH_STEP=1",
            "-DCOHERENT=1", f"-DSTEP_FMT={FORMAT_BIT[fmt]}") + tuple(f"-D{KS_OPTION[n]}={ks[n]}" for n in PRODUCTS)


def table(xp, layers: list, cache) -> Any:
    """decode.cu StepLayer rows (uint64 [L, FIELDS]: the device addresses of each layer's weights, norms, bias and
    K/V cache slice) on the device."""
    ptr = lambda a: 0 if a is None else int(a.data.ptr)  # noqa: E731
    rows = [[ptr(getattr(l, n).w) for n in PRODUCTS] + [ptr(getattr(l, n).sz) for n in PRODUCTS]
            + [ptr(l.ln1), ptr(l.ln2), ptr(l.bias), ptr(cache[i, 0]), ptr(cache[i, 1])] for i, l in enumerate(layers)]
    return xp.asarray(np.array(rows, np.uint64).reshape(len(layers), FIELDS))


@dataclass
class StepPlan:
    """The persistent step of one batch size: its kernel, grid and buffers (fixed addresses, as the CUDA graph
    captures them)."""
    kern: Any
    grid: int
    table: Any                     # uint64 [L, FIELDS]
    dims: Any                      # int32 [4 * 5]: per product N, K, blocks a row, row bytes, ksl
    qblock: int
    gpart: Any                     # float32: split-K partials
    gcnt: Any                      # int32: a counter a task and batch tile (left zero)
    bar: Any                       # uint32 [1]: the grid barrier's word (decode.cu grid_sync; never reset)
    splits: dict                   # product -> (KS, ksl)

    def launch(self, eng, st) -> None:
        i32 = np.int32
        self.kern((self.grid,), (WARPS * 32,), (
            self.table, i32(eng.num_layers), self.dims, i32(self.qblock), eng.w.embed, st.ids, eng.w.cos, eng.w.sin,
            st.seqlens, st.resid, st.q, st.attn, st.act, st.part_o, st.part_ml, st.counter, self.gpart, self.gcnt,
            self.bar, i32(st.batch), i32(eng.hidden), i32(eng.inter), i32(eng.num_heads), i32(eng.kv_heads),
            i32(eng.capacity), i32(eng.nsplit), np.float32(eng.eps), np.float32(eng.scale)))


def plan(eng, st, cp) -> StepPlan:
    """Compile (cached) and set up the persistent step for st's batch size on the engine's device; raises
    BadInputError where it does not fit (unfit) and DeviceError where the GPU cannot keep one block an SM."""
    from . import pdl as P
    from .engine import EPL, Plan, compiled, split_scratch
    from ..errors import DeviceError
    dev = cp.cuda.Device()
    why = unfit(eng.w.layers, eng.head_dim, eng.attention == "v2", int(dev.compute_capability))
    if why:
        raise BadInputError(f"the persistent step cannot run this decoder: {why}; use step='kernels'")
    blocks = int(dev.attributes["MultiProcessorCount"])
    layer = eng.w.layers[0]
    prods = {n: getattr(layer, n) for n in PRODUCTS}
    splits = {n: split(p.n // 16, -(-p.k // (4 * EPL[p.fmt])), st.batch, blocks) for n, p in prods.items()}
    opts = options(eng.head_dim, eng.num_heads // eng.kv_heads, eng.chunk, layer.qkv.fmt,
                   {n: ks for n, (ks, _) in splits.items()})
    fn = compiled(opts).get_function("step_layers")
    try:
        fits = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, WARPS * 32, 0)
    except (AttributeError, TypeError):  # a CuPy without the occupancy call: the cooperative launch checks it
        fits = 1
    if fits < 1:
        raise DeviceError("the persistent step's block does not fit an SM on this GPU; use step='kernels'")
    dims = np.array([[p.n, p.k, p.kb, p.row_bytes, splits[n][1]] for n, p in prods.items()], np.int32)
    gpart, gcnt = split_scratch(cp, [(p, Plan(n, 16, splits[n][0], 8, splits[n][1])) for n, p in prods.items()],
                                st.batch)               # 16-row tasks (gemv3), as the kernel-a-phase GEMVs' buffers
    return StepPlan(kern=P.PdlKernel(fn, cp, pdl=eng.pdl, cooperative=True), grid=blocks,
                    table=table(cp, eng.w.layers, st.cache), dims=cp.asarray(dims.reshape(-1)),
                    qblock=int(layer.qkv.block), gpart=gpart, gcnt=gcnt, bar=cp.zeros(1, cp.uint32), splits=splits)
