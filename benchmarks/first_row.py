"""The first-row pass measured (convert/fusion/first_row.py): one Paddle [CLS]-pooled classifier converted with and
without it (each precision through the gate), both timed on the CPU in one run, interleaved, with the classifier's
CPU session; the logits of the two compared on the same batches; with --peer, Paddle Inference CPU (FP32) on the
same batches after them.

    python -m paddle2ort.benchmarks.first_row run SRC --out DIR [--precisions fp32,int8] [--batch 32]
        [--seqs 32,64,128] [--repeats 15] [--threads 2] [--peer]
    python -m paddle2ort.benchmarks.first_row report DIR/first-row.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VARIANTS = ("whole graph", "last layer at row 0")
PEER = "Paddle Inference CPU (FP32)"


def convert_both(source: Path, out: Path, precisions: tuple[str, ...]) -> dict[str, Path]:
    """variant -> bundle directory (FusionConfig(first_row=...) every precision or none, each gated)."""
    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.convert.fusion import FusionConfig
    dirs = {}
    for variant, on in zip(VARIANTS, (False, True)):
        d = out / ("bundle-first-row" if on else "bundle-whole")
        m = convert(ConvertConfig(source=source, output=d, precisions=precisions, overwrite=True,
                                  fusion=FusionConfig(first_row=precisions if on else ()))).manifest
        if bool(m.extra.get("last_layer_first_row")) != on:
            raise RuntimeError(f"{source}: the first-row pass {'did not apply' if on else 'applied'}; a [CLS]-pooled "
                               "encoder classifier is what this benchmark measures")
        dirs[variant] = d
    return dirs


def _feeds(names: list[str], batch: int, seq: int, seed: int, max_id: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(5, max_id, (batch, seq)).astype(np.int64)
    all_ = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
    return {n: all_[n] for n in names}


def time_both(dirs: dict[str, Path], precisions: tuple[str, ...], batch: int, seqs: tuple[int, ...], repeats: int,
              threads: int, max_id: int = 1000) -> tuple[list[dict], dict]:
    """Rows {precision, seq, variant, ms (median), runs}; {precision: max |logit diff| / range over the seqs}.
    Token ids are drawn from [5, max_id) (within the vocabulary, padding id 0 never drawn)."""
    from paddle2ort.runtime import load_bundle
    from paddle2ort.runtime.pipelines import cpu_encoder_session
    from paddle2ort.runtime.session import SessionOptions
    opts = cpu_encoder_session(SessionOptions(intra_op_threads=threads))
    rows, agree = [], {}
    for prec in precisions:
        sess = {v: load_bundle(d).open_session(prec, opts) for v, d in dirs.items()}
        names = [i.name for i in next(iter(sess.values())).get_inputs()]
        worst = 0.0
        for seq in seqs:
            feeds = _feeds(names, batch, seq, seq, max_id)
            outs = {v: s.run(None, feeds)[0] for v, s in sess.items()}       # warm-up, and the logits compared
            a, b = outs[VARIANTS[0]], outs[VARIANTS[1]]
            worst = max(worst, float(np.abs(a - b).max() / max(float(np.ptp(a)), 1e-12)))
            times = {v: [] for v in sess}
            for _ in range(repeats):
                for v, s in sess.items():                   # interleaved: the box's drift hits both alike
                    t0 = time.perf_counter()
                    s.run(None, feeds)
                    times[v].append(time.perf_counter() - t0)
            for v, ts in times.items():
                rows.append({"precision": prec, "batch": batch, "seq": seq, "variant": v,
                             "ms": 1e3 * float(np.median(ts)), "runs_ms": [round(1e3 * t, 3) for t in ts]})
                log.info("%s", {k: rows[-1][k] for k in ("precision", "seq", "variant", "ms")})
        agree[prec] = worst
    return rows, agree


def time_peer(source: Path, names: list[str], batch: int, seqs: tuple[int, ...], repeats: int, threads: int,
              max_id: int = 1000) -> list[dict]:
    """Paddle Inference (its CPU deployment setting, convert/peer) on the same batches as time_both, after it."""
    from paddle2ort.convert.peer import paddle_inference_bench
    from paddle2ort.convert.source import locate
    batches = [_feeds(names, batch, seq, seq, max_id) for seq in seqs]      # one worker, one model load
    info, _ = paddle_inference_bench(locate(source), batches, len(batches), repeats, threads)
    rows = []
    for i, seq in enumerate(seqs):
        ts = [rep[i] for rep in info["times"]]
        rows.append({"precision": "fp32", "batch": batch, "seq": seq, "variant": PEER, "ms": 1e3 * float(np.median(ts)),
                     "runs_ms": [round(1e3 * t, 3) for t in ts],
                     "notes": {k: info[k] for k in ("onednn", "ir_optim", "threads") if k in info}})
        log.info("%s", {k: rows[-1][k] for k in ("precision", "seq", "variant", "ms")})
    return rows


def speedups(res: dict) -> dict[str, dict[int, float]]:
    """{precision: {seq: whole ms / first-row ms}} (> 1: the pass is faster)."""
    ms = {(r["precision"], r["seq"], r["variant"]): r["ms"] for r in res["rows"]}
    return {p: {s: ms[(p, s, VARIANTS[0])] / ms[(p, s, VARIANTS[1])]
                for s in dict.fromkeys(r["seq"] for r in res["rows"] if r["precision"] == p)}
            for p in dict.fromkeys(r["precision"] for r in res["rows"])}


def versus_peer(res: dict) -> dict[str, dict[int, float]]:
    """{variant: {seq: Paddle Inference ms / our FP32 ms}} where the run timed the peer (> 1: ours faster)."""
    ms = {(r["precision"], r["seq"], r["variant"]): r["ms"] for r in res["rows"]}
    seqs = [r["seq"] for r in res["rows"] if r["variant"] == PEER]
    return {v: {s: ms[("fp32", s, PEER)] / ms[("fp32", s, v)] for s in seqs} for v in VARIANTS} if seqs else {}


def table(res: dict) -> str:
    peer = versus_peer(res)
    lines = ["| precision | seq | whole graph ms | last layer at row 0 ms | speed-up | logits max diff / range |"
             + (" Paddle Inference ms | vs Paddle: whole / row 0 |" if peer else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if peer else "")]
    ms = {(r["precision"], r["seq"], r["variant"]): r["ms"] for r in res["rows"]}
    for p, by_seq in speedups(res).items():
        for s, x in by_seq.items():
            extra = ""
            if peer and p == "fp32" and s in peer[VARIANTS[0]]:
                extra = (f" {ms[(p, s, PEER)]:.2f} | {peer[VARIANTS[0]][s]:.2f}x / {peer[VARIANTS[1]][s]:.2f}x |")
            elif peer:
                extra = " - | - |"
            lines.append(f"| {p} | {s} | {ms[(p, s, VARIANTS[0])]:.2f} | {ms[(p, s, VARIANTS[1])]:.2f} | {x:.2f}x | "
                         f"{res['agreement'][p]:.1e} |" + extra)
    return "\n".join(lines)


def report(res: dict) -> str:
    cpu = res["cpu"]
    return "\n".join([f"# The first-row pass on {res['model']} ({cpu['model']}, {', '.join(cpu['isa'][-4:])}; "
                      f"{res['threads']} threads)", "",
                      f"ms per batch of {res['batch']}, median of {res['repeats']} interleaved runs, the classifier's "
                      "CPU session; both bundles from one source, each precision through the gate.", "",
                      table(res)]) + "\n"


def plot(res: dict, dst: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for p, by_seq in speedups(res).items():
        ax.plot(list(by_seq), list(by_seq.values()), marker="o", label=p)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("whole graph / last layer at row 0 (speed-up)")
    ax.set_title(f"First-row pass, {res['model']}, batch {res['batch']}, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paddle2ort.benchmarks.first_row", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="convert SRC both ways, time both")
    r.add_argument("source", type=Path, help="a Paddle inference model of a [CLS]-pooled encoder classifier")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--precisions", default="fp32,int8")
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--seqs", default="32,64,128")
    r.add_argument("--repeats", type=int, default=15)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--peer", action="store_true", help="also Paddle Inference CPU (FP32) on the same batches")
    w = sub.add_parser("report", help="Markdown and plot beside a results JSON")
    w.add_argument("json", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.cmd == "run":
        from .env import cpu_info, environment
        precisions = tuple(a.precisions.split(","))
        a.out.mkdir(parents=True, exist_ok=True)
        dirs = convert_both(a.source, a.out, precisions)
        seqs = tuple(int(s) for s in a.seqs.split(","))
        rows, agree = time_both(dirs, precisions, a.batch, seqs, a.repeats, a.threads)
        if a.peer:
            from paddle2ort.runtime import load_bundle
            names = [i.name for i in load_bundle(dirs[VARIANTS[0]]).manifest.inputs]
            rows += time_peer(a.source, names, a.batch, seqs, a.repeats, a.threads)
        res = {"benchmark": "first-row pass (convert/fusion/first_row.py)", "model": a.source.name,
               "cpu": cpu_info(a.threads), "environment": environment(), "threads": a.threads, "batch": a.batch, "repeats": a.repeats, "rows": rows,
               "agreement": agree, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        path = a.out / "first-row.json"
        path.write_text(json.dumps(res, indent=1))
    else:
        path = a.json
        res = json.loads(path.read_text())
    path.with_suffix(".md").write_text(report(res))
    plot(res, path.with_suffix(".png"))
    print(report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
