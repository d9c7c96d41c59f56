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
        rows_table([res]), "", "Targets:", "", targets_table(res["targets"]), ""])


def plot(res_list: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written (pip install 'paddle2ort[bench]')")
        return False
    rows = [r for res in res_list for r in res["rows"]]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    bars = ax.bar([r["name"] for r in rows], [r["ms_per_sample"] for r in rows], color="#4c72b0")
    for b, r in zip(bars, rows):
        ax.annotate(f"{r['accuracy'] * 100:.2f}%", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms / sample (model, batch %d)" % res_list[0]["config"]["batch_size"])
    ax.set_title(f"{res_list[0]['bundle']['name']}: latency (bars) and accuracy (labels)")
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
    if not plot([res], paths["png"]):
        paths.pop("png")
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
