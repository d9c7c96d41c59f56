"""Results of the GPU runs: JSON (everything) -> Markdown (what people read), written atomically. Pure functions;
`tests/test_gpu_bench.py` regenerates the committed Markdown from the committed JSON."""
from __future__ import annotations

import json
from pathlib import Path

from paddle2ort.runtime.files import atomic_write


def write(out: Path, stem: str, res: dict, md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{stem}.json", json.dumps(res, indent=2, default=str) + "\n")
    atomic_write(out / f"{stem}.md", md)


def fused_keys(r: dict) -> list[str]:
    """The fused variants a check run measured, in the order it ran them."""
    return [k for k, v in r.items() if k.endswith("_fused") and isinstance(v, dict) and "batched" in v]


def check_markdown(r: dict) -> str:
    d = r["device"]
    lines = [f"# GPU generation checks — {d['gpu']}", "",
             f"Golden: {r['golden']} (CPU loop = Paddle), {r['prompts']} prompts x {r['max_new_tokens']} greedy tokens.",
             "", "| model | loop | batched: token agreement | identical rows | one at a time: agreement | identical |",
             "|---|---|---:|---:|---:|---:|"]
    keys = [("fp32_generic", "host loop, CUDA EP + IO binding")] + [(k, "on-device (CUDA graph)") for k in fused_keys(r)]
    for key, loop in keys:
        if key in r:
            b, s = r[key]["batched"], r[key]["single"]
            lines.append(f"| {key} | {loop} | {100 * b['token_agreement']:.1f}% | {b['identical_rows']}/{b['rows']} | "
                         f"{100 * s['token_agreement']:.1f}% | {s['identical_rows']}/{s['rows']} |")
    tf = {k: r[k]["teacher_forced"] for k, _ in keys if k in r and "teacher_forced" in r[k]}
    if tf:
        lines += ["", "Teacher-forced (each position fed the golden prefix, so one flipped near-tie does not change "
                  "the rest of the row): " + ", ".join(f"{k} {100 * v['token_agreement']:.1f}% of {v['tokens']} "
                                                       "tokens" for k, v in tf.items())]
    if "oom" in r:
        lines += ["", f"Out of memory: raised={r['oom']['raised']}; message: `{r['oom'].get('message', '')}`; "
                  f"second: `{r['oom'].get('second_message', '')}`; decoder usable afterwards: "
                  f"{r['oom'].get('usable_after')}"]
    if "fp32_fused_on_gpu" in r:
        lines += ["", f"Fused fp32 decoder asked to run on the GPU: `{r['fp32_fused_on_gpu']}`"]
    if "beam_search" in r:
        bs = r["beam_search"]
        lines += ["", f"Beam search ({bs['config']}): " + ", ".join(
            f"GPU {k}: {100 * v['token_agreement']:.1f}% tokens, {v['identical_rows']}/{v['rows']} rows identical"
            for k, v in bs.items() if k != "config")]
    if "gpt2" in r:
        g = r["gpt2"]
        lines += ["", f"GPT-2 fused decoder ({g['geometry']}, {g['prompts']} prompts x {g['new']} greedy tokens), "
                  "token agreement: " + ", ".join(
                      f"{k.replace('_', ' ')}: {100 * g[k]['token_agreement']:.1f}% tokens, "
                      f"{g[k]['identical_rows']}/{g[k]['rows']} rows" for k in g if k.endswith("_vs_cpu_fp16")
                      or k.endswith("vs_cpu_fp32") and not k.startswith("prefill"))]
        prefill = {k[len("prefill_logits_"):].replace("_vs_cpu_fp32", ""): v for k, v in g.items()
                   if k.startswith("prefill_logits_")}
        if prefill:
            lines += ["", "GPT-2 prefill logits vs the CPU fp32 graph (every prompt position): " + ", ".join(
                f"{k}: max rel diff {v['max_rel_diff']:.2e}, cosine {v['cosine']:.6f}, argmax "
                f"{100 * v['argmax_agreement']:.1f}%" for k, v in prefill.items())]
    lines += ["", f"Seeded sampling reproducible on the device: {r.get('fp16_sampling_reproducible')}",
              "", f"Versions: {d['versions']}", ""]
    return "\n".join(lines)


def bench_markdown(r: dict) -> str:
    d = r["device"]
    lines = [f"# {r['config']} (random weights) on {d['gpu']}", "",
             f"Prompt {r['prompt_tokens']} random tokens, {r['new_tokens']} greedy new tokens; decode = tokens after "
             f"the first. Roofline: bytes read per step (weights + K/V at the mean context) / measured copy "
             f"bandwidth {r['copy_bandwidth_gb_s']:.0f} GB/s.", "",
             "| system | batch | TTFT ms | ms/step | tok/s per seq | tok/s aggregate | % HBM roofline |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(f"| {x['system']} | {x['batch']} | {x['ttft_ms']:.1f} | {x['step_ms']:.2f} | "
                     f"{x['tok_s_per_seq']:.0f} | {x['tok_s_aggregate']:.0f} | {x['pct_hbm_roofline']:.1f}% |")
    if r.get("errors"):
        lines += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    if r.get("genai_builder_error"):
        lines += ["", f"onnxruntime-genai builder failed: {r['genai_builder_error'][-500:]}"]
    for prec, pr in (r.get("profile_batch1") or {}).items():
        lines += ["", f"Profile, ours-{prec} batch 1 (CUPTI): {pr['kernels_per_step']:.0f} kernels a step, GPU busy "
                  f"{pr['gpu_busy_us_per_step']:.0f} us of {pr['wall_us_per_step']:.0f} us wall; top kernels:", "",
                  "| kernel | per step | us per step |", "|---|---:|---:|"]
        lines += [f"| `{k}` | {v['count_per_step']:.0f} | {v['us_per_step']:.1f} |" for k, v in pr["top_kernels"].items()]
    lines += ["", f"Token agreement with HF eager, first 16 tokens: {r['agreement_first16_vs_hf_eager']}",
              "", f"Versions: {d['versions']}", ""]
    return "\n".join(lines)


SUMMARY_SYSTEMS = (("ours-fp16-head32", "ours FP16, float32 head (default)"), ("ours-fp16", "ours FP16, float16 head"),
                   ("ours-int4", "ours int4 (float zero points)"), ("onnxruntime-genai", "onnxruntime-genai FP16"),
                   ("onnxruntime-genai (CUDA graph)", "onnxruntime-genai FP16 + CUDA graph"),
                   ("hf-eager", "HF transformers eager"), ("hf-torch.compile", "HF transformers torch.compile"))


def peer_summary(r: dict, batches: tuple[int, int] = (1, 8)) -> str:
    """One line per system: batch-1 tok/s, TTFT and % roofline; batch-8 tok/s per sequence and aggregate
    ("fails" where the run recorded an error for that system and batch, "—" where it did not run)."""
    b1, b8 = batches
    rows = {(x["system"], x["batch"]): x for x in r["rows"]}
    errors = r.get("errors") or {}
    lines = [f"| system | b{b1} tok/s | b{b1} TTFT ms | b{b1} % roofline | b{b8} tok/s/seq | b{b8} aggregate |",
             "|---|---:|---:|---:|---:|---:|"]
    for system, label in SUMMARY_SYSTEMS:
        one = rows.get((system, b1))
        if one is None:
            continue
        eight = rows.get((system, b8))
        if eight is not None:
            tail = f"{eight['tok_s_per_seq']:,.0f} | {eight['tok_s_aggregate']:,.0f}"
        else:
            tail = "fails | —" if f"{system} b{b8}" in errors else "— | —"
        lines.append(f"| {label} | {one['tok_s_per_seq']:,.0f} | {one['ttft_ms']:.1f} | {one['pct_hbm_roofline']:.1f}% "
                     f"| {tail} |")
    return "\n".join(lines)
