"""Load benchmark of `paddle2ort serve` (localhost only, bounded in requests and time).

For each mode - continuous (in-flight batching, --max-batch 32) and one-request-at-a-time (--max-batch 1) - a
`paddle2ort serve` subprocess on 127.0.0.1 takes C concurrent chat clients (C in --clients): each sends
--requests streamed chat completions (greedy, --max-tokens tokens, ignore_eos so every request has the same work)
and, before each, one malformed request that must be answered 400. Per (mode, C): aggregate tokens/s (completion
tokens / wall time), p50/p95 latency and time to first token, failed valid requests, bad requests answered 400.
Targets (computed here): continuous at 16 clients >= 4x the tokens/s of 1 client; zero failed valid requests.
--graph picks serve's decoder (default auto: serve's default, the bundle's graph for the device); --compare-graphs
runs the same rows on other graphs in the same run (recorded under "other_graphs"; the verdicts read --graph's).

    python -m paddle2ort.benchmarks.serve_load --bundle out/smollm2 --out benchmarks/results/serve \
        --compare-graphs generic
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .env import environment
from .report import pyplot

log = logging.getLogger(__name__)

MODES = {"continuous": 32, "one-at-a-time": 1}          # mode -> --max-batch
TARGET_SPEEDUP_16 = 4.0                                 # CPU; the GPU's target is 8x (--target)
SAME_TEXT_SHARE = 0.9
BAD_BODIES = [                                          # malformed requests mixed into the load: each must be 400
    lambda model: {"model": model},                                                       # no messages
    lambda model: {"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": -1},
    lambda model: {"model": model, "messages": [{"role": "robot", "content": "x"}]},
    lambda model: {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, max_batch: int, threads: int, max_queue: int,
                 graph: str = "auto") -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "paddle2ort.cli", "-q", "serve", str(bundle), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--threads", str(threads),
                             "--graph", graph],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() - t0 > 120:
            proc.kill()
            raise RuntimeError("serve did not answer /health within 120 s")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def one_chat(client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, reason = None, 0, None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "status": r.status_code, "error": (await r.aread()).decode()[:200]}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    return {"ok": False, "status": 200, "error": ev["error"]["message"]}
                for c in ev.get("choices", []):
                    if ttft is None and c["delta"].get("content"):
                        ttft = time.perf_counter() - t0
                    reason = c.get("finish_reason") or reason
                if ev.get("usage"):
                    tokens = ev["usage"]["completion_tokens"]
    except Exception as e:                                # noqa: BLE001  (a transport failure is a failed request)
        return {"ok": False, "status": None, "error": f"{type(e).__name__}: {e}"}
    lat = time.perf_counter() - t0
    ok = reason == "length" and tokens == max_tokens
    return {"ok": ok, "status": 200, "latency_s": lat, "ttft_s": ttft if ttft is not None else lat,
            "tokens": tokens, "error": None if ok else f"finish_reason {reason}, {tokens} tokens"}


async def run_clients(url: str, model: str, clients: int, requests: int, max_tokens: int, deadline: float) -> dict:
    import httpx
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    results, bad = [], []
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def worker(c: int):
            for k in range(requests):
                if time.monotonic() > deadline:
                    return
                r = await client.post(url + "/v1/chat/completions",
                                      json=BAD_BODIES[(c + k) % len(BAD_BODIES)](model))
                bad.append(r.status_code == 400 and "error" in r.json())
                results.append(await one_chat(client, url, model, f"Client {c}, question {k}: tell me about "
                                              f"{['rivers', 'stars', 'bread', 'music'][(c + k) % 4]}.", max_tokens))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    lat = np.array([r["latency_s"] for r in ok]) if ok else np.zeros(1)
    ttft = np.array([r["ttft_s"] for r in ok]) if ok else np.zeros(1)
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(results), "failed_valid": len(results) - len(ok),
            "failures": [r["error"] for r in results if not r["ok"]][:5],
            "bad_requests": len(bad), "bad_answered_400": sum(bad), "wall_s": wall, "completion_tokens": tokens,
            "tokens_per_s": tokens / wall, "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)), "ttft_p50_s": float(np.percentile(ttft, 50)),
            "ttft_p95_s": float(np.percentile(ttft, 95))}


def engine_rows(bundle: Path, clients: list[int], max_tokens: int, threads: int, graph: str = "auto",
                modes: dict | None = None) -> list[dict]:
    """The scheduler alone, in this process (no HTTP, no SSE, no client): C chat requests submitted at once to an
    engine of --max-batch 32 and of 1. Isolates what batching buys from the per-token HTTP work, which on a
    CPU-starved box competes with the model for the same cores. Also compares each request's greedy text in both
    modes."""
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.session import SessionOptions

    gen = TextGenerator(bundle, session=SessionOptions(intra_op_threads=threads), graph=graph)   # as serve loads it
    return engine_table(gen.model, gen.tokenizer, gen.default_stop_ids, gen.max_context, clients, max_tokens, modes)


def engine_table(model, tok, stop_ids, max_context, clients: list[int], max_tokens: int,
                 modes: dict | None = None) -> list[dict]:
    """Per client count and mode: tokens/s of C requests at once, with the 1-request figure (median of 3) measured
    just before; the greedy texts of both modes compared (where both ran)."""
    from paddle2ort.runtime.generation import GenerationConfig
    cfg = GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=max_tokens)
    modes = MODES if modes is None else modes
    rows, texts = [], {}
    for max_batch in modes.values():                            # warm-up (not recorded; captures CUDA graphs)
        run_engine(model, tok, stop_ids, max_context, cfg, max_batch, 1)
    for c in clients:
        for mode, max_batch in modes.items():
            base = float(np.median([run_engine(model, tok, stop_ids, max_context, cfg, max_batch, 1)[0]
                                    for _ in range(3)]))
            tps, steps, texts[mode, c] = run_engine(model, tok, stop_ids, max_context, cfg, max_batch, c)
            rows.append({"mode": mode, "clients": c, "steps": steps, "tokens_per_s": tps,
                         "adjacent_1_request_tokens_per_s": base})
            log.info("engine only, %s, %d requests: %.0f tokens/s (%d steps)", mode, c, tps, steps)
    rows.sort(key=lambda r: (list(MODES).index(r["mode"]), r["clients"]))
    for r in rows:
        if ("one-at-a-time", r["clients"]) in texts:
            a, b = texts[r["mode"], r["clients"]], texts["one-at-a-time", r["clients"]]
            r["same_text_as_one_at_a_time"] = sum(x == y for x, y in zip(a, b)) / len(a)
    return rows


def run_engine(model, tok, stop_ids, max_context, cfg, max_batch: int, c: int) -> tuple[float, int, list[str]]:
    """c requests submitted at once to an engine of max_batch -> (tokens/s, decode steps, texts)."""
    import threading

    from paddle2ort.runtime.serving.scheduler import Engine
    topics = ["rivers", "stars", "bread", "music"]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": f"Client {i}: tell me about "
                                                    f"{topics[i % 4]}."}], add_generation_prompt=True))
               for i in range(c)]
    eng = Engine(model, tok, stop_ids, max_context, max_batch, c)
    out = [[] for _ in range(c)]
    left, done = [c], threading.Event()

    def sink(i):
        def put(ev):
            out[i].append(ev)
            if ev.kind != "delta":
                left[0] -= 1
                if not left[0]:
                    done.set()
        return put

    eng.start()
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        eng.submit(p, cfg, sink(i))
    done.wait()
    wall = time.perf_counter() - t0
    eng.stop()
    errors = [e.text for o in out for e in o if e.kind == "error"]
    if errors:
        raise RuntimeError(f"the engine failed: {errors[0]}")
    return (c * cfg.max_new_tokens / wall, eng.steps,
            ["".join(e.text for e in o if e.kind == "delta") for o in out])


def verdicts(rows: list[dict], engine: list[dict] | None = None, target: float = TARGET_SPEEDUP_16) -> list[dict]:
    """Ratios at 16 against the 1-client figure measured right before (the background load of a shared box
    drifts between rows minutes apart). rows: the HTTP rows (none for an engine-only run)."""
    out = []
    r16 = next((r for r in rows if r["mode"] == "continuous" and r["clients"] == 16), None)
    if r16:
        ratio = r16["tokens_per_s"] / r16["adjacent_1_client_tokens_per_s"]
        out.append({"target": f"continuous batching: tokens/s at 16 clients >= {target:g}x 1 client",
                    "measured": f"{ratio:.2f}x ({r16['tokens_per_s']:.0f} vs "
                                f"{r16['adjacent_1_client_tokens_per_s']:.0f} tokens/s)",
                    "met": ratio >= target})
    if rows:
        failed = sum(r["failed_valid"] for r in rows)
        out.append({"target": "zero failed valid requests", "measured": f"{failed} failed of "
                    f"{sum(r['requests'] for r in rows)}", "met": failed == 0})
        bad_ok = sum(r["bad_answered_400"] for r in rows)
        bad = sum(r["bad_requests"] for r in rows)
        out.append({"target": "every malformed request answered 400", "measured": f"{bad_ok} of {bad}",
                    "met": bad_ok == bad})
    if engine:
        e16 = next((r for r in engine if r["mode"] == "continuous" and r["clients"] == 16), None)
        if e16:
            ratio = e16["tokens_per_s"] / e16["adjacent_1_request_tokens_per_s"]
            out.append({"target": f"scheduler alone (no HTTP): tokens/s at 16 requests >= {target:g}x 1",
                        "measured": f"{ratio:.2f}x ({e16['tokens_per_s']:.0f} vs "
                                    f"{e16['adjacent_1_request_tokens_per_s']:.0f} tokens/s)",
                        "met": ratio >= target})
        shares = [r["same_text_as_one_at_a_time"] for r in engine if r["mode"] == "continuous"]
        share = float(np.mean([float(x) for x in shares]))
        out.append({"target": f"greedy text under batching = one-at-a-time for >= {SAME_TEXT_SHARE:.0%} of the "
                              "requests (other batch shapes may flip near-ties)",
                    "measured": f"{share:.1%} of the requests", "met": share >= SAME_TEXT_SHARE})
    p95 = max((r["ttft_p95_s"] for r in rows if r["mode"] == "continuous" and r["clients"] == 16), default=None)
    if p95 is not None:
        out.append({"target": "p95 TTFT at 16 clients (stated)", "measured": f"{p95 * 1000:.0f} ms", "met": None})
    return out


def markdown(res: dict) -> str:
    c, env = res["config"], res["environment"]
    where = f"GPU {env['gpu']}, host CPU {env['cpu']}" if env.get("gpu") else \
        f"CPU {env['cpu']}, {env['usable_cores']} usable cores"
    lines = [f"# `paddle2ort serve` under load: {res['bundle']}", "",
             f"Run {res['created_at']} (commit {env.get('git_commit')}); {where}, --threads {c['threads']}"
             + (f"; load average (1, 5, 15 min) {load['start']} at the start, {load['end']} at the end"
                if (load := res.get("load_average")) else "") + f". {c['note']}", ""]
    if res["rows"]:
        lines += [f"Serve's decoder: `--graph {c.get('graph_arg', c.get('graph'))}` = the {c.get('graph')} graph.", ""]
    lines += tables(res, c)
    for g, other in res.get("other_graphs", {}).items():
        lines += ["", f"## The same rows on `--graph {g}` (same run, interleaved with the rows above)", ""]
        lines += tables(other, c)
    if res.get("other_graphs"):
        lines += ["", "## Graphs compared (tokens/s; same run)", "", "| rows | mode | clients | " + " | ".join(
            [c.get("graph", "main")] + list(res["other_graphs"])) + " |", "|---|---|---|" + "---|" * (
            1 + len(res["other_graphs"]))]
        for key, what in (("rows", "HTTP"), ("engine_rows", "scheduler")):
            for r in res.get(key) or []:
                vals = [r["tokens_per_s"]] + [next((x["tokens_per_s"] for x in o.get(key) or []
                                                    if x["mode"] == r["mode"] and x["clients"] == r["clients"]), None)
                                              for o in res["other_graphs"].values()]
                if any(v is not None for v in vals[1:]):
                    lines.append(f"| {what} | {r['mode']} | {r['clients']} | " + " | ".join(
                        "-" if v is None else f"{v:.0f}" for v in vals) + " |")
    lines += ["", "## Targets (computed from the rows above)", "", "| target | measured | verdict |", "|---|---|---|"]
    for v in res["verdicts"]:
        lines.append(f"| {v['target']} | {v['measured']} | "
                     f"{'stated' if v['met'] is None else 'met' if v['met'] else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def tables(res: dict, c: dict) -> list[str]:
    """The HTTP rows' and the scheduler rows' tables of one graph."""
    lines = []
    if res["rows"]:
        lines += [f"Each client: {c['requests']} streamed chat completions of {c['max_tokens']} tokens (greedy, "
                  "ignore_eos), each after one malformed request (must be 400). Continuous = in-flight batching "
                  "(--max-batch 32); one-at-a-time = --max-batch 1.", "",
                  "| mode | clients | requests | failed | bad->400 | tokens/s | vs 1 client just before | "
                  "p50 latency s | p95 latency s | p50 TTFT ms | p95 TTFT ms | vs one-at-a-time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        base = next((x for x in res["rows"] if x["mode"] == "one-at-a-time" and x["clients"] == r["clients"]), None)
        vs = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and r["mode"] == "continuous" else "-"
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['failed_valid']} | "
                     f"{r['bad_answered_400']}/{r['bad_requests']} | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / r['adjacent_1_client_tokens_per_s']:.2f}x | "
                     f"{r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | {r['ttft_p50_s'] * 1000:.0f} | "
                     f"{r['ttft_p95_s'] * 1000:.0f} | {vs} |")
    if res.get("engine_rows"):
        lines += ["", ("### " if res.get("graph") else "## ") + "The scheduler alone (same process, no HTTP/SSE/client "
                  "work)", "",
                  "| mode | concurrent requests | decode steps | tokens/s | vs 1 request just before | "
                  "vs one-at-a-time | same greedy text as one-at-a-time |", "|---|---|---|---|---|---|---|"]
        for r in res["engine_rows"]:
            base = next((x for x in res["engine_rows"] if x["mode"] == "one-at-a-time" and
                         x["clients"] == r["clients"]), None)
            same = r.get("same_text_as_one_at_a_time")
            lines.append(f"| {r['mode']} | {r['clients']} | {r['steps']} | {r['tokens_per_s']:.0f} | "
                         f"{r['tokens_per_s'] / r['adjacent_1_request_tokens_per_s']:.2f}x | "
                         + (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | " if base else "- | ")
                         + (f"{float(same):.0%} |" if same is not None else "- |"))
    return lines


def plot(res: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    http = bool(res["rows"])                  # an engine-only run (the GPU's) plots the scheduler's rows
    graphs = [(res["config"].get("graph", ""), res, "o-")] + [(g, o, "s--") for g, o in
                                                            res.get("other_graphs", {}).items()]
    for g, one, style in graphs:
        tag = f"{g}, " if len(graphs) > 1 else ""
        for mode, color in (("continuous", "#4c72b0"), ("one-at-a-time", "#dd8452")):
            rows = [r for r in (one["rows"] if http else one["engine_rows"]) if r["mode"] == mode]
            if not rows:
                continue
            xs = [r["clients"] for r in rows]
            a.plot(xs, [r["tokens_per_s"] for r in rows], style, color=color, label=tag + mode)
            if http:
                b.plot(xs, [r["ttft_p95_s"] * 1000 for r in rows], style, color=color, label=tag + mode)
            else:
                b.plot(xs, [r["tokens_per_s"] / r["adjacent_1_request_tokens_per_s"] for r in rows], style,
                       color=color, label=tag + mode)
    second = "p95 time to first token, ms (lower is better)" if http else "tokens/s vs 1 request (higher is better)"
    for ax, t in ((a, "aggregate tokens/s (higher is better)"), (b, second)):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent chat clients")
        ax.set_title(t, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    b.set_yscale("log")
    env = res["environment"]
    where = f"{env['gpu']} (scheduler alone, fused decoder)" if env.get("gpu") else \
        f"{env['cpu']} ({env['usable_cores']} cores, shared)"
    fig.suptitle(f"paddle2ort serve, {res['bundle']} on {where}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    from paddle2ort.runtime.files import atomic_write
    from paddle2ort.runtime.manifest import load_bundle
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="a text-generation bundle (the HTTP and scheduler rows)")
    ap.add_argument("--gguf", type=Path, help="instead of --bundle: the scheduler alone over the fused FP16 decoder "
                    "(float32 head) built here from this GGUF (the GPU machine has no Paddle); needs --tokenizer")
    ap.add_argument("--tokenizer", type=Path, help="with --gguf: the model's tokenizer directory")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="with --gguf: where the decoder runs")
    ap.add_argument("--max-length", type=int, default=1024, help="with --gguf: the most positions a row may hold "
                    "(the cache states hold what the rows need, grown on demand)")
    ap.add_argument("--target", type=float, help="speed-up at 16 clients to reach (default: 4 on cpu, 8 on gpu)")
    ap.add_argument("--commit", help="the commit measured, when this checkout has no git (the device's copy)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve"))
    ap.add_argument("--clients", default="1,4,16,32", help="comma list of concurrent client counts")
    ap.add_argument("--requests", type=int, default=2, help="chat requests per client per configuration")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of the server")
    ap.add_argument("--time-limit", type=float, default=600, help="seconds for the whole run (clients stop "
                    "sending new requests past it)")
    ap.add_argument("--note", default="", help="a line stating how to read the numbers (shared box, model, ...)")
    ap.add_argument("--graph", default="auto", choices=["auto", "generic", "fused"],
                    help="with --bundle: serve's --graph for the measured rows (default auto, serve's default)")
    ap.add_argument("--compare-graphs", default="", help="with --bundle: comma list of other --graph values run in "
                    "the same run (each client count's rows back to back with --graph's)")
    ap.add_argument("--compare-clients", default="1,16", help="the client counts the compared graphs' scheduler rows "
                    "run (continuous mode only: what a user of serve gets; bounded in time)")
    ap.add_argument("--compare-http-clients", help="the client counts the compared graphs' HTTP rows run (default: "
                    "--compare-clients; '' for none)")
    ap.add_argument("--engine-clients", help="the client counts of the scheduler rows (default: --clients)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)          # not a line per request
    clients = [int(x) for x in args.clients.split(",")]
    if args.requests < 1 or args.max_tokens < 1 or any(c < 1 for c in clients) or max(clients) > 64:
        ap.error("--requests, --max-tokens and each client count must be >= 1 (clients <= 64)")
    if bool(args.bundle) == bool(args.gguf) or (args.gguf and not args.tokenizer):
        ap.error("give --bundle, or --gguf with --tokenizer")
    if args.gguf:
        return gguf_engine_main(args, clients)
    graphs = [args.graph] + [g for g in args.compare_graphs.split(",") if g and g != args.graph]
    if any(g not in ("auto", "generic", "fused") for g in graphs):
        ap.error("--compare-graphs takes auto, generic and fused")
    cmp_clients = [int(x) for x in args.compare_clients.split(",") if x]
    cmp_http = cmp_clients if args.compare_http_clients is None else [
        int(x) for x in args.compare_http_clients.split(",") if x]
    eng_clients = clients if args.engine_clients is None else [int(x) for x in args.engine_clients.split(",") if x]
    model = args.bundle.resolve().name
    deadline = time.monotonic() + args.time_limit
    load0 = os.getloadavg()                             # other processes on the shared box: the run's noise
    rows: dict[str, list] = {g: [] for g in graphs}
    servers = {}
    try:
        for g in graphs:
            for mode, max_batch in MODES.items():      # all up at once: each client count runs every mode and graph
                if g != args.graph and (mode != "continuous" or not cmp_http):
                    continue
                servers[g, mode] = start_server(args.bundle, max_batch, args.threads, max_queue=2 * max(clients),
                                                graph=g)
                asyncio.run(run_clients(servers[g, mode][1], model, 1, 1, 4, deadline))   # warm-up (not recorded)
        for c in clients:                               # back to back, under the same background load
            for (g, mode), (_, url) in servers.items():
                if g != args.graph and c not in cmp_http:
                    continue
                # the 1-client figure (median of 3) measured right before each row: the box's background load
                # drifts, so a ratio is taken between neighbours in time, not against a run minutes earlier
                base = float(np.median([asyncio.run(run_clients(url, model, 1, args.requests, args.max_tokens,
                                                                deadline))["tokens_per_s"] for _ in range(3)]))
                r = {"mode": mode, **asyncio.run(run_clients(url, model, c, args.requests, args.max_tokens,
                                                             deadline)), "adjacent_1_client_tokens_per_s": base}
                log.info("--graph %s, %s, %d clients: %.0f tokens/s, p95 TTFT %.0f ms, %d failed", g, mode, c,
                         r["tokens_per_s"], r["ttft_p95_s"] * 1000, r["failed_valid"])
                rows[g].append(r)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    for g in graphs:
        rows[g].sort(key=lambda r: (list(MODES).index(r["mode"]), r["clients"]))
    from paddle2ort.runtime.llm import default_graph
    from paddle2ort.runtime.session import SessionOptions
    llm = load_bundle(args.bundle, verify=False).manifest.extra.get("llm", {})
    resolved = {g: default_graph(llm, "fp32", SessionOptions(), compiled_step=False) if g == "auto" else g for g in graphs}
    res = {"benchmark": "serve-load", "bundle": model,
           "model": {k: llm.get(k) for k in ("family", "num_layers", "hidden_size", "kv_heads", "vocab_size")},
           "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "config": {"clients": clients, "requests": args.requests, "max_tokens": args.max_tokens,
                      "threads": args.threads, "modes": MODES, "note": args.note, "engine_clients": eng_clients,
                      "compare_clients": cmp_clients, "compare_http_clients": cmp_http,
                      "graph": resolved[args.graph], "graph_arg": args.graph,     # what serve's --graph ran
                      "time_limit_s": args.time_limit, "timed_out": time.monotonic() > deadline},
           "rows": rows[args.graph]}
    res["other_graphs"] = {resolved[g]: {"graph": resolved[g], "graph_arg": g, "rows": rows[g]} for g in graphs[1:]}
    log.info("HTTP rows done; the scheduler rows next")
    for g in graphs:                                    # the scheduler alone, graph after graph
        er = engine_rows(args.bundle, eng_clients if g == args.graph else cmp_clients, args.max_tokens, args.threads, g,
                         None if g == args.graph else {"continuous": MODES["continuous"]})
        if g == args.graph:
            res["engine_rows"] = er
        else:
            res["other_graphs"][resolved[g]]["engine_rows"] = er
    res["environment"] = environment()
    res["load_average"] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    res["verdicts"] = verdicts(res["rows"], res["engine_rows"])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "serve.json", json.dumps(res, indent=1) + "\n")
    atomic_write(args.out / "serve.md", markdown(res))
    plot(res, args.out / "serve.png")
    print(markdown(res))
    return 0 if all(v["met"] is not False for v in res["verdicts"]) else 1


def gguf_engine_main(args, clients: list[int]) -> int:
    """The scheduler alone over the fused FP16 decoder (float32 head: the bundle default) built from a GGUF, on
    --device: rows join and leave in its cache slots, the decode step one captured CUDA graph on the GPU."""
    from paddle2ort.benchmarks.gpu.common import FUSED_VARIANTS, gguf_special_ids
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.convert.zoo.smollm2 import read_gguf, to_paddlenlp
    from paddle2ort.runtime.files import atomic_write
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.session import SessionOptions
    from paddle2ort.tokenization.bpe import BPETokenizer

    t0 = time.perf_counter()
    cfg, tensors, tok_fields = read_gguf(args.gguf)
    cfg = {**cfg, **gguf_special_ids(tok_fields), "tie_word_embeddings": True}
    spec = DecoderSpec.from_config(cfg)
    prec, head = FUSED_VARIANTS["fp16-head32"]
    path = args.out / "work" / "decoder.fp16.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_variant(spec, to_paddlenlp(cfg, tensors), prec, path, head_dtype=head)
    dec = FusedDecoder(path, spec.to_json(), session=SessionOptions(device=args.device, intra_op_threads=args.threads),
                       max_length=args.max_length)
    tok = BPETokenizer.load(args.tokenizer)
    stop = tuple(int(cfg[k]) for k in ("eos_token_id",) if cfg.get(k) is not None)
    log.info("decoder built and loaded in %.0f s", time.perf_counter() - t0)
    env = environment()
    if args.device == "gpu":
        from paddle2ort.benchmarks.gpu.common import device_info
        env["gpu"] = device_info()["gpu"]
    env["git_commit"] = args.commit or env.get("git_commit")
    target = args.target or (8.0 if args.device == "gpu" else TARGET_SPEEDUP_16)
    res = {"benchmark": "serve-load", "bundle": f"{args.gguf.stem} (fused fp16, float32 head, from the GGUF)",
           "model": {"family": "llama", "num_layers": spec.num_layers, "kv_heads": spec.kv_heads,
                     "vocab_size": spec.vocab_size},
           "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "config": {"clients": clients, "requests": 1, "max_tokens": args.max_tokens, "threads": args.threads,
                      "modes": MODES, "device": args.device, "graph": "fused", "target_speedup_16": target,
                      "note": args.note or "The scheduler alone (Engine over the fused decoder: rows join and leave "
                              "in its cache slots), no HTTP: this machine runs no server tests."},
           "rows": [], "environment": env}
    res["engine_rows"] = engine_table(dec, tok, stop, dec.max_tokens(), clients, args.max_tokens)
    res["verdicts"] = verdicts([], res["engine_rows"], target)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "serve.json", json.dumps(res, indent=1) + "\n")
    atomic_write(args.out / "serve.md", markdown(res))
    plot(res, args.out / "serve.png")
    print(markdown(res))
    return 0 if all(v["met"] is not False for v in res["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
