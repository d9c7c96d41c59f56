"""Where a decode step's time goes: onnxruntime's profiler over the decode loop, per operator type.

    python -m paddle2ort.benchmarks.llm_profile BUNDLE --precision fp32 --threads 2 --output DIR

runs the bundle's users' graph (`generate --graph auto`; `--graph generic` the paddle2onnx one) through the decode
loop — a warm-up generation, then one prompt of `--prompt-len` tokens and `--new-tokens` greedy tokens, batch 1 —
with onnxruntime's profiler on, and writes per operator type the kernel microseconds and calls of one decode step
(medians are not taken: sums over the decode steps / steps), beside the step's wall time in the profiler
(`llm-profile-PRECISION[-GRAPH].json` / `.md` in `--output`). The aggregation is written here because onnxruntime's profiler writes raw events only
(a Chrome trace); the trace is deleted after it is read.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError


def op_time_per_step(events: list[dict], decode_runs: int) -> dict:
    """From onnxruntime profiler events: the last `decode_runs` `model_run` events are the decode steps; the node
    kernels inside them are summed per operator type and divided by the steps."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if decode_runs < 1 or len(runs) < decode_runs:
        raise BadInputError(f"the trace has {len(runs)} model runs, fewer than the {decode_runs} decode steps asked "
                            "for")
    steps = runs[-decode_runs:]
    windows = [(r["ts"], r["ts"] + r["dur"]) for r in steps]
    us, calls = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if any(a <= e["ts"] < b for a, b in windows):
            op = e.get("args", {}).get("op_name", "?")
            us[op] += e["dur"]
            calls[op] += 1
    n = len(steps)
    kernels = sum(us.values()) / n
    step = statistics.median(r["dur"] for r in steps)
    ops = [{"op": op, "us_per_step": us[op] / n, "calls_per_step": calls[op] / n,
            "share_of_kernels": us[op] / n / kernels if kernels else 0.0}
           for op in sorted(us, key=lambda o: -us[o])]
    return {"decode_steps": n, "step_us_median": step, "kernel_us_per_step": kernels,
            "outside_kernels_us_per_step": statistics.mean(r["dur"] for r in steps) - kernels, "ops": ops}


def profile_bundle(bundle: Path, precision: str, prompt_len: int = 128, new_tokens: int = 64, threads: int = 0,
                   spin_wait: bool = True, graph: str = "auto") -> dict:
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.session import SessionOptions
    from paddle2ort.runtime.timing import time_generation

    from .env import cpu_info, environment, usable_cores
    from .llm import bench_prompts
    if new_tokens < 2:
        raise BadInputError("--new-tokens must be at least 2 (the first token comes from the prompt pass)")
    threads = threads or usable_cores()
    with tempfile.TemporaryDirectory(prefix="p2o-prof-") as tmp:
        so = SessionOptions(intra_op_threads=threads, intra_op_spinning=None if spin_wait else False,
                            profile_prefix=str(Path(tmp) / "ort"))
        # auto: the bundle's default onnxruntime graph (the compiled CPU step has no session to profile; its
        # phases: runtime.kernels.cpu.phase_seconds)
        gen = TextGenerator(bundle, precision=precision, session=so, graph=graph, compiled_step=False)
        session = getattr(gen.model, "session", None)
        if session is None:
            raise BadInputError(f"graph {graph!r} of {bundle} does not run through one onnxruntime session; profile "
                                "--graph auto, fused or generic")
        pad = gen.tokenizer.pad_token_id
        prompts = bench_prompts(gen.tokenizer, 1, prompt_len)
        time_generation(gen.model, [p[:16] for p in prompts], 4, pad)          # warm-up
        timed = time_generation(gen.model, prompts, new_tokens, pad)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
    prof = op_time_per_step(events, new_tokens - 1)
    return {"benchmark": "llm-profile", "bundle": str(bundle), "precision": precision, "graph": graph,
            "threads": threads, "spin_wait": spin_wait, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "decode_ms_per_step_profiled_loop": timed["decode_ms_per_step"],
            "cpu": cpu_info(threads), "environment": environment(), **prof}


def markdown(r: dict) -> str:
    lines = [f"# Decode step profile: {r['precision']} ({r['graph']} graph), batch 1, prompt {r['prompt_len']}",
             "",
             f"onnxruntime's profiler over {r['decode_steps']} decode steps, {r['threads']} threads, spinning "
             f"{'on (default)' if r['spin_wait'] else 'off'}; CPU {(r.get('cpu') or {}).get('model', '?')}. "
             f"Step (profiler's model_run, median) {r['step_us_median'] / 1e3:.2f} ms; node kernels "
             f"{r['kernel_us_per_step'] / 1e3:.2f} ms a step; outside the kernels (executor, allocation; mean "
             f"step minus kernels) {r['outside_kernels_us_per_step'] / 1e3:.2f} ms. The loop's own ms/step with the profiler on: "
             f"{r['decode_ms_per_step_profiled_loop']:.2f}.",
             "", "| operator | µs / step | calls / step | share of kernel time |", "|---|---|---|---|"]
    lines += [f"| {o['op']} | {o['us_per_step']:,.0f} | {o['calls_per_step']:.0f} | {100 * o['share_of_kernels']:.1f}% |"
              for o in r["ops"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from paddle2ort.runtime.files import atomic_path
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--graph", default="auto", choices=["auto", "fused", "generic"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-spin", action="store_true", help="intra-op threads sleep between ops")
    ap.add_argument("--output", type=Path, required=True, help="directory for llm-profile-PRECISION.json/.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    r = profile_bundle(args.bundle, args.precision, args.prompt_len, args.new_tokens, args.threads,
                       not args.no_spin, args.graph)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"llm-profile-{args.precision}{'' if args.graph == 'auto' else '-' + args.graph}"
    for suffix, text in ((".json", json.dumps(r, indent=1)), (".md", markdown(r))):
        with atomic_path(args.output / (stem + suffix), suffix=suffix) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
