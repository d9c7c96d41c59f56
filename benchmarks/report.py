"""Results files: JSON (everything), Markdown (the table people read), PNG (the plot); merging runs into one table.

python -m paddle2ort.benchmarks.report RUN1.json RUN2.json -o RESULTS.md   # rows of several runs, each with its device
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from paddle2ort.runtime.files import atomic_path, atomic_write

log = logging.getLogger(__name__)


def machine_label(env: dict, device: str) -> str:
    if device == "gpu" and env.get("gpus"):
        return env["gpus"][0].split(",")[0]
    return f"{env.get('cpu', 'cpu')} ({env.get('usable_cores', '?')} cores)"


def rows_table(results: list[dict]) -> str:
    lines = ["| configuration | accuracy (%) | ms/sample (model) | tokenize ms/sample | p50 / p90 batch ms | "
             "samples/s | agree w/ FP32 | machine |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        bs = res["config"]["batch_size"]
        for r in res["rows"]:
            agree = "-" if r.get("argmax_agreement_vs_fp32") is None else f"{r['argmax_agreement_vs_fp32']:.4f}"
            lines.append(f"| {r['name']} | {r['accuracy'] * 100:.2f} | {r['ms_per_sample']:.3f} | "
                         f"{r['tokenize_ms_per_sample']:.3f} | {r['p50_batch_ms']:.1f} / {r['p90_batch_ms']:.1f} | "
                         f"{r['throughput']:.0f} | {agree} | {machine_label(res['environment'], r['device'])}, "
                         f"bs {bs} |")
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    if not targets:
        return "_no target applies to the rows of this run_"
    lines = ["| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['target_value']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


# the int8 dot-product instructions MLAS's INT8 GEMM uses: x86 VNNI / AMX, aarch64 SDOT/UDOT and I8MM
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def isa_note(res: dict) -> str | None:
    """Why a missed INT8 speed target may be the CPU: one line when the run's CPU (recorded ISA flags) has no int8
    dot-product instructions."""
    flags = res["environment"].get("cpu_simd_flags")
    missed = any(t["target"] == "INT8-CPU speed-up over FP32-CPU" and not t["met"] for t in res.get("targets", []))
    if not missed or flags is None or any(f in flags for f in INT8_DOT):
        return None
    return (f"INT8 speed-up below the line on this CPU: it has no int8 dot-product instructions "
            f"({', '.join(INT8_DOT)}; it reports {', '.join(flags) or 'none of the recorded flags'}), where "
            "onnxruntime's INT8 GEMM gains much less over FP32 than on AVX-512 VNNI / AMX hosts "
            "(benchmarks/results/encoder/README.md). The INT8 gates judge accuracy, not this speed row.")


def markdown(res: dict) -> str:
    env = res["environment"]
    cfg = res["config"]
    vers = ", ".join(f"{k} {v}" for k, v in sorted(env["versions"].items()))
    return "\n".join([
        f"# {res['benchmark']}: {res['bundle']['name']} on {res['dataset']['split']} "
        f"({res['dataset']['samples']} samples)", "",
        f"Run {res['created_at']} (commit {env.get('git_commit')}); CPU: {env['cpu']}, {env['usable_cores']} usable "
        f"cores, {cfg['threads']} threads; GPU: {', '.join(env['gpus']) or 'none'}.",
        f"Batch size {cfg['batch_size']}, {cfg['warmup']} warm-up batches, median of {cfg['repeats']} passes. "
        f"Versions: {vers}.", "",
        rows_table([res]), "", "Targets:", "", targets_table(res["targets"]), "",
        *((note, "") if (note := isa_note(res)) else ())])


def headline(rows: list[tuple[dict, dict]]) -> str:
    """The ratios a reader looks for, from the rows plotted: INT8 over FP32, and FP32 against the Paddle peer."""
    by = {r["name"]: r for r, _ in rows}
    parts = []
    for name in by:
        if name.startswith("INT8-") and f"FP32-{name[5:]}" in by:
            parts.append(f"{name} {by[f'FP32-{name[5:]}']['ms_per_sample'] / by[name]['ms_per_sample']:.2f}x "
                         f"faster than FP32")
    peer = next((r for r, _ in rows if r["system"] != "onnxruntime"), None)
    fp32 = next((r for r, _ in rows if r["system"] == "onnxruntime" and r["precision"] == "fp32"), None)
    if peer and fp32:
        ratio = peer["ms_per_sample"] / fp32["ms_per_sample"]
        parts.append(f"{fp32['name']} {max(ratio, 1 / ratio):.2f}x {'faster' if ratio >= 1 else 'slower'} than "
                     f"{peer['name']}")
    return "; ".join(parts)


def pyplot():
    """matplotlib.pyplot on the file backend, or None (with a warning naming the extra) when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written (pip install 'paddle2ort[bench]')")
        return None
    return plt


def plot(res_list: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    rows = [(r, res) for res in res_list for r in res["rows"]]
    peer = ["#4c72b0" if r["system"] == "onnxruntime" else "#dd8452" for r, _ in rows]   # peers in orange
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2.5, 4.4))
    bars = ax.bar([r["name"] for r, _ in rows], [r["ms_per_sample"] for r, _ in rows], color=peer)
    for b, (r, _) in zip(bars, rows):
        ax.annotate(f"{r['ms_per_sample']:.2f} ms\n{r['accuracy'] * 100:.2f}%",
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    devices = sorted({machine_label(res["environment"], r["device"]) for r, res in rows})
    ax.set_ylabel("ms / sample, lower is better (model, batch %d)" % res_list[0]["config"]["batch_size"])
    ax.set_title(f"{res_list[0]['bundle']['name']} on {'; '.join(devices)}\n"
                 f"{headline(rows) or 'latency (bars), accuracy (labels)'}", fontsize=9)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color="#4c72b0", label="paddle2ort (onnxruntime)"),
                       Patch(color="#dd8452", label="peer (Paddle)")][:2 if "#dd8452" in peer else 1],
              fontsize=8, loc="upper right")
    ax.set_ylim(0, max(r["ms_per_sample"] for r, _ in rows) * 1.25)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


def write_results(res: dict, out_dir: Path, stem: str = "results") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    atomic_write(paths["json"], json.dumps(res, indent=2) + "\n")
    atomic_write(paths["md"], markdown(res))
    if not plot([res], paths["png"]):       # no matplotlib: an earlier run's plot (ours: check_output_dir) goes
        paths.pop("png").unlink(missing_ok=True)
    return paths


def merge(json_paths: list[Path]) -> tuple[str, list[dict]]:
    """One Markdown table over several runs (e.g. a CPU run with the Paddle peer + a GPU run); targets are judged
    within each run only, since ratios are compared side by side in one run."""
    from .classifier import evaluate_targets
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in json_paths]
    parts = [rows_table(runs), ""]
    for p, res in zip(json_paths, runs):
        parts += [f"Targets within `{Path(p).name}` ({machine_label(res['environment'], res['config']['device'])}):",
                  "", targets_table(evaluate_targets(res["rows"])), ""]
    return "\n".join(parts), runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True, help="Markdown file (a .png beside it)")
    args = ap.parse_args(argv)
    text, runs = merge(args.runs)
    atomic_write(args.output, text)
    plot(runs, args.output.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
