"""Exploratory (issue 14): could our own CPU kernel read a decode step's int8 weights faster than onnxruntime's
MatMulNBits? `cpu_kernels/gemv_q8.c` (int8 x int8 dot products a block of 32 with float32 scales, ggml Q8_0's math;
AVX-512 VNNI, AVX2 or scalar by what the compiler targets, OpenMP over rows) is built with the host's C compiler,
checked against its NumPy twin on every shape, then timed in one process, interleaved, against:
  - the bundle's fused int8 decoder's weight products alone (gemm_floor, MatMulNBits, GroupQueryAttention left out),
  - one read of a buffer as large as the step's weights (the host's read bandwidth, the roofline).
Our kernel runs on random weights of the graph's shapes (the time of a bandwidth-bound product does not depend on
the values). A measurement for planning, not a runtime path: the runtime does not assume a C compiler.

`python -m paddle2ort.benchmarks.cpu_gemv BUNDLE --threads 2 --out DIR`
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
QK = 32
SOURCE = Path(__file__).parent / "cpu_kernels" / "gemv_q8.c"


class CompilerMissing(RuntimeError):
    pass


def build(dst: Path, march: str = "native") -> ctypes.CDLL:
    """Compile gemv_q8.c for `march` (native: this host's ISA; x86-64-v3: AVX2 without VNNI; x86-64: scalar) into
    dst and load it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise CompilerMissing("no C compiler (cc or gcc) on PATH: this exploratory benchmark builds its kernel")
    lib = dst / f"libgemv_q8-{march}.so"
    subprocess.run([cc, "-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    so = ctypes.CDLL(str(lib))
    p = ctypes.c_void_p
    so.gemv_q8.argtypes = [p, p, p, p, ctypes.c_int, ctypes.c_int, p]
    so.quantize_q8.argtypes = [p, ctypes.c_int, p, p]
    so.gemv_q8_chain.argtypes = [ctypes.c_int] + [p] * 8
    so.gemv_q8_isa.restype = ctypes.c_char_p
    return so


class Chain:
    """The step's products in one call of gemv_q8_chain (one OpenMP parallel region): the pointer arrays built
    once."""

    def __init__(self, so, mats: list, xs: dict):
        self.so, self.mats = so, mats
        arr = lambda ctype, vals: (ctype * len(vals))(*vals)     # noqa: E731
        vp = ctypes.c_void_p
        self.args = [len(mats), arr(vp, [_ptr(m.w) for m in mats]), arr(vp, [_ptr(m.sw) for m in mats]),
                     arr(vp, [_ptr(xs[m.k]) for m in mats]), arr(vp, [_ptr(m.xq) for m in mats]),
                     arr(vp, [_ptr(m.sx) for m in mats]), arr(ctypes.c_int, [m.n for m in mats]),
                     arr(ctypes.c_int, [m.k for m in mats]), arr(vp, [_ptr(m.y) for m in mats])]

    def __call__(self) -> None:
        self.so.gemv_q8_chain(*self.args)


def quantize_twin(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = x.reshape(-1, QK).astype(np.float32)
    s = np.abs(b).max(1) / np.float32(127)
    inv = np.where(s > 0, 1 / np.where(s > 0, s, 1), 0).astype(np.float32)
    return np.rint(b * inv[:, None]).astype(np.int8).reshape(-1), s.astype(np.float32)


def gemv_twin(w: np.ndarray, sw: np.ndarray, xq: np.ndarray, sx: np.ndarray) -> np.ndarray:
    n, k = w.shape
    dots = (w.reshape(n, k // QK, QK).astype(np.int64) * xq.reshape(1, k // QK, QK)).sum(-1)   # exact integers
    return (dots.astype(np.float64) * sw.astype(np.float64) * sx.astype(np.float64)).sum(1)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class Q8:
    """One weight matrix in the kernel's format, with its buffers for x and y."""

    def __init__(self, so, k: int, n: int, rng):
        self.so, self.k, self.n = so, k, n
        self.w = rng.integers(-127, 128, (n, k), dtype=np.int8)
        self.sw = (rng.random((n, k // QK), dtype=np.float32) * 0.01 + 1e-3).astype(np.float32)
        self.xq, self.sx = np.zeros(k, np.int8), np.zeros(k // QK, np.float32)
        self.y = np.zeros(n, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.so.quantize_q8(_ptr(x), self.k, _ptr(self.xq), _ptr(self.sx))
        self.so.gemv_q8(_ptr(self.w), _ptr(self.sw), _ptr(self.xq), _ptr(self.sx), self.n, self.k, _ptr(self.y))
        return self.y

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + self.sw.nbytes


def check_chain(chain: Chain, mats: list, xs: dict) -> None:
    """The one-region step computes exactly what the per-call kernel does, product by product."""
    want = [m(xs[m.k]).copy() for m in mats]
    for m in mats:
        m.y[:] = 0
    chain()
    for i, (m, w) in enumerate(zip(mats, want)):
        if not np.array_equal(m.y, w):
            raise AssertionError(f"gemv_q8_chain product {i} ({m.k}x{m.n}) differs from gemv_q8")


def validate(so, shapes, rng) -> float:
    """Every distinct (K, N) against the twin (quantization and the product); the worst error over |y|'s scale."""
    worst = 0.0
    for k, n in sorted(set(shapes)):
        m = Q8(so, k, n, rng)
        x = rng.standard_normal(k).astype(np.float32)
        y = m(x).astype(np.float64)
        xq, sx = quantize_twin(x)
        np.testing.assert_array_equal(m.xq, xq)
        np.testing.assert_allclose(m.sx, sx, rtol=1e-6)
        want = gemv_twin(m.w, m.sw, xq, sx)
        err = float(np.abs(y - want).max() / max(np.abs(want).max(), 1e-30))
        if err > 1e-5:
            raise AssertionError(f"gemv_q8 {k}x{n}: relative error {err:.2e} against the twin")
        worst = max(worst, err)
    return worst


def shape_rates(so, shapes, rng, budget_bytes: int = 200_000_000, calls: int = 200) -> list[dict]:
    """Per distinct (K, N): our kernel's time a call (quantization included) rotating over enough copies that the
    weights come from memory, not cache, and its GB/s: a large product shows the kernel's rate, a small one the
    per-call cost (ctypes, OpenMP's fork and join) that an engine running the whole step in one parallel region
    would not pay."""
    out = []
    for k, n in sorted(set(shapes), key=lambda s: s[0] * s[1]):
        copies = max(2, min(40, budget_bytes // (k * n)))
        mats = [Q8(so, k, n, rng) for _ in range(copies)]
        x = rng.standard_normal(k).astype(np.float32)
        reps = max(copies, min(calls, 20 * budget_bytes // (k * n * 40)))
        for r in range(reps):                     # warm-up: OpenMP's threads awake, pages touched
            mats[r % copies](x)
        t0 = time.perf_counter()
        for r in range(reps):
            mats[r % copies](x)
        dt = (time.perf_counter() - t0) / reps
        out.append({"k": k, "n": n, "count": shapes.count((k, n)), "us_per_call": dt * 1e6,
                    "gb_per_s": mats[0].nbytes / dt / 1e9})
    return out


def read_bandwidth(nbytes: int, threads: int, runs: int = 10) -> float:
    """GB/s of numpy reading a buffer of `nbytes` (a sum over int64 views, split over `threads` numpy threads via
    concurrent.futures: numpy releases the GIL in reductions)."""
    from concurrent.futures import ThreadPoolExecutor
    from paddle2ort.runtime.timing import median_ms
    buf = np.ones(nbytes // 8, np.int64)
    parts = np.array_split(buf, threads)
    with ThreadPoolExecutor(threads) as ex:
        ms = median_ms(lambda: list(ex.map(np.sum, parts)), warmup=2, n=runs)
    return nbytes / ms / 1e6


def run(bundle: Path, threads: int, steps: int = 30, rounds: int = 5, seed: int = 0) -> dict:
    import os
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))   # read when the library's OpenMP runtime starts
    from paddle2ort.runtime.llm import fused_model
    from paddle2ort.runtime.manifest import load_bundle

    from paddle2ort.runtime.timing import median_ms

    from .env import cpu_info, environment
    from .gemm_floor import Floor
    path, _ = fused_model(load_bundle(bundle), "int8")
    floor = Floor(path, threads, skip=("GroupQueryAttention",))
    shapes = [(p.b_dims[0], p.b_dims[1]) for p in floor.products]
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        so = build(Path(d))
        isa = so.gemv_q8_isa().decode()
        worst = validate(so, shapes, rng)
        mats = [Q8(so, k, n, rng) for k, n in shapes]
        xs = {k: rng.standard_normal(k).astype(np.float32) for k, _ in shapes}
        ours_bytes = sum(m.nbytes for m in mats)
        feed = {"ids": np.zeros((1, 1), np.int64)}

        def ours():
            for m in mats:
                m(xs[m.k])
        chain = Chain(so, mats, xs)
        check_chain(chain, mats, xs)

        def theirs():
            floor.run(feed)
        times = {"ours": [], "ours, one parallel region": [], "MatMulNBits": []}
        for r in range(rounds):                  # round-robin; each round's step median (5 warm-up steps first)
            for name, f in (("ours", ours), ("ours, one parallel region", chain), ("MatMulNBits", theirs)):
                times[name].append(median_ms(f, warmup=5 if r == 0 else 0, n=steps))
        per_shape = shape_rates(so, shapes, rng)
        bw = read_bandwidth(ours_bytes, threads)
    ms = {k: float(np.median(v)) for k, v in times.items()}
    nbits_bytes = sum(t.ByteSize() for t in floor.model.graph.initializer)
    return {"benchmark": "cpu-gemv-q8", "bundle": str(bundle), "threads": threads, "isa": isa,
            "products": len(shapes), "validation_worst_rel_error": worst,
            "ms_per_step": ms, "round_medians_ms": times,
            "weight_bytes": {"ours": ours_bytes, "MatMulNBits": nbits_bytes},
            "gb_per_s": {**{k: ours_bytes / v / 1e6 for k, v in ms.items() if k != "MatMulNBits"},
                         "MatMulNBits": nbits_bytes / ms["MatMulNBits"] / 1e6},
            "read_bandwidth_gb_per_s": bw, "ours_vs_MatMulNBits": ms["MatMulNBits"] / ms["ours"],
            "per_shape": per_shape,
            "method": __doc__.split("\n\n")[0].replace("\n", " "), "cpu": cpu_info(threads),
            "environment": environment()}


def markdown(res: dict) -> str:
    ms, gb = res["ms_per_step"], res["gb_per_s"]
    lines = [f"# int8 GEMV, ours vs MatMulNBits ({res['threads']} threads, {res['cpu']['model']}, {res['isa']})", "",
             f"One decode step's {res['products']} weight products as calls, median of "
             f"{len(res['round_medians_ms']['ours'])} interleaved rounds; read bandwidth "
             f"{res['read_bandwidth_gb_per_s']:.1f} GB/s; twin check worst relative error "
             f"{res['validation_worst_rel_error']:.1e}.", "",
             "| kernel | ms a step | GB/s |", "|---|---|---|",
             *(f"| {k} | {ms[k]:.2f} | {gb[k]:.1f} |" for k in ms), "",
             "Ours by shape (weights from memory, quantization included):", "",
             "| K x N | products a step | µs a call | GB/s |", "|---|---|---|---|",
             *(f"| {x['k']} x {x['n']} | {x['count']} | {x['us_per_call']:.1f} | {x['gb_per_s']:.1f} |"
               for x in res["per_shape"])]
    return "\n".join(lines) + "\n"


def plot(res: dict, dst: Path) -> bool:
    """Our kernel's GB/s by shape beside MatMulNBits' whole-step rate and the read bandwidth."""
    from .report import pyplot
    plt = pyplot()
    if plt is None:
        return False
    rows = res["per_shape"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(range(len(rows)), [x["gb_per_s"] for x in rows], color="#4c72b0", label="ours, by shape")
    ax.axhline(res["read_bandwidth_gb_per_s"], color="k", ls="--", lw=1, label="read bandwidth")
    ax.axhline(res["gb_per_s"]["MatMulNBits"], color="#dd8452", lw=1.5, label="MatMulNBits, whole step")
    ax.axhline(res["gb_per_s"]["ours"], color="#4c72b0", lw=1.5, ls=":", label="ours, whole step (calls)")
    if "ours, one parallel region" in res["gb_per_s"]:
        ax.axhline(res["gb_per_s"]["ours, one parallel region"], color="#55a868", lw=1.5,
                   label="ours, whole step (one parallel region)")
    ax.set_xticks(range(len(rows)), [f"{x['k']}x{x['n']}" for x in rows], fontsize=8)
    ax.set_ylabel("GB/s of weights read (higher is better)")
    ax.set_title(f"int8 GEMV, {res['threads']} threads, {res['isa']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="a SmolLM2-style bundle with a fused int8 decoder (convert-llm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    res = run(a.bundle, a.threads, rounds=a.rounds)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cpu-gemv.json").write_text(json.dumps(res, indent=1))
    (a.out / "cpu-gemv.md").write_text(markdown(res))
    plot(res, a.out / "cpu-gemv.png")
    print(json.dumps({k: res[k] for k in ("isa", "ms_per_step", "gb_per_s", "read_bandwidth_gb_per_s",
                                           "ours_vs_MatMulNBits", "validation_worst_rel_error", "per_shape")},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
