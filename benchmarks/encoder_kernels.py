"""Our kernel encoder (runtime/kernels/encoder.KernelEncoder: cuBLASLt epilogue GEMMs + encoder.cu, one CUDA graph
a shape) against PyTorch on the same weights, in one run (issue 17's GPU target, measured before the encoder is put
behind the bundle and the classifier).

Per geometry (MiniLM-L6, ERNIE-3.0-Medium, BERT-base): transformers' BertModel with its random initialisation
(N(0, 0.02)), FP16; our encoder gets the same weights (`weights_from_bert`). Parity first: the last hidden states of
both on the same right-padded rows (the GPU encoder table's rows: the second half of a batch padded from position
64), judged on the unpadded positions by the max and mean absolute difference over the range of torch's output (our
GELU is the tanh form, BertModel's the erf form). Then ms per batch of batch x 128 tokens, median of `--repeats`
calls after 10 warm-up: ours replaying its CUDA graph on inputs already in its buffers (as the ONNX rows of the GPU
encoder table do), torch eager and torch.compile(mode="reduce-overhead") (module call + synchronize).

    python -m paddle2ort.benchmarks.encoder_kernels run --out DIR     # there (GPU)
    python -m paddle2ort.benchmarks.encoder_kernels report DIR/kernel-encoder.json
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.kernels.encoder import AttentionConfig

from .encoder_gpu import BATCHES, GEOMETRIES, SEQ, _median_ms, _rows_mask, _torch_model, torch_row

log = logging.getLogger(__name__)

OURS = "ours kernel encoder fp16 CUDA graph"
OURS_AW8 = "ours kernel encoder fp16 CUDA graph, 8-warp attention blocks"
OURS_KB128 = "ours kernel encoder fp16 CUDA graph, 128-key attention steps"
OURS_TUNED = "ours kernel encoder fp16 CUDA graph, cuBLASLt algorithms timed alone (gemm_tune)"
OURS_KV2 = "ours kernel encoder fp16 CUDA graph, K/V loads overlapped (2 stages)"
OURS_KB32_B5 = "ours kernel encoder fp16 CUDA graph, 32-key attention steps, 5 blocks an SM (96 registers)"
OURS_KB32_B6 = "ours kernel encoder fp16 CUDA graph, 32-key attention steps, 6 blocks an SM (80 registers)"
VARIANTS = {OURS: {}, OURS_TUNED: {"gemm_tune": True}, OURS_AW8: {"attention": AttentionConfig(warps=8)},
            OURS_KB128: {"attention": AttentionConfig(keys=128)}, OURS_KV2: {"attention": AttentionConfig(stages=2)},
            OURS_KB32_B5: {"attention": AttentionConfig(keys=32, min_blocks=5)},
            OURS_KB32_B6: {"attention": AttentionConfig(keys=32, min_blocks=6)}}
REF = "torch reduce-overhead fp16"
GRAPH_ORT = "fused FP16 graph: onnxruntime, CUDA-graph bucket (host feeds to host logits)"
GRAPH_OURS = "fused FP16 graph: kernel path (GraphEncoder, head in its CUDA graph; host to host)"
GRAPH_ORT_ROW0 = "fused FP16 graph, last layer at row 0: onnxruntime, CUDA-graph bucket (host to host)"
GRAPH_OURS_ROW0 = "fused FP16 graph, last layer at row 0: kernel path (host to host)"
PARITY_MAX, PARITY_MEAN = 2e-2, 2e-3      # of torch's output range, on the unpadded positions


def weights_from_bert(net):
    """A transformers BertModel's weights as EncoderWeights (float16): Q, K, V packed into one [H, 3H] product,
    every nn.Linear's [out, in] weight transposed to the GEMM's [in, out]."""
    from paddle2ort.runtime.kernels.encoder import EncoderWeights, Layer
    sd = {k: v.detach().float().cpu().numpy().astype(np.float16) for k, v in net.state_dict().items()}
    emb, cfg = "embeddings.", net.config

    def lin(p):
        return np.ascontiguousarray(sd[p + ".weight"].T), sd[p + ".bias"]

    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(p + f"attention.self.{n}") for n in ("query", "key", "value"))
        wo, bo = lin(p + "attention.output.dense")
        w1, b1 = lin(p + "intermediate.dense")
        w2, b2 = lin(p + "output.dense")
        layers.append(Layer(np.ascontiguousarray(np.concatenate([q[0], k[0], v[0]], 1)),
                            np.concatenate([q[1], k[1], v[1]]), wo, bo,
                            (sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"]),
                            w1, b1, w2, b2, (sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"])))
    return EncoderWeights(sd[emb + "word_embeddings.weight"], sd[emb + "position_embeddings.weight"],
                          sd[emb + "token_type_embeddings.weight"],
                          (sd[emb + "LayerNorm.weight"], sd[emb + "LayerNorm.bias"]), layers,
                          cfg.num_attention_heads, float(cfg.layer_norm_eps))


def graph_rows(geom: str, w, work: Path, repeats: int, device: str = "gpu",
               batches: tuple[int, ...] = BATCHES) -> tuple[list[dict], dict]:
    """The same weights as the fused FP16 graph a bundle holds (benchmarks/encoder_graphs: the fusion pass's form,
    a [CLS] head), whole and with the last layer at row 0 (what the first-row pass makes of a [CLS] classifier):
    onnxruntime's static bucket in its CUDA graph (TextClassifier's default on the GPU) against the kernel path
    (KernelRunner: GraphEncoder, the head in its own CUDA graph), each call host feeds to host logits, batch x SEQ
    -> (rows, {system: {batch: max |logit diff| / the whole graph's onnxruntime logit range}})."""
    import onnx

    from paddle2ort.runtime.buckets import BucketRunner, BucketSpec
    from paddle2ort.runtime.kernels.encoder_graph import KernelRunner
    from paddle2ort.runtime.session import SessionOptions

    from .encoder_graphs import fused_encoder_model
    spec, pad = BucketSpec(seq=(SEQ,), batch=tuple(batches)), {"input_ids": 0}
    runners = {}
    for row0, (ort_name, ours_name) in ((False, (GRAPH_ORT, GRAPH_OURS)), (True, (GRAPH_ORT_ROW0, GRAPH_OURS_ROW0))):
        path = work / f"{geom}.fused.fp16{'.row0' * row0}.onnx"
        onnx.save(fused_encoder_model(w, head="cls", dtype=np.float16, first_row=row0), str(path))
        runners[ort_name] = BucketRunner(path, ["logits"], SessionOptions(device=device), spec, pad_values=pad)
        runners[ours_name] = KernelRunner(path, spec, pad_values=pad, device=device)
    rows, agree = [], {k: {} for k in runners if k != GRAPH_ORT}
    for b in batches:
        ids, mask = _inputs(b)
        feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask.astype(np.int64)}
        want = runners[GRAPH_ORT](feeds)[0]
        for system, runner in runners.items():
            if system != GRAPH_ORT:
                got = runner(feeds)[0]
                agree[system][b] = float(np.abs(got - want).max() / max(float(np.ptp(want)), 1e-12))
            rows.append({"system": system, "geometry": geom, "batch": b, "seq": SEQ,
                         "ms": _median_ms(lambda: runner(feeds), repeats)})
            log.info("%s", rows[-1])
    return rows, agree


def _inputs(b: int):
    ids = np.random.default_rng(b).integers(1000, 30000, (b, SEQ)).astype(np.int64)
    mask = _rows_mask(b)
    ids[mask == 0] = 0
    return ids, mask


def parity(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
    keep = mask.astype(bool)
    d = np.abs(ours.astype(np.float32) - ref.astype(np.float32))[keep]
    rng = float(np.ptp(ref.astype(np.float32)[keep]))
    return {"max_abs_over_range": float(d.max() / rng), "mean_abs_over_range": float(d.mean() / rng),
            "ok": bool(d.max() / rng <= PARITY_MAX and d.mean() / rng <= PARITY_MEAN)}


def run(out: Path, repeats: int, geometries: list[str], compile_torch: bool = True) -> dict:
    import torch

    from paddle2ort.runtime.kernels.encoder import KernelEncoder

    from .gpu.common import device_info
    res = {"benchmark": "kernel encoder vs PyTorch (issue 17)", "device": device_info(), "seq": SEQ,
           "repeats": repeats, "rows": [], "parity": {}, "parity_limits": [PARITY_MAX, PARITY_MEAN],
           "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for geom in geometries:
        torch.manual_seed(0)
        net = _torch_model(geom).half().cuda()
        enc = KernelEncoder(weights_from_bert(net))
        ids, mask = _inputs(8)
        with torch.inference_mode():
            ref = net(input_ids=torch.from_numpy(ids).cuda(),
                      attention_mask=torch.from_numpy(mask).cuda()).last_hidden_state.float().cpu().numpy()
        got = enc.forward(ids, mask.sum(1))
        res["parity"][geom] = parity(enc.xp.asnumpy(got), ref, mask)
        log.info("%s parity vs torch: %s", geom, res["parity"][geom])
        for system, opts in VARIANTS.items():
            try:
                opts.get("attention", AttentionConfig()).check(enc.host.head_dim)
            except BadInputError:               # a variant this head size does not take
                continue
            e = enc if system == OURS else KernelEncoder(enc.host, **opts)
            for b in BATCHES:
                ids, mask = _inputs(b)
                buf = e.load(ids, mask.sum(1))
                ms = _median_ms(lambda: e.run(b, SEQ), repeats, sync=buf.stream.synchronize)
                res["rows"].append({"system": system, "geometry": geom, "batch": b, "seq": SEQ, "ms": ms})
                log.info("%s", res["rows"][-1])
            if system == OURS:
                res.setdefault("gemm_tuning", {})[geom] = [
                    {"T": k[0], "N": k[1], "K": k[2], "epilogue": k[3], "residual": k[4], **v}
                    for k, v in e.lt.tuned.items()]
                res.setdefault("breakdown", {})[geom] = breakdown(e, 32, res["rows"][-1]["ms"])
                log.info("%s breakdown: %s", geom, res["breakdown"][geom])
            del e
        with tempfile.TemporaryDirectory() as work:
            rows, res.setdefault("graph_agreement", {})[geom] = graph_rows(geom, enc.host, Path(work), repeats)
            res["rows"] += rows
        for mode in ("eager", "reduce-overhead") if compile_torch else ("eager",):
            fn = net if mode == "eager" else torch.compile(net, mode=mode, dynamic=False)
            ids, mask = _inputs(32)
            res["rows"].append(torch_row(fn, mode, geom, torch.from_numpy(ids).cuda(), torch.from_numpy(mask).cuda(),
                                         repeats))
        del net, enc
        torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel-encoder.json").write_text(json.dumps(res, indent=1))
    return res


def breakdown(enc, batch: int, forward_ms: float) -> dict:
    """Each kernel of a forward at batch x SEQ timed alone in a CUDA graph of 50 calls on the bound buffers (one
    layer's, times the layers), beside the forward: what is left is the gaps between the kernels of the graph."""
    from paddle2ort.runtime.kernels import encoder as E

    from .encoder_epilogue import median_graph_us
    buf, w, lt, l = enc.buffers(batch, SEQ), enc.w, enc.lt, enc.w.layers[0]
    cp, n = enc.xp, len(enc.w.layers)
    parts = {
        "embed + LayerNorm": (1, lambda: E.launch_embed(buf.ids, buf.types, w, buf.tmp, buf.x, SEQ)),
        "QKV GEMM (bias)": (n, lambda: lt(buf.x, l.wqkv, buf.qkv, bias=l.bqkv, epilogue="bias")),
        "attention": (n, lambda: E.launch_attention(buf.qkv, buf.lens, buf.att, enc.num_heads, SEQ, enc.scale,
                                                    enc.attention)),
        "O GEMM (bias + residual)": (n, lambda: lt(buf.att, l.wo, buf.tmp, bias=l.bo, residual=buf.x,
                                                   epilogue="bias")),
        "LayerNorm (x2)": (2 * n, lambda: E.launch_layer_norm(buf.tmp, *l.ln1, buf.att, enc.eps)),
        "FFN-up GEMM (bias + GELU)": (n, lambda: lt(buf.x, l.w1, buf.ff, bias=l.b1, epilogue="gelu_bias")),
        "FFN-down GEMM (bias + residual)": (n, lambda: lt(buf.ff, l.w2, buf.tmp, bias=l.b2, residual=buf.x,
                                                          epilogue="bias")),
    }
    us = {k: times * median_graph_us(cp, fn, 50, 7) for k, (times, fn) in parts.items()}
    total = sum(us.values())
    return {"batch": batch, "us_per_forward": us, "kernels_sum_us": total, "forward_us": 1e3 * forward_ms,
            "gaps_us": 1e3 * forward_ms - total}


CLASSIFIER_SYSTEMS = {      # row name -> (TextClassifier's encoder, GraphEncoder's head mode)
    "FP16-GPU onnxruntime": ("onnxruntime", None),
    "FP16-GPU kernel encoder": ("kernels", "graphs"),
    "FP16-GPU kernel encoder, head without CUDA graph (static buckets)": ("kernels", "static"),
    "FP16-GPU kernel encoder, dynamic head session (run40's)": ("kernels", "dynamic"),
}


def classifier(bundle: Path, dataset: Path, repeats: int = 50) -> tuple[list[dict], dict]:
    """The real classifier on the whole dev split, FP16, in one run: TextClassifier as it ships (onnxruntime's fused
    graph in shape buckets, CUDA graphs) and with encoder="kernels" (the same buckets on our kernel encoder, the head
    each of GraphEncoder's ways); accuracy, ms/sample (median of 3 timed passes) and argmax agreement with the
    default -> (rows, the per-stage times of one batch: classifier_stages)."""
    from paddle2ort.runtime.pipelines import TextClassifier
    from paddle2ort.runtime.session import SessionOptions

    from .classifier import make_batches, timed_predictions
    from .dataset import load_split
    data = load_split(dataset, "dev")
    clfs = {encoder: TextClassifier(bundle, precision="fp16", session=SessionOptions(device="gpu"), batch_size=32,
                                    encoder=encoder) for encoder in ("onnxruntime", "kernels")}
    idx, feeds = make_batches(clfs["onnxruntime"], data)
    rows, preds = [], {}
    for name, (encoder, head) in CLASSIFIER_SYSTEMS.items():
        clf = clfs[encoder]                 # one kernel encoder for the head ways, switched between timed passes
        if head is not None:
            clf.runner.encoder.head_mode = head
        pred, passes = timed_predictions(clf, len(data.texts), idx, feeds)
        preds[name] = pred
        rows.append({"name": name, "samples": len(data.texts),
                     "accuracy": float((pred == np.asarray(data.labels)).mean()),
                     "ms_per_sample": float(np.median(passes)) / len(data.texts) * 1e3, "pass_times_s": passes})
        if head is not None:
            rows[-1]["head_mode_used"] = clf.runner.encoder.head_mode
        log.info("%s", rows[-1])
    ref = next(iter(CLASSIFIER_SYSTEMS))
    for r in rows:
        r["argmax_agreement_vs_onnxruntime"] = float((preds[r["name"]] == preds[ref]).mean())
    return rows, classifier_stages(clfs["onnxruntime"], clfs["kernels"], feeds, repeats)


def classifier_stages(ort_clf, kernel_clf, feeds: list[dict], repeats: int) -> dict:
    """Where one batch's time goes (the median-length batch of the split, padded to its bucket; ms, median of
    `repeats`, each call synchronized): onnxruntime's bucket (copies in, one graph replay, copies out) against the
    kernel path's stages: the prefix (key lengths, CPU), the encoder (copies in, replay, synchronize), the head in
    each of GraphEncoder's ways, and GraphEncoder.run whole."""
    from paddle2ort.runtime.buckets import bucket_for, pad_to_bucket
    from paddle2ort.runtime.kernels.encoder_graph import HEADS, check_right_padding
    runner, ge = kernel_clf.runner, kernel_clf.runner.encoder
    f = feeds[len(feeds) // 2]
    n, length = f["input_ids"].shape
    batch, seq = bucket_for(n, runner.spec.batch), bucket_for(length, runner.spec.seq)
    f = pad_to_bucket(f, batch, seq, runner.pad_values)
    lens, hidden0 = ge.run_prefix(f)
    hidden = ge.encoder.forward(f["input_ids"], lens, f.get("token_type_ids"), hidden0)
    rest = {k: f[k] for k in ge.graph.head_inputs[1:]}
    ort_bucket = ort_clf.runner.bucket(batch, seq)
    ms = {"onnxruntime bucket (whole model)": _median_ms(lambda: ort_bucket(f), repeats),
          "kernel path: right-padding check": _median_ms(lambda: check_right_padding(f), repeats),
          "kernel path: prefix (key lengths, CPU)": _median_ms(lambda: ge.run_prefix(f), repeats),
          "kernel path: encoder (copies in, replay, synchronize)": _median_ms(
              lambda: ge.encoder.forward(f["input_ids"], lens, f.get("token_type_ids"), hidden0), repeats)}
    if ge.encoder.xp is not np:         # the encoder stage's two halves
        stream = ge.encoder.buffers(batch, seq).stream
        ms["kernel path: encoder, copies in"] = _median_ms(
            lambda: ge.encoder.load(f["input_ids"], lens, f.get("token_type_ids"), hidden0), repeats,
            sync=stream.synchronize)
        ms["kernel path: encoder, graph replay"] = _median_ms(lambda: ge.encoder.run(batch, seq), repeats,
                                                              sync=stream.synchronize)
    for mode in HEADS:
        ge.head_mode = mode
        ms[f"kernel path: head ({mode})"] = _median_ms(lambda: ge.run_head(hidden, rest), repeats)
        ms[f"kernel path: GraphEncoder.run, head {mode}"] = _median_ms(lambda: ge.run(f), repeats)
    return {"batch": batch, "seq": seq, "rows": n, "length": length, "repeats": repeats, "ms": ms}


def speedup(res: dict, geom: str, peer: str = REF, batch: int = 32) -> float:
    """peer ms / ours ms at batch x 128 (> 1: ours faster)."""
    row = {(r["system"], r["geometry"], r["batch"]): r["ms"] for r in res["rows"]}
    return row[(peer, geom, batch)] / row[(OURS, geom, batch)]


def report(res: dict) -> str:
    lines = [f"# Kernel encoder vs PyTorch ({res['device'].get('gpu', 'GPU')})", "",
             f"ms per batch of batch x {res['seq']} tokens, FP16, median of {res['repeats']}; the same weights in "
             "both (BertModel's random initialisation).", "",
             "| geometry | system | batch 1 | batch 8 | batch 32 | reduce-overhead / this (b32) |",
             "|---|---|---:|---:|---:|---:|"]
    row = {(r["system"], r["geometry"], r["batch"]): r["ms"] for r in res["rows"]}
    for geom in dict.fromkeys(r["geometry"] for r in res["rows"]):
        for system in dict.fromkeys(r["system"] for r in res["rows"] if r["geometry"] == geom):
            cells = [f"{row[(system, geom, b)]:.3f}" if (system, geom, b) in row else "-" for b in BATCHES]
            ratio = (f"{row[(REF, geom, 32)] / row[(system, geom, 32)]:.2f}x"
                     if (REF, geom, 32) in row and (system, geom, 32) in row else "-")
            lines.append(f"| {geom} | {system} | {' | '.join(cells)} | {ratio} |")
    lines += ["", "Parity with torch on the same weights and rows (unpadded positions; limits: max "
              f"{res['parity_limits'][0]:g}, mean {res['parity_limits'][1]:g} of torch's output range):", "",
              "| geometry | max abs diff / range | mean abs diff / range | within |", "|---|---:|---:|---|"]
    for geom, p in res["parity"].items():
        lines.append(f"| {geom} | {p['max_abs_over_range']:.2e} | {p['mean_abs_over_range']:.2e} | "
                     f"{'yes' if p['ok'] else 'NO'} |")
    if res.get("graph_agreement"):
        lines += ["", "The fused-graph rows (the same weights as the ONNX graph a bundle holds): each runner's logits "
                  "against onnxruntime's on the whole graph, max |diff| / its logit range:", ""]
        lines += [f"- {geom}, {system}: " + ", ".join(f"b{b} {v:.1e}" for b, v in by_batch.items())
                  for geom, a in res["graph_agreement"].items() for system, by_batch in a.items()]
    if res.get("classifier"):
        lines += ["", "Real classifier, dev split, FP16 (one run):", "",
                  "| configuration | samples | accuracy | ms/sample | argmax agreement vs onnxruntime |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['samples']} | {100 * r['accuracy']:.2f}% | {r['ms_per_sample']:.4f} | "
                  f"{100 * r['argmax_agreement_vs_onnxruntime']:.2f}% |" for r in res["classifier"]]
    if res.get("classifier_stages"):
        st = res["classifier_stages"]
        lines += ["", f"One batch of the dev split ({st['rows']} rows of up to {st['length']} tokens, its bucket "
                  f"{st['batch']} x {st['seq']}), ms, median of {st['repeats']}, each call synchronized:", "",
                  "| stage | ms |", "|---|---:|"] + [f"| {k} | {v:.3f} |" for k, v in st["ms"].items()]
    for geom, bd in res.get("breakdown", {}).items():
        lines += ["", f"{geom}, batch {bd['batch']}: each kernel alone in a CUDA graph, per forward (us): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in bd["us_per_forward"].items())
                  + f"; sum {bd['kernels_sum_us']:.0f} against the forward's {bd['forward_us']:.0f} "
                  f"(gaps and cache effects: {bd['gaps_us']:.0f})."]
    return "\n".join(lines) + "\n"


def plot(res: dict, dst: Path) -> None:
    from .encoder_gpu import bars_at_batch
    bars_at_batch(res["rows"], list(dict.fromkeys(r["geometry"] for r in res["rows"])),
                  f"Kernel encoder vs PyTorch ({res['device'].get('gpu', 'GPU')})", dst)


def main(argv=None) -> int:
    from .gpu.common import run_report_args

    def run_args(r):
        r.add_argument("--repeats", type=int, default=50)
        r.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
        r.add_argument("--no-compile", action="store_true", help="skip torch.compile (eager only)")
        r.add_argument("--bundle", type=Path, help="a classifier bundle with a fused FP16 model: also the real "
                       "classifier, onnxruntime vs the kernel encoder (needs --dataset)")
        r.add_argument("--dataset", type=Path, help="its dataset directory (dev split)")
    a = run_report_args("paddle2ort.benchmarks.encoder_kernels", __doc__,
                        "there (GPU): parity with torch, then the timings", run_args, argv)
    if a.cmd == "run":
        res = run(a.out, a.repeats, a.geometries, not a.no_compile)
        if a.bundle and a.dataset:
            res["classifier"], res["classifier_stages"] = classifier(a.bundle, a.dataset)
            (a.out / "kernel-encoder.json").write_text(json.dumps(res, indent=1))
        (a.out / "kernel-encoder.md").write_text(report(res))
        plot(res, a.out / "kernel-encoder.png")
        return 0 if all(p["ok"] for p in res["parity"].values()) else 1
    res = json.loads(a.json.read_text())
    a.json.with_suffix(".md").write_text(report(res))
    plot(res, a.json.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
