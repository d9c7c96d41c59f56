"""Seq2seq perf run in the seed's shape (PaddleNLP's UNIMO-text question generation: a dev set decoded with beam
search and a length penalty, reported as total time, samples/s and ms per sample), with Paddle's own generate()
as the reference row and Paddle Inference (the export wrappers saved with paddle.jit.save, run by predictors under
the same decode loop) as the peer row of the same run: same sources, batches, thread count and decoding options.

    python -m paddle2ort.benchmarks.seq2seq [--family t5,bart,mbart,unimo] [--work DIR] [--output DIR]
    (--family also takes unified_transformer)
    python -m paddle2ort.benchmarks.seq2seq stage .device/seq2seq      the device run's fp32 bundles, built here
    python -m paddle2ort.benchmarks.seq2seq device .device/seq2seq --device gpu|cpu --out DIR
        (benchmarks/device/seq2seq_gpu.sh: CUDA against the CPU, near-tie rule, samples/s; cpu: a dry run)

The dataset is committed (benchmarks/results/seq2seq/dataset.jsonl: 32 question-generation pairs, src -> tgt);
the models are tiny random-weight T5 / BART / mBART / UNIMO-text built from it (convert.seq2seq.tiny), so output
quality is not the point: the figures are the loop's and the graphs' speed, and the rows' token agreement with
Paddle. Every pass decodes the whole set; the median of --repeats passes is reported (one warm-up batch first).
Writes results.json (environment, options, rows) and results.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .env import environment, usable_cores

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "seq2seq"
DATASET = RESULTS / "dataset.jsonl"
# (name, our GenerationConfig options, PaddleNLP generate() options)
DECODES = (
    ("greedy", {}, {"decode_strategy": "greedy_search"}),
    ("beam4-lp1.0", {"num_beams": 4, "length_penalty": 1.0, "beam_rules": "paddlenlp", "early_stopping": False},
     {"decode_strategy": "beam_search", "num_beams": 4, "length_penalty": 1.0}),
)


@dataclass(frozen=True)
class Seq2SeqBenchConfig:
    families: tuple[str, ...] = ("t5", "bart", "mbart", "unimo")
    dataset: Path = DATASET
    work: Path = Path("out/bench-seq2seq")
    output: Path = RESULTS
    precisions: tuple[str, ...] = ("fp32", "int8")
    batch_size: int = 8
    max_new_tokens: int = 16
    repeats: int = 3
    threads: int = field(default_factory=usable_cores)


def read_dataset(path: Path) -> list[dict]:
    from paddle2ort.runtime.errors import BadInputError
    rows = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{no} is not valid JSON ({e.msg})") from e
        if not isinstance(r, dict) or not isinstance(r.get("src"), str) or not isinstance(r.get("tgt"), str):
            raise BadInputError(f'{path}:{no} needs string fields "src" and "tgt"')
        rows.append(r)
    if not rows:
        raise BadInputError(f"{path} holds no pairs")
    return rows


def model_and_bundle(cfg: Seq2SeqBenchConfig, family: str, texts: list[str]) -> tuple[Path, Path]:
    """The tiny model and its bundle under cfg.work (built and converted once, reused while present)."""
    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    from paddle2ort.convert.seq2seq.tiny import build_tiny
    src, bundle = cfg.work / family / "src", cfg.work / family / "bundle"
    if not (src / "model" / "config.json").is_file():
        build_tiny(family, src, texts)
    if not (bundle / "manifest.json").is_file():
        convert_seq2seq(Seq2SeqConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=bundle,
                                             precisions=cfg.precisions))
    return src, bundle


def _timed_passes(run, batches: list, repeats: int) -> tuple[list[float], list]:
    run(batches[0])                                                          # warm-up
    passes, outs = [], []
    for _ in range(repeats):
        t0, outs = time.perf_counter(), [run(b) for b in batches]
        passes.append(time.perf_counter() - t0)
    return passes, outs


def _row(system: str, family: str, precision: str, decode: str, passes: list[float], n: int, outs, ref) -> dict:
    total = statistics.median(passes)
    flat = [r for b in outs for r in b]
    same = sum(a == b for a, b in zip(flat, ref)) if ref is not None else None
    return {"system": system, "family": family, "precision": precision, "decode": decode, "samples": n,
            "total_s": total, "samples_per_s": n / total, "ms_per_sample": 1e3 * total / n, "passes_s": passes,
            "rows_equal_paddle": same, "mean_new_tokens": sum(map(len, flat)) / max(len(flat), 1)}


PEER = "paddle-inference"      # the speed peer: Paddle Inference predictors over the same programs, same loop
REFERENCE = "paddle-dygraph"   # PaddleNLP's own generate(): the token reference (rows = Paddle), timed too


def run_family(cfg: Seq2SeqBenchConfig, family: str, data: list[dict]) -> list[dict]:
    from paddle2ort.convert.paddle_proc import run_worker, workdir
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    from paddle2ort.runtime.session import SessionOptions

    src, bundle = model_and_bundle(cfg, family, [r["src"] for r in data] + [r["tgt"] for r in data])
    gens = {p: Text2TextGenerator(bundle, p, SessionOptions(intra_op_threads=cfg.threads)) for p in cfg.precisions}
    ids = [gens[cfg.precisions[0]].prompt_ids(r["src"]) for r in data]
    batches = [ids[i:i + cfg.batch_size] for i in range(0, len(ids), cfg.batch_size)]
    rows = []
    for name, ours, theirs in DECODES:
        opts = {**theirs, "max_new_tokens": cfg.max_new_tokens}
        common = {"model_dir": str(src / "model"), "batches": batches, "repeats": cfg.repeats, "threads": cfg.threads}
        with workdir("bench") as w:
            ref_run = run_worker("bench_seq2seq", {**common, "options": opts}, Path(w))
        ref = [r for b in ref_run["generated"] for r in b]
        rows.append({**_row(REFERENCE, family, "fp32", name, ref_run["pass_seconds"], len(ids),
                            ref_run["generated"], ref), "paddle_version": ref_run["paddle_version"]})
        with workdir("bench") as w:
            peer = run_worker("bench_seq2seq_inference", {**common, "options": ours, "work": str(w),
                                                          "max_new_tokens": cfg.max_new_tokens}, Path(w))
        base = _row(PEER, family, "fp32", name, peer["pass_seconds"], len(ids), peer["generated"], ref)
        rows.append({**base, **{k: peer[k] for k in ("paddle_version", "onednn", "ir_optim")}})
        gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, **ours)
        for prec, gen in gens.items():
            passes, outs = _timed_passes(lambda b, gen=gen: gen.generate_token_ids(b, gcfg), batches, cfg.repeats)
            rows.append(_row("onnxruntime", family, prec, name, passes, len(ids), outs, ref))
            log.info("%s %s %s: %.2f ms/sample (Paddle Inference %.2f)", family, name, prec,
                     rows[-1]["ms_per_sample"], base["ms_per_sample"])
    return rows


def markdown(res: dict) -> str:
    lines = [f"# Seq2seq generation: {res['samples']} samples of `{res['dataset']}`, batch {res['batch_size']}, "
             f"<= {res['max_new_tokens']} new tokens",
             "",
             f"Host: {res['environment'].get('cpu', '?')}, {res['threads']} threads, 1-minute load average "
             f"{res['load_average_1m'][0]:.1f} at start / {res['load_average_1m'][1]:.1f} at end (a shared box: "
             f"timings are noisy); commit {res['commit']}; {res['date']}. Tiny random-weight models (quality is not "
             f"the point). Median of {res['repeats']} passes over the whole set.",
             "",
             f"- `{PEER}` (the peer, `vs peer`): the export wrappers (encoder + decoder step, or the prefix-LM step; "
             "the programs paddle2onnx converts) saved with `paddle.jit.save` and run by Paddle Inference predictors "
             f"(IR passes on, oneDNN {'on' if any(r.get('onednn') for r in res['rows']) else 'off'}, the same "
             "threads), driven by the same decode loop and options as the onnxruntime rows: graph runtime against "
             "graph runtime. oneDNN is off because its kernels reject the prefill's empty cache and re-create "
             "primitives as the cache grows every step (a tiny T5 decoder step: 52 ms with it, 18 ms without).",
             f"- `{REFERENCE}`: PaddleNLP's own `generate()` (dygraph, its Python loop), timed on the same batches; "
             "its tokens are the reference of `rows = Paddle` (token-identical rows).",
             "- int8 is weight-only: on random weights its near-flat logits pick other tokens (the LLM results' "
             "int4-margin measurement shows why); the gate holds its logits to cosine >= 0.99.",
             "",
             "| family | decode | system | precision | total s | samples/s | ms/sample | vs peer | rows = Paddle "
             "| new tokens/row |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        peer = _peer(res, r)
        same = "-" if r["system"] == REFERENCE else f"{r['rows_equal_paddle']}/{r['samples']}"
        lines.append(f"| {r['family']} | {r['decode']} | {r['system']} | {r['precision']} | {r['total_s']:.3f} | "
                     f"{r['samples_per_s']:.1f} | {r['ms_per_sample']:.2f} | "
                     f"{peer['total_s'] / r['total_s']:.2f}x | {same} | {r['mean_new_tokens']:.1f} |")
    lines += ["", "![ms per sample](seq2seq.png)", "",
              "Regenerate: `python -m paddle2ort.benchmarks.seq2seq` (builds and converts the tiny models "
              "under out/bench-seq2seq on first use)."]
    return "\n".join(lines) + "\n"


def _peer(res: dict, r: dict) -> dict:
    return next(p for p in res["rows"] if p["system"] == PEER and p["family"] == r["family"]
                and p["decode"] == r["decode"])


def plot(res: dict, path: Path) -> bool:
    """ms/sample per family x decode, one bar a system x precision (lower is better)."""
    from .report import pyplot
    plt = pyplot()
    if plt is None:
        return False
    groups = list(dict.fromkeys((r["family"], r["decode"]) for r in res["rows"]))
    systems = list(dict.fromkeys((r["system"], r["precision"]) for r in res["rows"]))
    colors = {REFERENCE: "#c44e52", PEER: "#dd8452", "onnxruntime": "#4c72b0"}
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 3, 4.6))
    width = 0.8 / len(systems)
    for j, (sysname, prec) in enumerate(systems):
        xs, ys = [], []
        for i, g in enumerate(groups):
            r = next((r for r in res["rows"] if (r["family"], r["decode"]) == g and r["system"] == sysname
                      and r["precision"] == prec), None)
            if r is not None:
                xs.append(i + (j - (len(systems) - 1) / 2) * width)
                ys.append(r["ms_per_sample"])
        ax.bar(xs, ys, width, label=f"{sysname} {prec}", color=colors.get(sysname, "#55a868"),
               alpha=1.0 if prec == "fp32" else 0.55)
    ax.set_xticks(range(len(groups)), [f"{f}\n{d}" for f, d in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms / sample (log), lower is better")
    ax.set_title(f"seq2seq, tiny random weights, batch {res['batch_size']}, {res['threads']} threads, "
                 f"load {res['load_average_1m'][0]:.1f}; commit {res['commit']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_bench(cfg: Seq2SeqBenchConfig) -> dict:
    from .env import git_commit
    import os
    data = read_dataset(cfg.dataset)
    load = os.getloadavg()[0]                       # a shared box's load is part of what the timings mean
    rows = [r for f in cfg.families for r in run_family(cfg, f, data)]
    res = {"benchmark": "seq2seq", "dataset": str(cfg.dataset.name), "samples": len(data), **{
        k: v for k, v in asdict(cfg).items() if k in ("batch_size", "max_new_tokens", "repeats", "threads")},
        "precisions": list(cfg.precisions), "decodes": [{"name": n, "ours": o, "paddle": p} for n, o, p in DECODES],
        "environment": environment(), "commit": git_commit(), "load_average_1m": [load, os.getloadavg()[0]],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    (cfg.output / "results.md").write_text(markdown(res), encoding="utf-8")
    plot(res, cfg.output / "seq2seq.png")
    return res


# ----------------------------------------------------------------------------- the near-tie rule on seq2seq rows
def first_diff(got: list[int], want: list[int]) -> int | None:
    return next((j for j in range(max(len(got), len(want))) if j >= len(got) or j >= len(want) or got[j] != want[j]),
                None)


def greedy_tie_margin(model, src: list[int], got: list[int], want: list[int], eos: int) -> float:
    """Where greedy `got` first leaves `want`: the logit gap between the two tokens chosen there (an ended row
    chose eos), in `model`'s logits teacher-forced on src + want's shared prefix (a runtime.seq2seq decoder; a
    prefix LM's role ids set on it apply). 0.0 when they do not part."""
    k = first_diff(got, want)
    if k is None:
        return 0.0
    a, b = (r[k] if k < len(r) else eos for r in (got, want))
    model.start(1)
    logits, _ = model.append([src], None, k + 1)
    for t in want[:k]:
        model.next_ids[:] = t
        logits, _ = model.step(None)
    return abs(float(logits[0, a]) - float(logits[0, b]))


class BeamMargins:
    """Beam search's decisive margins a source, recorded from a run (generation.advance_beams wrapped while in
    the `with` block): at each step the gap at the K-th candidate (whether a stop token closes a hypothesis) and at
    the K-th continuing one (which K beams go on), and at the end the gap between the two best closed hypotheses.
    Another run may part from this one's row only when its smallest decisive margin is within the epsilon."""

    def __init__(self):
        self.order, self.min, self._real = [], {}, None

    def __enter__(self):
        import paddle2ort.runtime.generation as G
        self._real = real = G.advance_beams

        def wrapped(beams, cand_s, cand_i, vocab, cfg, step, stops):
            key = id(beams)
            if key not in self.min:
                self.order.append(beams)
                self.min[key] = float("inf")
            k = len(beams.seqs)
            pairs = [(float(x), int(c)) for x, c in zip(cand_s.tolist(), cand_i.tolist()) if c >= 0 and x > -1e30]
            for xs in ([x for x, _ in pairs], [x for x, c in pairs if c % vocab not in stops]):
                if len(xs) > k:
                    self.min[key] = min(self.min[key], xs[k - 1] - xs[k])
            return real(beams, cand_s, cand_i, vocab, cfg, step, stops)

        G.advance_beams = wrapped
        return self

    def __exit__(self, *exc):
        import paddle2ort.runtime.generation as G
        G.advance_beams = self._real

    def margins(self) -> list[float]:
        """The smallest decisive margin a source of the runs since the last call, in their order."""
        out = []
        for b in self.order:
            done = sorted((s for s, _ in b.done), reverse=True)
            out.append(min([self.min[id(b)]] + ([done[0] - done[1]] if len(done) > 1 else [])))
        self.order, self.min = [], {}
        return out


def near_tie_rows(got: list[list[int]], want: list[list[int]], margin_of, eps: float | None = None) -> dict:
    """Rows of `got` against the reference `want`: equal, parting at a near-tie (margin_of(i) <= eps, asked only
    for parting rows), or parting clearly (listed: row, margin)."""
    from paddle2ort.convert.seq2seq.eager import TIE_EPS
    eps = TIE_EPS if eps is None else eps
    equal, ties, clear = 0, [], []
    for i, (g, w) in enumerate(zip(got, want)):
        if g == w:
            equal += 1
            continue
        m = margin_of(i)
        (ties if m <= eps else clear).append((i, m))
    if len(got) != len(want):
        clear.append((min(len(got), len(want)), float("inf")))
    return {"rows": len(want), "equal": equal, "near_tie": ties, "clear": clear}


# ----------------------------------------------------------------------------- the device run (GPU, no Paddle)
DEVICE_FAMILIES = ("t5", "bart", "unimo")


def device_run(bundles: Path, device: str, out: Path, data: list[dict], repeats: int = 3, batch_size: int = 8,
               max_new_tokens: int = 16) -> dict:
    """The seq2seq bundles under `bundles` (one directory a family) on `device` (gpu: CUDA, no fallback; cpu: a
    dry run of the same code) against the same bundles on the CPU: greedy and 4-beam tokens equal up to
    near-ties (the CPU run's margins), samples/s and ms/sample of both. -> results (also out/seq2seq-gpu.json)."""
    import os

    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    from paddle2ort.runtime.session import SessionOptions
    from .env import git_commit
    families = [f for f in DEVICE_FAMILIES if (bundles / f / "manifest.json").is_file()]
    if not families:
        from paddle2ort.runtime.errors import BadInputError
        raise BadInputError(f"no seq2seq bundles under {bundles} (want {', '.join(DEVICE_FAMILIES)}/manifest.json); "
                            "build them with `python -m paddle2ort.benchmarks.seq2seq stage DIR`")
    rows = []
    for fam in families:
        cpu = Text2TextGenerator(bundles / fam, "fp32", SessionOptions(intra_op_threads=usable_cores()))
        dev = Text2TextGenerator(bundles / fam, "fp32", SessionOptions(device=device))   # gpu: CUDA or DeviceError
        providers = _providers(dev)
        ids = [cpu.prompt_ids(r["src"]) for r in data]
        batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
        for name, ours, _ in DECODES:
            cfg = GenerationConfig(max_new_tokens=max_new_tokens, **ours)
            with BeamMargins() as bm:
                cpu_passes, cpu_outs = _timed_passes(lambda b: cpu.generate_token_ids(b, cfg), batches, 1)
                beam = bm.margins()[-len(ids):] if ours.get("num_beams") else None
            dev_passes, dev_outs = _timed_passes(lambda b: dev.generate_token_ids(b, cfg), batches, repeats)
            want = [r for b in cpu_outs for r in b]
            got = [r for b in dev_outs for r in b]
            cmp = near_tie_rows(got, want, (lambda i: beam[i]) if beam is not None else (
                lambda i: greedy_tie_margin(cpu.model, ids[i], got[i], want[i], cpu.spec.eos_id)))
            rows.append({**_row("onnxruntime", fam, "fp32", name, dev_passes, len(ids), dev_outs, None),
                         "device": device, "providers": providers,
                         "cpu_ms_per_sample": 1e3 * cpu_passes[0] / len(ids), "vs_cpu": cmp})
            log.info("%s %s on %s: %.2f ms/sample (CPU %.2f); rows equal %d/%d, near-tie %d, clear %d", fam, name,
                     device, rows[-1]["ms_per_sample"], rows[-1]["cpu_ms_per_sample"], cmp["equal"], cmp["rows"],
                     len(cmp["near_tie"]), len(cmp["clear"]))
    res = {"benchmark": "seq2seq-device", "device": device, "samples": len(data), "batch_size": batch_size,
           "max_new_tokens": max_new_tokens, "repeats": repeats, "environment": environment(),
           "commit": git_commit(), "load_average_1m": os.getloadavg()[0],
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
           "passed": all(not r["vs_cpu"]["clear"] for r in rows)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "seq2seq-gpu.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return res


def _providers(gen) -> list[str]:
    m = gen.model
    sessions = [m.session] if hasattr(m, "session") else [m.enc_session, m.dec_session]
    return sorted({p for s in sessions for p in s.get_providers()})


def stage(cfg: Seq2SeqBenchConfig, dest: Path, data: list[dict]) -> dict:
    """The device run's bundles (fp32 only, tiny) built here from the benchmark's tiny models: dest/FAMILY."""
    import shutil

    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    from paddle2ort.convert.seq2seq.tiny import build_tiny
    texts = [r["src"] for r in data] + [r["tgt"] for r in data]
    sizes = {}
    for fam in DEVICE_FAMILIES:
        src = cfg.work / fam / "src"
        if not (src / "model" / "config.json").is_file():
            build_tiny(fam, src, texts)
        if (dest / fam).exists():
            shutil.rmtree(dest / fam)
        convert_seq2seq(Seq2SeqConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=dest / fam))
        sizes[fam] = sum(f.stat().st_size for f in (dest / fam).rglob("*") if f.is_file())
    return sizes


def device_main(argv: list[str]) -> int:
    """`device BUNDLES --device gpu|cpu --out DIR` (benchmarks/device/seq2seq_gpu.sh; cpu: the dry run) and
    `stage DIR` (builds the device run's bundles here)."""
    import sys

    from paddle2ort.runtime.errors import BadInputError, DeviceError
    p = argparse.ArgumentParser(prog="python -m paddle2ort.benchmarks.seq2seq device|stage")
    p.add_argument("verb", choices=("device", "stage"))
    p.add_argument("bundles", type=Path, help="one bundle directory a family (t5, bart, unimo)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="cpu: a dry run of the same code")
    p.add_argument("--out", type=Path, default=Path("out/seq2seq-device"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("out/bench-seq2seq"), help="stage: the tiny models (cached)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = read_dataset(DATASET)
    if a.verb == "stage":
        sizes = stage(Seq2SeqBenchConfig(work=a.work), a.bundles, data)
        print(json.dumps({"bundles": str(a.bundles), "bytes": sizes, "total_bytes": sum(sizes.values())}))
        return 0
    try:
        res = device_run(a.bundles, a.device, a.out, data, a.repeats)
    except (BadInputError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in res["rows"]:
        c = r["vs_cpu"]
        print(f"{r['family']:6} {r['decode']:12} {a.device}: {r['samples_per_s']:8.1f} samples/s "
              f"{r['ms_per_sample']:7.2f} ms/sample (CPU {r['cpu_ms_per_sample']:.2f}); rows equal "
              f"{c['equal']}/{c['rows']}, near-tie {len(c['near_tie'])}, clear {len(c['clear'])} "
              f"[{','.join(r['providers'])}]")
    print("PASSED" if res["passed"] else "FAILED: rows part from the CPU run at a clear margin")
    return 0 if res["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("device", "stage"):
        return device_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="t5,bart,mbart,unimo",
                   help="comma list of t5, bart, mbart, unimo, unified_transformer")
    p.add_argument("--work", type=Path, default=Path("out/bench-seq2seq"), help="models and bundles (cached)")
    p.add_argument("--output", type=Path, default=RESULTS, help="where results.json / results.md go")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=usable_cores())
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = run_bench(Seq2SeqBenchConfig(families=tuple(a.family.split(",")), work=a.work, output=a.output,
                                       repeats=a.repeats, threads=a.threads))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
