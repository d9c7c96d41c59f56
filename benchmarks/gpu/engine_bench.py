"""The kernel engine (runtime/kernels/engine.py) against the onnxruntime fused graph on the same fused-decoder
files, one GPU run: SmolLM2's golden rows (token parity within the near-tie rule) and the speed table — SmolLM2 and
the Qwen2.5-0.5B config (random weights), FP16 (float32 head, the default) and int4, batch 1 and 8, prompt 128 + 128
new and 2,048 + 256 new; TTFT, decode tokens/s and % of the measured copy bandwidth (`roofline`).

    python -m paddle2ort.benchmarks.gpu.engine_bench run --out DIR [--gguf F --golden G] [--no-ort]
    python -m paddle2ort.benchmarks.gpu.engine_bench report DIR      # Markdown + plot + verdicts from the JSON
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .common import CONFIGS, agreement, kernel_times, pad_id, random_prompts, special_ids

log = logging.getLogger(__name__)

VARIANTS = {"fp16": ("fp16", "float32"), "int4": ("int4", None)}     # name -> (precision, head dtype)
SCENARIOS = ((128, 128), (2048, 256))
TIE = 1e-2                     # the fp16 gate's tie margin: a flip where the oracle's top-2 gap < TIE x range is a tie
OURS, ORT = "ours (kernel engine)", "onnxruntime fused graph"
OURS_V1 = "ours (kernel engine, v1 GEMVs)"        # the first GEMV kernels beside the default ones (--also-v1)
OURS_V2 = "ours (kernel engine, v2 GEMVs)"        # float32-activation GEMVs beside the tensor-core v3 (--also-v2)
OURS_V3 = "ours (kernel engine, v3 GEMVs)"        # the tensor-core GEMVs everywhere they fit (--also-v3)
OURS_NO_PDL = "ours (kernel engine, no PDL)"      # the default kernels launched without programmatic dependent launch
OURS_ATT_V1 = "ours (kernel engine, v1 attention)"   # the three-phase attention kernel beside attn_online
OURS_PERSISTENT = "ours (kernel engine, persistent step)"   # every layer in one kernel (persistent.py)
OURS_PIPE = "ours (kernel engine, pipelined launch)"   # each kernel launched one kernel ahead (pipeline=True)
OURS_PLAIN = "ours (kernel engine, plain prompt pass)"   # the prompt pass launched as it is (prompt_graphs=False)
SHORT = {OURS: "ours", OURS_V1: "ours, v1 GEMVs", OURS_V2: "ours, v2 GEMVs", OURS_V3: "ours, v3 GEMVs",
         OURS_NO_PDL: "ours, no PDL", OURS_ATT_V1: "ours, v1 attention", OURS_PERSISTENT: "ours, persistent step",
         OURS_PIPE: "ours, pipelined launch", OURS_PLAIN: "ours, plain prompt pass",
         ORT: "onnxruntime"}  # plot legend
# system -> KernelEngine options; run() sets OURS's from --gemv / --pdl / --attention, and the variants from OURS's
ENGINE = {OURS: {"gemv": "auto", "pdl": None, "attention": None}, OURS_V1: {"gemv": "v1", "pdl": None}}
ENGINE[OURS_PLAIN] = dict(ENGINE[OURS], prompt_graphs=False)
CHUNK: dict = {"chunk": None}                     # KernelEngine(chunk=...): run() sets it from --chunk


def _decoder(system: str, path: Path, spec: dict, capacity: int, prefill: str = "auto"):
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.kernels.engine import KernelEngine
    from paddle2ort.runtime.session import SessionOptions
    if system in ENGINE:
        return KernelEngine(path, spec, device="gpu", max_length=capacity, prefill=prefill, chunk=CHUNK["chunk"],
                            **ENGINE[system])
    dec = FusedDecoder(path, spec, session=SessionOptions(device="gpu"), max_length=capacity)
    if dec.session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the fused graph runs on {dec.session.get_providers()}, not CUDA")
    return dec


def time_decoder(dec, prompts: np.ndarray, new: int, reps: int, pad: int) -> dict:
    """The peer benchmark's timing loop (prompt + first token, then the rest) over any Decoder."""
    from paddle2ort.runtime.generation import GenerationConfig, Generator

    from .peer import timed_generation
    cfg, rows = GenerationConfig(max_new_tokens=new), prompts.tolist()

    def first_token():
        gen = Generator(dec, cfg, pad)
        gen.append_tokens(rows)
        gen.generate_next_token()
        dec.synchronize()
        return gen

    def rest(gen):
        while not gen.is_done():
            gen.generate_next_token()
        dec.synchronize()

    r = timed_generation(reps, first_token, rest)
    r["tokens"] = r.pop("state").results()
    return r


def time_engine(path: Path, spec: dict, prompts: np.ndarray, new: int, reps: int, pad: int,
                system: str = OURS) -> dict:
    """The kernel engine (or a variant of it, a key of ENGINE) through the timing loop, one fused file
    (peer.bench's `--systems engine` / `engine-plain-prompt` rows)."""
    dec = _decoder(system, path, spec, prompts.shape[1] + new)
    try:
        r = time_decoder(dec, prompts, new, reps, pad)
        r["gpu_step_us"] = graph_step_us(dec, prompts.shape[0])
        return r
    finally:
        dec.release()


def bench_config(name: str, work: Path, systems: list[str], batches, scenarios, reps: int, bandwidth: float,
                 budget_end: float) -> dict:
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, random_state

    from .peer import HF_INIT_STD
    from .roofline import decode_row, initializer_bytes
    c = dict(CONFIGS[name])
    arch = c.pop("arch")
    spec = DecoderSpec.from_config(c, qkv_bias=arch == "qwen2")
    t = time.perf_counter()
    state = random_state(spec, seed=0, std=HF_INIT_STD)
    paths, weights = {}, {}
    for v, (prec, head) in VARIANTS.items():
        paths[v] = work / f"{name}.fused.{v}.onnx"
        if not paths[v].exists():
            build_variant(spec, state, prec, paths[v], head_dtype=head)
        weights[v] = initializer_bytes(paths[v])
    del state
    log.info("%s: variants built in %.0f s", name, time.perf_counter() - t)
    pad, cap = pad_id(CONFIGS[name]), max(p + n for p, n in scenarios)
    res = {"config": name, "spec": spec.to_json(), "weight_bytes": weights, "rows": [], "parity": {}, "skipped": []}
    for v in VARIANTS:
        tokens = {}
        for system in systems:
            try:
                dec = _decoder(system, paths[v], spec.to_json(), cap)
            except Exception as e:  # noqa: BLE001 - recorded, the other system still runs
                res["skipped"].append(f"{system} {v}: {type(e).__name__}: {e}")
                continue
            for p, n in scenarios:
                for b in batches:
                    if time.perf_counter() > budget_end:
                        res["skipped"].append(f"{system} {v} b{b} {p}+{n}: over the time budget")
                        continue
                    prompts = random_prompts(np.random.default_rng(b * 7 + p), b, p, spec.vocab_size,
                                             special_ids(CONFIGS[name]))
                    try:
                        r = time_decoder(dec, prompts, n, reps, pad)
                    except Exception as e:  # noqa: BLE001 - recorded, the other rows still run
                        log.exception("%s %s b%d %d+%d failed", system, v, b, p, n)
                        res["skipped"].append(f"{system} {v} b{b} {p}+{n}: {type(e).__name__}: {e}")
                        continue
                    row = decode_row(system, v, b, r["ttft_ms"], r["decode_s"], new_tokens=n, prompt_tokens=p,
                                     weight_bytes=weights[v], spec=spec.to_json(), bandwidth=bandwidth)
                    row.update(prompt=p, new=n)
                    if system != ORT:
                        row["gpu_step_us"] = graph_step_us(dec, b)
                        row["prefill_by"] = dec.prefill_by
                        row["gemv"], row["pdl"], row["pipeline"] = dec.gemv, dec.pdl, dec.pipeline
                        if dec.gemv == "auto":
                            row["gemv_plans"] = {k: v for k, v in dec.plans_chosen().items() if k.endswith(f" b{b}")}
                        st = dec.states.get(b)
                        row["step"] = "persistent" if st is not None and st.step is not None else "kernels"
                        if b in dec.steps_timed:
                            row["step_timed_us"] = dec.steps_timed[b]
                    res["rows"].append(row)
                    tokens[(system, p, b)] = r["tokens"]
                    log.info("%s %s %s b%d %d+%d: %.0f tok/s/seq, %.1f%% of copy bw, TTFT %.1f ms", name, system, v,
                             b, p, n, row["tok_s_per_seq"], row["pct_hbm_roofline"], row["ttft_ms"])
            if system != ORT:
                dec.release()
            del dec
        for (s, p, b), toks in tokens.items():              # random weights: agreement is informative only
            if s == OURS and (ORT, p, b) in tokens:
                res["parity"][f"{v} b{b} {p}+"] = agreement(toks, tokens[(ORT, p, b)])
            elif s in ENGINE and s != OURS and (OURS, p, b) in tokens:   # a variant of ours against ours
                res.setdefault("variant_parity", {})[f"{SHORT[s]} {v} b{b} {p}+"] = agreement(
                    toks, tokens[(OURS, p, b)])
    return res


def graph_step_us(dec, batch: int, reps: int = 50) -> float | None:
    """GPU time of our captured decode step alone (replays of the batch's CUDA graph; the loop's Python is out)."""
    import cupy as cp
    st = dec.states.get(batch)
    if st is None or st.graph is None:
        return None
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(dec.stream)
    for _ in range(reps):
        st.graph.launch(dec.stream)
    end.record(dec.stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / reps * 1e3


def forced_logits(dec, prompts: list[list[int]], cont: np.ndarray) -> np.ndarray:
    """Logits [B, n, V] of the prompt's last token and of each forced continuation token (the decode steps)."""
    b, n = cont.shape
    dec.start(b)
    with dec.on_stream():
        logits, rows = dec.append(prompts, np.zeros(b, np.int64), n + 1)
        out = [dec.host(logits if rows is None else logits[rows]).astype(np.float32).reshape(b, -1)]
        for j in range(n - 1):
            dec.next_ids[:, 0] = dec.xp.asarray(cont[:, j])
            dec.seqlens[...] += 1
            out.append(dec.host(dec.step(None)[0]).astype(np.float32).reshape(b, -1))
    return np.stack(out, 1)


def near_tie_mismatches(ours: np.ndarray, oracle: np.ndarray, tie: float = TIE) -> dict:
    """Positions where the argmax differs, split into decisive ones (the oracle's top-2 gap > tie x its row's
    range) and near-ties."""
    a, o = ours.argmax(-1), oracle.argmax(-1)
    top2 = np.sort(oracle, -1)[..., -2:]
    gap = (top2[..., 1] - top2[..., 0]) / (oracle.max(-1) - oracle.min(-1))
    diff = a != o
    return {"positions": int(a.size), "argmax_agreement": float(1 - diff.mean()),
            "decisive_mismatches": int((diff & (gap > tie)).sum()),
            "near_tie_mismatches": int((diff & (gap <= tie)).sum())}


def golden_parity(gguf: Path, golden: Path, work: Path, with_ort: bool) -> dict:
    """SmolLM2 (real weights from the GGUF the golden rows' Paddle model was made of), FP16 with a float32 head:
    ours vs the golden rows and vs the onnxruntime fused graph, free-running greedy and teacher-forced."""
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.convert.zoo.smollm2 import read_gguf, to_paddlenlp
    from paddle2ort.runtime.generation import GenerationConfig, generate

    from .common import gguf_special_ids
    g = json.loads(Path(golden).read_text())
    prompts, want = [r["prompt_ids"] for r in g["rows"]], [r["ids"] for r in g["rows"]]
    cfg, tensors, tok = read_gguf(Path(gguf))
    cfg = {**cfg, **gguf_special_ids(tok), "tie_word_embeddings": True}
    spec, pad = DecoderSpec.from_config(cfg), pad_id(cfg)
    path = work / "smollm2.fused.fp16-head32.onnx"
    build_variant(spec, to_paddlenlp(cfg, tensors), "fp16", path, head_dtype="float32")
    greedy = GenerationConfig(max_new_tokens=int(g["max_new_tokens"]))
    out = {"model": "SmolLM2-135M (GGUF weights), fused FP16, float32 head", "rows": len(prompts),
           "tie_margin": TIE}
    ours = _decoder(OURS, path, spec.to_json(), 256, prefill="kernels")    # every logit ours
    got = generate(ours, prompts, greedy, pad)
    out["ours_vs_golden"] = agreement(got, want)
    cont = np.array(want, np.int64)
    lo = forced_logits(ours, prompts, cont)
    out["ours_teacher_forced_vs_golden"] = float((lo.argmax(-1) == cont).mean())
    if with_ort:
        ort = _decoder(ORT, path, spec.to_json(), 256)
        got_ort = generate(ort, prompts, greedy, pad)
        out["ort_vs_golden"] = agreement(got_ort, want)
        out["ours_vs_ort"] = agreement(got, got_ort)
        lr = forced_logits(ort, prompts, cont)
        out["ort_teacher_forced_vs_golden"] = float((lr.argmax(-1) == cont).mean())
        out["ours_vs_ort_teacher_forced"] = near_tie_mismatches(lo, lr)
        out["logits_max_abs_diff_over_range"] = float(np.max(np.abs(lo - lr)) / (lr.max() - lr.min()))
    return out


def run(a) -> dict:
    import cupy as cp

    from paddle2ort.runtime.kernels.bench import copy_bandwidth

    from .common import device_info
    start = time.perf_counter()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth(cp)
    ENGINE[OURS] = {"gemv": a.gemv, "pdl": {"auto": None, "on": True, "off": False}[a.pdl],
                    "attention": None if a.attention == "auto" else a.attention, "step": a.step}
    ENGINE[OURS_PERSISTENT] = dict(ENGINE[OURS], step="persistent")
    ENGINE[OURS_NO_PDL] = dict(ENGINE[OURS], pdl=False)
    ENGINE[OURS_PIPE] = dict(ENGINE[OURS], pipeline=True)
    ENGINE[OURS_PLAIN] = dict(ENGINE[OURS], prompt_graphs=False)
    ENGINE[OURS_ATT_V1] = dict(ENGINE[OURS], attention="v1")
    ENGINE[OURS_V2] = dict(ENGINE[OURS], gemv="v2")
    ENGINE[OURS_V3] = dict(ENGINE[OURS], gemv="v3")
    CHUNK["chunk"] = a.chunk
    res = {"device": device_info(), "copy_bandwidth_gb_s": bw / 1e9, "reps": a.reps, "gemv": a.gemv, "step": a.step,
           "pdl": a.pdl, "attention": a.attention, "attention_chunk": a.chunk or "engine default",
           "systems": [OURS] + ([ORT] if a.ort else []) + ([OURS_NO_PDL] if a.also_no_pdl else [])
           + ([OURS_V3] if a.also_v3 else []) + ([OURS_V2] if a.also_v2 else []) + ([OURS_V1] if a.also_v1 else [])
           + ([OURS_ATT_V1] if a.also_attention_v1 else []) + ([OURS_PERSISTENT] if a.also_persistent_step else [])
           + ([OURS_PIPE] if a.also_pipeline else []) + ([OURS_PLAIN] if a.also_plain_prompt else []),
           "configs": {}}
    if a.gguf:
        try:
            res["golden"] = golden_parity(Path(a.gguf), Path(a.golden), work, a.ort)
            log.info("golden: %s", res["golden"])
        except Exception as e:  # noqa: BLE001 - recorded, the speed table still runs
            log.exception("golden parity failed")
            res["golden"] = {"error": f"{type(e).__name__}: {e}"}
    scen = [tuple(int(x) for x in s.split(":")) for s in a.scenarios]
    from .report import write
    for name in a.configs:
        write(a.out, "engine-bench", res, markdown(res))        # what is done so far survives a time-out
        res["configs"][name] = bench_config(name, work, res["systems"], a.batch, scen, a.reps, bw,
                                            start + a.budget_s)
    res["seconds"] = time.perf_counter() - start
    return res


# ----------------------------------------------------------------------------- report (pure, from the JSON)
def row(res: dict, config: str, system: str, variant: str, batch: int, prompt: int) -> dict | None:
    for r in res["configs"].get(config, {}).get("rows", []):
        if (r["system"], r["precision"], r["batch"], r["prompt"]) == (system, variant, batch, prompt):
            return r
    return None


def verdicts(res: dict, config: str = "qwen2.5-0.5b") -> list[dict]:
    """The issue's targets, computed from the run (None where a row is missing)."""
    def val(fn):
        try:
            return fn()
        except (TypeError, KeyError, ZeroDivisionError):
            return None
    r = lambda *k: row(res, config, *k)  # noqa: E731
    gold = res.get("golden", {})
    out = [
        ("% of copy bandwidth, 0.5B FP16 batch 1 (128+128)", ">=", 60.0,
         val(lambda: r(OURS, "fp16", 1, 128)["pct_hbm_roofline"])),
        ("ours / onnxruntime fused graph, 0.5B FP16 batch 1 (128+128)", ">=", 1.5,
         val(lambda: r(OURS, "fp16", 1, 128)["tok_s_per_seq"] / r(ORT, "fp16", 1, 128)["tok_s_per_seq"])),
        ("int4 / FP16 tokens/s, 0.5B batch 1 (128+128)", ">=", 1.8,
         val(lambda: r(OURS, "int4", 1, 128)["tok_s_per_seq"] / r(OURS, "fp16", 1, 128)["tok_s_per_seq"])),
        ("long (2048+256) / short (128+128) tokens/s, 0.5B FP16 batch 1", ">=", 0.8,
         val(lambda: r(OURS, "fp16", 1, 2048)["tok_s_per_seq"] / r(OURS, "fp16", 1, 128)["tok_s_per_seq"])),
        ("batch-8 aggregate / batch 1, 0.5B FP16 (128+128)", ">=", 6.0,
         val(lambda: r(OURS, "fp16", 8, 128)["tok_s_aggregate"] / r(OURS, "fp16", 1, 128)["tok_s_aggregate"])),
        ("TTFT ours / onnxruntime fused graph, 0.5B FP16 batch 1 (2048+256)", "<=", 1.0,
         val(lambda: r(OURS, "fp16", 1, 2048)["ttft_ms"] / r(ORT, "fp16", 1, 2048)["ttft_ms"])),
        ("SmolLM2 golden rows: decisive teacher-forced mismatches vs the fused graph", "==", 0,
         val(lambda: gold["ours_vs_ort_teacher_forced"]["decisive_mismatches"])),
    ]
    return [{"target": t, "op": op, "threshold": thr, "value": v,
             "met": None if v is None else (v >= thr if op == ">=" else v <= thr if op == "<=" else v == thr)}
            for t, op, thr, v in out]


def markdown(res: dict) -> str:
    d = res["device"]
    lines = [f"# Kernel engine vs the onnxruntime fused graph — {d['gpu']}", "",
             f"Device: {d['gpu']} ({d.get('nvidia_smi', '')}); copy bandwidth {res['copy_bandwidth_gb_s']:,.0f} GB/s "
             f"(read + write, measured in the run); median of {res['reps']} timed passes; versions "
             f"{json.dumps(d.get('versions', {}))}.", "", "## Targets (computed from this run)", "",
             "| target | wanted | value | met |", "|---|---|---|---|"]
    for v in verdicts(res):
        val = "–" if v["value"] is None else f"{v['value']:.3g}"
        lines.append(f"| {v['target']} | {v['op']} {v['threshold']} | {val} | "
                     f"{'–' if v['met'] is None else 'yes' if v['met'] else 'no'} |")
    g = res.get("golden")
    if g:
        lines += ["", "## SmolLM2 golden rows (real weights, FP16, float32 head)", "", "```",
                  json.dumps(g, indent=1), "```"]
    for name, c in res["configs"].items():
        lines += ["", f"## {name} (random weights)", "",
                  "| system | weights | batch | prompt+new | TTFT ms | step ms | tok/s/seq | tok/s aggregate | "
                  "% copy bw | GPU µs/step (graph alone) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['system']} | {r['precision']} | {r['batch']} | {r['prompt']}+{r['new']} | "
                         f"{r['ttft_ms']:.1f} | {r['step_ms']:.3f} | {r['tok_s_per_seq']:,.0f} | "
                         f"{r['tok_s_aggregate']:,.0f} | {r['pct_hbm_roofline']:.1f} | "
                         + (f"{r['gpu_step_us']:.0f}" if r.get("gpu_step_us") else "–") + " |")
        if c.get("parity"):
            lines += ["", "Greedy token agreement ours vs the fused graph (random weights: near-ties abound, "
                      "informative only): " + "; ".join(f"{k} {v['token_agreement']:.1%}"
                                                         for k, v in c["parity"].items())]
        if c.get("variant_parity"):
            lines += ["", "Greedy token agreement of each variant of ours with ours (the same arithmetic launched "
                      "differently agrees fully; other GEMV plans may flip near-ties): "
                      + "; ".join(f"{k} {v['token_agreement']:.1%}" for k, v in c["variant_parity"].items())]
        for s in c.get("skipped", []):
            lines.append(f"- skipped: {s}")
    return "\n".join(lines) + "\n"


def variant_table(res: dict, variant: str = OURS_PIPE) -> str:
    """Ours beside one variant of ours from the same run, every config / weights / batch / scenario row: decode
    tokens/s a sequence, the captured step's GPU time alone, and the variant's speed over ours."""
    v_name = SHORT[variant]
    lines = [f"| config | weights | batch | prompt+new | ours tok/s | {v_name} tok/s | ratio | ours GPU µs/step "
             f"| {v_name} GPU µs/step |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in res["configs"]:
        for base in res["configs"][name]["rows"]:
            if base["system"] != OURS:
                continue
            v = row(res, name, variant, base["precision"], base["batch"], base["prompt"])
            if v is None:
                continue
            lines.append(f"| {name} | {base['precision']} | {base['batch']} | {base['prompt']}+{base['new']} | "
                         f"{base['tok_s_per_seq']:,.0f} | {v['tok_s_per_seq']:,.0f} | "
                         f"{v['tok_s_per_seq'] / base['tok_s_per_seq']:.3f} | {base.get('gpu_step_us') or 0:.0f} | "
                         f"{v.get('gpu_step_us') or 0:.0f} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(res["configs"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = res["configs"][name]["rows"]
        keys = sorted({(r["batch"], r["prompt"]) for r in rows})
        series = sorted({(r["system"], r["precision"]) for r in rows})
        width = 0.8 / max(len(series), 1)
        for i, (s, p) in enumerate(series):
            ys = [next((r["tok_s_aggregate"] for r in rows if (r["system"], r["precision"], r["batch"], r["prompt"])
                        == (s, p, b, q)), 0) for b, q in keys]
            ax.bar(np.arange(len(keys)) + i * width, ys, width, label=f"{SHORT.get(s, s)} {p}")
        ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [f"b{b}, {q}+" for b, q in keys])
        ax.set_ylabel("decode tokens/s (aggregate)")
        ax.set_title(f"{name} — {res['device']['gpu']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def profile_ttft(config: str, work: Path, out: Path, prompt: int = 128, reps: int = 10) -> dict:
    """Where the first token's time goes, batch 1: for ours (the kernel engine) and the onnxruntime fused graph on
    the same FP16 (float32 head) file, the median wall time of the prompt pass (Generator.append_tokens, the device
    synchronized) and of the first sampled token after it, and over `reps` first tokens the GPU-busy time and the
    kernels (CUPTI through torch.profiler): a wall far above the GPU time is host work (binding, launches)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, random_state
    from paddle2ort.runtime.generation import GenerationConfig, Generator

    from .peer import HF_INIT_STD
    c = dict(CONFIGS[config])
    arch = c.pop("arch")
    spec = DecoderSpec.from_config(c, qkv_bias=arch == "qwen2")
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{config}.fused.fp16.onnx"
    if not path.exists():
        build_variant(spec, random_state(spec, seed=0, std=HF_INIT_STD), "fp16", path, head_dtype="float32")
    pad = pad_id(CONFIGS[config])
    rows = random_prompts(np.random.default_rng(7), 1, prompt, spec.vocab_size, special_ids(CONFIGS[config])).tolist()
    res = {"config": config, "prompt": prompt, "batch": 1, "reps": reps, "device": None, "systems": {}}
    first = {}                                          # the prompt's last logits of each engine variant
    for system in (OURS_PLAIN, OURS, ORT):
        dec = _decoder(system, path, spec.to_json(), prompt + 8)
        cfg = GenerationConfig(max_new_tokens=4)
        times = {"prompt_pass_ms": [], "first_token_ms": []}

        def once(record=True):
            gen = Generator(dec, cfg, pad)
            t0 = time.perf_counter()
            gen.append_tokens(rows)
            dec.synchronize()
            t1 = time.perf_counter()
            gen.generate_next_token()
            dec.synchronize()
            t2 = time.perf_counter()
            if record:
                times["prompt_pass_ms"].append(1e3 * (t1 - t0))
                times["first_token_ms"].append(1e3 * (t2 - t1))
        for _ in range(3):
            once(False)
        for _ in range(reps):
            once()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                once(False)
            torch.cuda.synchronize()
        kernels = {k: {"count": n, "us": us} for k, (n, us) in kernel_times(prof, reps, 100).items()}
        med = {k: float(np.median(v)) for k, v in times.items()}
        res["systems"][system] = {
            **med, "ttft_ms": med["prompt_pass_ms"] + med["first_token_ms"],
            "gpu_busy_us": sum(k["us"] for k in kernels.values()),
            "kernels": sum(k["count"] for k in kernels.values()),
            "prefill_by": getattr(dec, "prefill_by", None),
            "top_kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us"])[:12])}
        log.info("%s: %s", system, {k: v for k, v in res["systems"][system].items() if k != "top_kernels"})
        if system != ORT:
            dec.start(1)
            logits, _ = dec.append(rows, np.zeros(1, np.int64), 4)
            first[system] = dec.host(logits).astype(np.float32).ravel()
            dec.release()
        del dec
    a, b = first[OURS_PLAIN], first[OURS]
    res["prompt_graphs_vs_plain"] = {"max_abs_diff_over_range": float(np.abs(a - b).max() / np.ptp(a)),
                                     "same_argmax": bool(a.argmax() == b.argmax())}
    log.info("prompt graphs vs the plain prompt pass: %s", res["prompt_graphs_vs_plain"])
    from .common import device_info
    res["device"] = device_info()
    out.write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m paddle2ort.benchmarks.gpu.engine_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--gguf", help="SmolLM2 GGUF (golden-row parity); omit to skip")
    r.add_argument("--golden", default="tests/golden/smollm2_greedy.json")
    r.add_argument("--configs", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"], choices=sorted(CONFIGS))
    r.add_argument("--scenarios", nargs="+", default=[f"{p}:{n}" for p, n in SCENARIOS], help="PROMPT:NEW")
    r.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    r.add_argument("--reps", type=int, default=2)
    r.add_argument("--no-ort", dest="ort", action="store_false", help="ours only (no onnxruntime-gpu staged)")
    r.add_argument("--budget-s", type=float, default=480, help="skip the remaining timings after this many seconds")
    r.add_argument("--work", default="/tmp/p2o-engine")
    r.add_argument("--gemv", default="auto", choices=["auto", "v3", "v2", "v1"],
                   help="the engine's GEMV kernels (decode.cu; auto: per product and batch, the faster of v3 and v2)")
    r.add_argument("--also-v3", action="store_true", help="the engine with the v3 GEMVs as another system")
    r.add_argument("--also-v2", action="store_true", help="the engine with the v2 GEMVs as another system")
    r.add_argument("--also-v1", action="store_true", help="the engine with the v1 GEMVs as another system")
    r.add_argument("--pdl", default="auto", choices=["auto", "on", "off"],
                   help="programmatic dependent launch of the engine's kernels (auto: on from compute capability 9.0)")
    r.add_argument("--also-no-pdl", action="store_true",
                   help="the engine launched without programmatic dependent launch as another system")
    r.add_argument("--chunk", type=int, help="positions a flash-decoding split (default: the engine's choice)")
    r.add_argument("--attention", default="auto", choices=["auto", "v2", "v1"],
                   help="the engine's attention kernel (auto: v2, attn_online, where the head size fits it)")
    r.add_argument("--step", default="kernels", choices=["kernels", "persistent", "auto"],
                   help="the engine's layers: a kernel a phase, one persistent kernel, or auto (the faster, timed)")
    r.add_argument("--also-persistent-step", action="store_true",
                   help="the engine with every layer in one persistent kernel (step='persistent') as another system")
    r.add_argument("--also-pipeline", action="store_true",
                   help="the engine with each kernel launched one kernel ahead (pipeline=True) as another system")
    r.add_argument("--also-plain-prompt", action="store_true",
                   help="the engine with its prompt pass launched as it is (prompt_graphs=False) as another system")
    r.add_argument("--also-attention-v1", action="store_true",
                   help="the engine with the v1 (three-phase) attention kernel as another system")
    t = sub.add_parser("ttft", help="where the first token's time goes (prompt pass, first step; GPU-busy, kernels)")
    t.add_argument("--config", default="qwen2.5-0.5b", choices=sorted(CONFIGS))
    t.add_argument("--prompt", type=int, default=128)
    t.add_argument("--work", default="/tmp/p2o-engine")
    t.add_argument("--out", type=Path, required=True, help="the JSON written")
    p = sub.add_parser("report")
    p.add_argument("dir", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "ttft":
        res = profile_ttft(a.config, Path(a.work), a.out, a.prompt)
        print(json.dumps({s: {k: v for k, v in r.items() if k != "top_kernels"} for s, r in res["systems"].items()},
                         indent=1))
        return 0
    from .report import write
    if a.cmd == "run":
        res = run(a)
        write(a.out, "engine-bench", res, markdown(res))
        return 0
    res = json.loads((a.dir / "engine-bench.json").read_text())
    res["verdicts"] = verdicts(res)
    write(a.dir, "engine-bench", res, markdown(res))
    if res["configs"]:
        plot(res, a.dir / "engine-bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
