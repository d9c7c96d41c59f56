"""Encoder fusion on the CPU (issue 17.4): the real MiniLM classifier bundle fused and unfused, FP32 and INT8, and
Paddle Inference CPU, on the labelled dev split in one run.

Method: the split is tokenized once into the classifier's length-sorted batches (batch 32); every configuration runs
exactly these batches. The onnxruntime configurations are timed interleaved (pass r of each configuration runs
before pass r+1 of any) so load from other processes on the host falls on all of them alike; ms/sample is the
median over passes of (pass time / samples). Paddle Inference runs one pass of the same batches in its worker
process after each round (same thread count, its own warm-up), so it is interleaved at the pass level too.
Accuracy is on the examples run (the whole split unless --limit). The products floor of each graph
(`gemm_floor.Floor`: its matrix products alone, as standalone onnxruntime operators on the same batch shapes) is timed
interleaved with the configurations; with its FLOP count it gives GFLOP/s per row and, per target, the best ratio the
graph can reach with these kernels (the peer's time over the floor's).

`python -m paddle2ort.benchmarks.encoder --zoo ZOO_DIR --work DIR --out benchmarks/results/encoder/cpu.json`
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from paddle2ort.runtime.files import atomic_open
from paddle2ort.runtime.pipelines import TextClassifier
from paddle2ort.runtime.session import SessionOptions
from paddle2ort.runtime.timing import median_ms, warmup_order

from .classifier import make_batches
from .dataset import LabelledSplit, load_split
from .env import cpu_info, environment, usable_cores
from .gemm_floor import PEAK_SHAPE

log = logging.getLogger(__name__)

VARIANTS = ("fused", "fused-noskip", "unfused")   # fused-noskip: without the offline SkipLayerNorm
# what each variant fuses in its FP32 and INT8 graphs (the bundle default, FusionConfig(), is FP32 fused-noskip
# and INT8 unfused: the fastest of each in cpu.json)
PRECISIONS = ("fp32", "int8")


def build_bundles(zoo_dir: Path, work: Path, variants: tuple[str, ...] = VARIANTS) -> dict[str, Path]:
    """The demo's classifier conversion (FP32 + INT8, gated on dev tweets) with and without the fusion pass."""
    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.convert.api import tokenizer_files
    from paddle2ort.convert.fusion import NO_SKIP, FusionConfig, OrtFusionOptions
    from paddle2ort.convert.precision import Int8Options
    from paddle2ort.convert.validate import thresholds_with_overrides

    from .demo import INT8_GROSS_BOUNDS, dev_samples

    meta = json.loads((zoo_dir / "zoo.json").read_text())
    tokenizer, extra_files = tokenizer_files(zoo_dir / "tokenizer", meta["max_seq_length"])
    samples = dev_samples(zoo_dir, work / "samples.npz")
    full = OrtFusionOptions()
    FUSION = {"fused": FusionConfig(fp32=full, int8=full), "fused-noskip": FusionConfig(fp32=NO_SKIP, int8=NO_SKIP),
              "unfused": FusionConfig()}
    out = {}
    for variant in variants:
        dest = work / variant
        if not (dest / "manifest.json").is_file():
            convert(ConvertConfig(source=zoo_dir / "model", output=dest, precisions=PRECISIONS, overwrite=True,
                                  name=f"minilm-sentiment-{variant}", task="text-classification",
                                  labels=tuple(meta["labels"]), output_names=tuple(meta["output_names"]),
                                  tokenizer=tokenizer, extra_files=extra_files, inputs_npz=samples,
                                  thresholds=thresholds_with_overrides(INT8_GROSS_BOUNDS),
                                  int8=Int8Options(per_channel=True), fuse=variant != "unfused",
                                  fusion=FUSION[variant]))
        out[variant] = dest
    return out


def interleaved_passes(runs: dict, feeds: list, warmup: int, repeats: int, peer=None) -> tuple[dict, dict, list]:
    """Per configuration: pass times (s) and the outputs of its last pass; passes interleaved across configs.
    `peer()`: one Paddle Inference pass in its worker (its own warm-up), run after each round of passes."""
    for run in runs.values():
        for b in warmup_order(len(feeds), warmup):
            run(feeds[b])
    times = {k: [] for k in runs}
    outs = {k: [None] * len(feeds) for k in runs}
    peer_passes = []
    for _ in range(repeats):
        for k, run in runs.items():
            t0 = time.perf_counter()
            for b, f in enumerate(feeds):
                outs[k][b] = run(f)
            times[k].append(time.perf_counter() - t0)
        if peer is not None:
            peer_passes.append(peer())
    return times, outs, peer_passes


def _accuracy(data: LabelledSplit, idx: list, outs: list) -> tuple[float, np.ndarray]:
    pred = np.zeros(len(data.texts), np.int64)
    for i, o in zip(idx, outs):
        pred[i] = np.asarray(o).argmax(-1)
    return float((pred == np.asarray(data.labels)).mean()), pred


# onnxruntime CPU session settings compared: "default" = onnxruntime's defaults (spinning on, every optimizer), and
# "tuned" = no intra-op spinning and no load-time SkipLayerNormFusion (its CPU SkipLayerNormalization kernel measured
# slower than LayerNorm + Add on the 2-core EPYC); "tuned" is what TextClassifier now uses on the CPU by default
SESSION_SETTINGS = {"default": {"intra_op_spinning": True},
                    "tuned": {"intra_op_spinning": False, "disabled_optimizers": ("SkipLayerNormFusion",)}}


FLOOR = "products-floor"      # the runs key of a graph's products floor (gemm_floor.Floor)


def floors_for(clfs: dict, feeds: list, threads: int, skipped: dict | None = None) -> dict:
    """{(variant, precision): the products floor of that classifier's graph}, its inputs drawn for `feeds`; a graph
    holding a product gemm_floor does not model gets none (the reason in `skipped`, a warning)."""
    from .gemm_floor import Floor, FloorError
    out = {}
    for (v, p), clf in {k[:2]: c for k, c in clfs.items()}.items():      # one floor a graph, whatever its sessions
        try:
            out[(v, p)] = Floor(clf.bundle.model_path(p), threads)
        except FloorError as e:
            log.warning("products floor of %s %s left out: %s", v, p, e)
            if skipped is not None:
                skipped[f"{v}:{p}"] = str(e)
            continue
        out[(v, p)].prepare(feeds)
    return out


def _name(v: str, p: str, setting: str) -> str:
    return f"{p.upper()}-CPU {v}" + ("" if setting == "default" else f" {setting}")


def run(zoo_dir: Path, work: Path, warmup: int = 8, repeats: int = 5, threads: int = 0,
        limit: int | None = None, peer: bool = True, variants: tuple[str, ...] = ("fused", "unfused"),
        pairs: tuple[tuple[str, str], ...] | None = None, settings: tuple[str, ...] = ("default",),
        peer_extra_threads: tuple[int, ...] = (1,), floor: bool = True) -> dict:
    """`pairs`: (variant, precision) configurations (default: every variant x precision); `settings`: keys of
    SESSION_SETTINGS, each configuration run with each."""
    pairs = pairs or tuple((v, p) for v in variants for p in PRECISIONS)
    variants = tuple(dict.fromkeys(v for v, _ in pairs))
    bundles = build_bundles(zoo_dir, work, variants)
    threads = threads or usable_cores()
    data = load_split(zoo_dir / "dataset", "dev")
    if limit:
        data = LabelledSplit(data.name, data.texts[:limit], data.labels[:limit], data.label_names)
    clfs = {(v, p, st): TextClassifier(bundles[v], precision=p, batch_size=32, session=SessionOptions(
        device="cpu", intra_op_threads=threads, **SESSION_SETTINGS[st])) for v, p in pairs for st in settings}
    idx, feeds = make_batches(next(iter(clfs.values())), data)
    runs = {k: (lambda f, c=c: c.logits(f)) for k, c in clfs.items()}
    floor_skipped: dict = {}
    floors = floors_for(clfs, feeds, threads, floor_skipped) if floor else {}
    runs.update({(v, p, FLOOR): fl.run for (v, p), fl in floors.items()})
    log.info("%d dev examples in %d batches; %d configurations interleaved, %d passes, %d threads",
             len(data.texts), len(feeds), len(runs), repeats, threads)
    peer_run = None
    if peer:
        from paddle2ort.convert.peer import paddle_inference_bench
        from paddle2ort.convert.source import locate
        src = locate(zoo_dir / "model")
        # Paddle's deployment setting (`threads` math threads) and, to check that is its best on this host, 1 thread
        peer_threads = tuple(dict.fromkeys((threads, *peer_extra_threads)))
        peer_run = lambda: {t: paddle_inference_bench(src, feeds, warmup, 1, t) for t in peer_threads}  # noqa: E731
    load = {"start": list(os.getloadavg())}      # other processes on the host: the run's noise, recorded
    peaks = _peaks(threads) if floor else []
    times, outs, peer_passes = interleaved_passes(runs, feeds, warmup, repeats, peer_run)
    peaks += _peaks(threads) if floor else []
    load["end"] = list(os.getloadavg())
    rows, preds = [], {}
    ms = lambda t: float(np.median(t)) / len(data.texts) * 1e3     # noqa: E731
    floor_rows = {}
    for (v, p), fl in floors.items():
        gflop = fl.gflop(feeds)
        t = times.pop((v, p, FLOOR))
        floor_rows[(v, p)] = {
            "name": f"{p.upper()}-CPU {v} products floor", "system": "products-floor", "variant": v, "precision": p,
            "ms_per_sample": ms(t), "pass_times_s": t, "gflop_per_pass": gflop,
            "gflop_per_s": gflop / float(np.median(t)), **fl.summary()}
    # Paddle's FLOPs: those of our FP32 graph where it does the same math (not where the first-row pass pruned it)
    paddle_gflop = next((f["gflop_per_pass"] for (v, p), f in floor_rows.items() if p == "fp32" and "fp32" not in
                         clfs[(v, p, settings[0])].bundle.manifest.extra.get("last_layer_first_row", ())), None)
    for (v, p, st), t in times.items():
        acc, preds[(v, p, st)] = _accuracy(data, idx, outs[(v, p, st)])
        rows.append({"name": _name(v, p, st), "system": "onnxruntime", "variant": v, "precision": p,
                     "session": st, "session_options": {k: v if not isinstance(v, tuple) else list(v)
                                                       for k, v in SESSION_SETTINGS[st].items()}, "accuracy": acc,
                     "ms_per_sample": ms(t), "pass_times_s": t,
                     "fusions": clfs[(v, p, st)].bundle.manifest.extra.get("fusions", {}).get(p, {})})
        if (v, p) in floor_rows:
            rows[-1]["gflop_per_s"] = floor_rows[(v, p)]["gflop_per_pass"] / float(np.median(t))
    rows += floor_rows.values()
    ref_key = next(k for k in preds if k[1] == "fp32")
    for r in rows:
        if r["system"] != "onnxruntime":
            continue
        agree = float((preds[(r["variant"], r["precision"], r["session"])] == preds[ref_key]).mean())
        r["argmax_agreement_vs_fp32"] = agree
    versions = {}
    for t in (peer_passes[-1] if peer_passes else {}):
        info, pouts = peer_passes[-1][t]
        acc, _ = _accuracy(data, idx, pouts)
        passes = [sum(p[t][0]["times"][0]) for p in peer_passes]
        rows.append({"name": "Paddle-Inference-CPU" + ("" if t == threads else f" {t} thread{'s' * (t > 1)}"),
                     "system": "paddle-inference", "variant": "-", "precision": "fp32",
                     "accuracy": acc, "ms_per_sample": float(np.median(passes)) / len(data.texts) * 1e3,
                     "pass_times_s": passes, "notes": {k: info[k] for k in ("onednn", "ir_optim", "threads")}})
        if paddle_gflop is not None:
            rows[-1]["gflop_per_s"] = paddle_gflop / float(np.median(passes))
        versions["paddlepaddle"] = info["paddle_version"]
    env = environment()
    env["versions"].update(versions)
    env["load_average"] = {**load, "note": "os.getloadavg() (1, 5, 15 min) before and after the timed passes"}
    env["cpu_simd_flags"] = cpu_info(threads)["isa"]
    return {"benchmark": "encoder-cpu",
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": __doc__.split("Method: ")[1].split("\n\n")[0].replace("\n", " "),
            "dataset": {"split": "dev", "samples": len(data.texts), "limit": limit,
                        "batching": "TextClassifier.batches: sorted by token count, each batch padded to its longest",
                        "tokens": int(sum(f["attention_mask"].sum() for f in feeds)),
                        "positions_run": int(sum(f["attention_mask"].size for f in feeds))},
            "config": {"warmup": warmup, "repeats": repeats, "threads": threads, "batch_size": 32,
                       "agreement_reference": _name(*ref_key)},
            "environment": env, "rows": rows,
            **({"floor_skipped": floor_skipped} if floor_skipped else {}),
            **({"peaks": {"shape_mkn": list(PEAK_SHAPE), "before_and_after_the_passes": peaks,
                          "note": "GFLOP/s of one large product per op (gemm_floor.peak), timed before and after "
                                  "the passes; the best of the two is the host's rate"}} if floor else {})}


def _peaks(threads: int) -> list[dict]:
    from .gemm_floor import peak
    return [{"MatMul": peak(threads), "MatMulInteger": peak(threads, "MatMulInteger")}]


def rows_table(res: dict) -> str:
    """The rows as a Markdown table (the results README embeds it through verdicts.TABLES); a GFLOP/s column where
    the run timed the products floor."""
    gf = any("gflop_per_s" in r for r in res["rows"])
    lines = ["| configuration | fused | accuracy | ms/sample | vs unfused |" + (" GFLOP/s |" if gf else "")
             + " passes (s) |", "|---|---|---|---|---|" + ("---|" if gf else "") + "---|"]
    base = {(r["precision"], r.get("session")): r["ms_per_sample"] for r in res["rows"]
            if r.get("variant") == "unfused" and r["system"] == "onnxruntime"}
    for r in res["rows"]:
        fus = ", ".join(f"{k} {v}" for k, v in r.get("fusions", {}).items()) or "-"
        b = base.get((r["precision"], r.get("session")))
        vs = f"{b / r['ms_per_sample']:.2f}x" if r["system"] == "onnxruntime" and b else "-"
        acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "-"
        flops = (f" {r['gflop_per_s']:.0f} |" if "gflop_per_s" in r else " - |") if gf else ""
        lines.append(f"| {r['name']} | {fus} | {acc} | {r['ms_per_sample']:.3f} | {vs} |{flops} "
                     f"{', '.join(f'{t:.1f}' for t in r['pass_times_s'])} |")
    return "\n".join(lines)


def ceilings(res: dict, session: str = "tuned") -> list[dict]:
    """Issue 17.4's two CPU ratios against what the graphs' products alone allow: measured (ours with `session`)
    and ceiling (the peer's time over our products floor: every operator but the products free)."""
    rows = res["rows"]
    floor = {r["precision"]: r for r in rows if r["system"] == "products-floor"}
    ours = {r["precision"]: r for r in rows if r["system"] == "onnxruntime" and r.get("session") == session}
    paddle = [r for r in rows if r["system"] == "paddle-inference"]
    out = []
    if "fp32" in floor and "fp32" in ours and paddle:
        best = min(paddle, key=lambda r: r["ms_per_sample"])
        out.append({"ratio": "FP32 vs Paddle Inference", "wanted": 1.3,
                    "measured": best["ms_per_sample"] / ours["fp32"]["ms_per_sample"],
                    "ceiling": best["ms_per_sample"] / floor["fp32"]["ms_per_sample"],
                    "floor_share": floor["fp32"]["ms_per_sample"] / ours["fp32"]["ms_per_sample"],
                    "floor": floor["fp32"]["name"], "peer": best["name"],
                    "floor_vs_peak": _vs_peak(res, floor["fp32"], "MatMul")})
    if {"fp32", "int8"} <= floor.keys() & ours.keys():
        out.append({"ratio": "INT8 vs FP32", "wanted": 1.8,
                    "measured": ours["fp32"]["ms_per_sample"] / ours["int8"]["ms_per_sample"],
                    "ceiling": ours["fp32"]["ms_per_sample"] / floor["int8"]["ms_per_sample"],
                    "floor_share": floor["int8"]["ms_per_sample"] / ours["int8"]["ms_per_sample"],
                    "floor": floor["int8"]["name"], "peer": ours["fp32"]["name"],
                    "floor_vs_peak": _vs_peak(res, floor["int8"], "MatMulInteger")})
    return out


def _vs_peak(res: dict, floor: dict, op: str) -> float | None:
    """The floor's rate over the host's large-product rate for its weight op (the best of the run's two timings);
    the INT8 floor mixes float32 attention products in, so its figure is a blend."""
    peaks = [p[op] for p in res.get("peaks", {}).get("before_and_after_the_passes", [])]
    return floor["gflop_per_s"] / max(peaks) if peaks else None


def ceiling_table(res: dict) -> str:
    """`ceilings` as Markdown: a ceiling under the wanted ratio means the target needs faster products than these
    kernels give on this host, not less overhead around them."""
    m, k, n = res.get("peaks", {}).get("shape_mkn", PEAK_SHAPE)
    lines = ["| ratio | wanted | measured | ceiling (products alone) | products' share of ours | products' rate vs one "
             f"{m}x{k}x{n} product | reachable with these kernels |", "|---|---|---|---|---|---|---|"]
    for c in ceilings(res):
        vs = f"{100 * c['floor_vs_peak']:.0f}%" if c.get("floor_vs_peak") else "-"
        lines.append(f"| {c['ratio']} | {c['wanted']:.2f}x | {c['measured']:.2f}x | {c['ceiling']:.2f}x | "
                     f"{100 * c['floor_share']:.0f}% | {vs} | {'yes' if c['ceiling'] >= c['wanted'] else '**no**'} |")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    env = res["environment"]
    load = env.get("load_average")
    loaded = (f"load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end"
              if load and "start" in load and "end" in load else "load not recorded")
    return "\n".join([f"# Encoder fusion on the CPU ({res['config']['threads']} threads, {env['cpu']})",
                      "", f"{res['dataset']['samples']} dev examples, batch 32, median of {res['config']['repeats']} "
                      f"passes, configurations interleaved; {loaded} (compare rows of one run, not absolute "
                      "figures).", "", rows_table(res), ""]
                     + (["Against the products floor (ours with the classifier's CPU session):", "",
                         ceiling_table(res), ""] if ceilings(res) else []))


def plot(res: dict, dst: Path) -> bool:
    """ms/sample per configuration (Paddle Inference in orange, the products floors in grey), with the pass times as
    dots."""
    from .report import pyplot
    plt = pyplot()
    if plt is None:
        return False
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y, [r["ms_per_sample"] for r in rows],
            color=[{"onnxruntime": "#4c72b0", "products-floor": "#999999"}.get(r["system"], "#dd8452") for r in rows])
    for i, r in enumerate(rows):
        ax.plot([t / res["dataset"]["samples"] * 1e3 for t in r["pass_times_s"]], [i] * len(r["pass_times_s"]),
                "k.", ms=4)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per sample (median of passes; dots: each pass; lower is better)")
    ax.set_title(f"MiniLM classifier on the CPU ({res['config']['threads']} threads, {res['environment']['cpu']}, "
                 f"{res['dataset']['samples']} dev examples)", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ GPU (issue 17.2/17.3, partial)
def write_skeleton(fp32_model: Path, dst: Path) -> None:
    """FP16 copy of a converted FP32 graph with its large weights left out (`fill_random_weights` restores them on
    the GPU host). The GPU run's skeletons: the MiniLM-L6-geometry classifier (tests/paddle_models.py's
    bert_classifier architecture at hidden 384, 6 layers, 12 heads) converted with and without fusion."""
    import tempfile

    import onnx

    from paddle2ort.convert.precision import to_fp16
    with tempfile.TemporaryDirectory() as tmp:
        half = Path(tmp) / "half.onnx"
        to_fp16(fp32_model, half)
        onnx.save(onnx.load(str(half)), str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dst.stem + ".weights", size_threshold=4096)
    (dst.parent / (dst.stem + ".weights")).unlink()


def fill_random_weights(src: Path, dst: Path, seed: int = 0) -> None:
    """A graph saved without its large weights (external data left behind) -> the same graph with N(0, 0.02)
    weights: the timing does not depend on the values, and 64 MiB is all that travels to the lent GPU."""
    import onnx
    from onnx import external_data_helper, helper
    m = onnx.load(str(src), load_external_data=False)
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        if external_data_helper.uses_external_data(t):
            arr = (rng.standard_normal(list(t.dims)) * 0.02).astype(helper.tensor_dtype_to_np_dtype(t.data_type))
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = arr.tobytes()
    onnx.save(m, str(dst))


def gpu_run(skeletons: Path, batches=(1, 8, 32), seq: int = 128, torch_peers: bool = True) -> dict:
    """Ours (fused and unfused FP16; IO binding on a dynamic session vs a static bucket with a CUDA graph) and
    torch (eager, torch.compile default / reduce-overhead) at MiniLM-L6 geometry, batch x 128, random weights."""
    import onnxruntime as ort

    from paddle2ort.runtime.buckets import BucketRunner, BucketSpec
    from paddle2ort.runtime.session import create_session
    rows, checks = [], {}
    rng = np.random.default_rng(1)
    work = Path("/tmp/encoder-gpu")
    work.mkdir(exist_ok=True)
    opts = SessionOptions(device="gpu")
    for skel in sorted(skeletons.glob("*.onnx")):
        model = work / skel.name
        fill_random_weights(skel, model)
        sess = create_session(model, opts)
        out = sess.get_outputs()[0].name
        buckets = BucketRunner(model, [out], opts, BucketSpec((seq,), tuple(batches)))
        for b in batches:
            ids = rng.integers(1000, 30000, (b, seq)).astype(np.int64)
            mask = np.ones_like(ids)
            mask[b // 2:, seq // 2:] = 0
            feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}
            binding = sess.io_binding()
            for k, v in feeds.items():
                binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0))
            binding.bind_output(out, "cuda", 0)
            sess.run_with_iobinding(binding)
            ref = binding.copy_outputs_to_cpu()[0]
            got = buckets(feeds)[0]                       # fills the bucket's bound buffers, captures the graph
            checks[f"{skel.stem} b{b}"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))
            rows.append({"system": f"ours {skel.stem} IO binding", "batch": b, "seq": seq,
                         "ms": median_ms(lambda: sess.run_with_iobinding(binding))})
            rows.append({"system": f"ours {skel.stem} CUDA graph bucket", "batch": b, "seq": seq,
                         "ms": median_ms(lambda: buckets.run_bound(b, seq)),
                         "cuda_graph": buckets.cuda_graph})
            log.info("%s", rows[-2:])
    if torch_peers:
        import torch
        from transformers import BertConfig, BertModel
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)
        net = BertModel(cfg).half().cuda().eval()
        for mode in ("eager", "default", "reduce-overhead"):
            fn = net if mode == "eager" else torch.compile(net, mode=mode)
            for b in batches:
                if mode != "eager" and b != 32:
                    continue
                ids = torch.randint(1000, 30000, (b, seq), device="cuda")
                mask = torch.ones_like(ids)
                mask[b // 2:, seq // 2:] = 0
                with torch.inference_mode():
                    ms = median_ms(lambda: fn(input_ids=ids, attention_mask=mask), sync=torch.cuda.synchronize)
                rows.append({"system": f"torch {mode} fp16", "batch": b, "seq": seq, "ms": ms})
                log.info("%s", rows[-1])
    env = environment()
    return {"benchmark": "encoder-gpu", "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "geometry": "MiniLM-L6 (6 layers, hidden 384, 12 heads), random weights, FP16, median of 50",
            "environment": env, "rows": rows, "max_rel_diff_cuda_graph_vs_io_binding": checks}


def gpu_table(res: dict) -> str:
    """The GPU rows as Markdown, with each row's speed relative to torch.compile reduce-overhead at batch 32."""
    peer = next((r["ms"] for r in res["rows"] if r["system"] == "torch reduce-overhead fp16" and r["batch"] == 32),
                None)
    lines = ["| system | batch x seq | ms / batch | reduce-overhead / this (batch 32) |", "|---|---|---|---|"]
    for r in res["rows"]:
        rel = f"{peer / r['ms']:.2f}x" if peer and r["batch"] == 32 else "-"
        lines.append(f"| {r['system']} | {r['batch']} x {r['seq']} | {r['ms']:.3f} | {rel} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        import sys
        argv = sys.argv[1:]
    if argv[:1] == ["gpu"]:
        ap = argparse.ArgumentParser(description="GPU part")
        ap.add_argument("skeletons", type=Path)
        ap.add_argument("--out", type=Path, required=True)
        ap.add_argument("--no-torch", action="store_true")
        a = ap.parse_args(argv[1:])
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        res = gpu_run(a.skeletons, torch_peers=not a.no_torch)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res["rows"], indent=0), json.dumps(res["max_rel_diff_cuda_graph_vs_io_binding"]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, required=True, help="`paddle2ort zoo build minilm-sentiment` output")
    ap.add_argument("--work", type=Path, required=True, help="where the two bundles are built (reused)")
    ap.add_argument("--out", type=Path, required=True, help="results JSON (a .md is written beside it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="skip the products floor (gemm_floor) of each graph")
    ap.add_argument("--variants", default="fused,unfused", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--pairs", default=None, help="comma-separated VARIANT:PRECISION (instead of --variants)")
    ap.add_argument("--settings", default="default", help=f"comma-separated of {', '.join(SESSION_SETTINGS)}")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a.work.mkdir(parents=True, exist_ok=True)
    res = run(a.zoo, a.work, a.warmup, a.repeats, limit=a.limit, peer=not a.no_peer,
              variants=tuple(a.variants.split(",")),
              pairs=tuple(tuple(x.split(":")) for x in a.pairs.split(",")) if a.pairs else None,
              settings=tuple(a.settings.split(",")), floor=not a.no_floor)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(a.out) as f:
        f.write(json.dumps(res, indent=1))
    with atomic_open(a.out.with_suffix(".md")) as f:
        f.write(markdown(res))
    plot(res, a.out.with_suffix(".png"))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
