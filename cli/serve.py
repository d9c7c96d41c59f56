"""`paddle2ort serve`: over paddle2ort.runtime.serving (OpenAI-compatible HTTP server, in-flight batching)."""
from __future__ import annotations

import argparse
import logging
import socket
import threading
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import _typed, check_exists, command, nonneg_float, nonneg_int, positive_float, positive_int

log = logging.getLogger("paddle2ort.cli")

SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client")
_port = _typed("port", int, lambda v: 1 <= v <= 65535, "a TCP port in 1..65535")
EVERY_INTERFACE = ("0.0.0.0", "::")
# defaults of the options that act on some tasks only (ignored_options warns where one is set and does nothing)
DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS, DEFAULT_CLASSIFY_WAIT_MS, DEFAULT_CLASSIFY_BATCH = 16, 256, 10.0, 64
GENERATION_TASKS = ("text-generation", "text2text-generation")


def _host(s: str) -> str:
    """--host: an empty one is refused (an unset variable in `--host "$HOST"` would otherwise listen on every
    interface, where the user most likely meant this machine only)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("an empty host is refused: give 127.0.0.1 (this machine only) or 0.0.0.0 "
                                         "(every interface)")
    return s.strip()


def server_url(host: str, port: int) -> str:
    """Where the server listens, as a URL a client can use (an IPv6 address in brackets); on every interface, the
    local URL, said so."""
    if host in EVERY_INTERFACE:
        return f"every interface ({host}) on port {port}: http://127.0.0.1:{port} from this machine"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_port(host: str, port: int) -> None:
    """Bind-test before loading models: a busy port is one clear error, not uvicorn's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise BadInputError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") \
                from None


def ignored_options(args, tasks: set[str]) -> list[str]:
    """The options given that change nothing for the bundles served (each a sentence naming the option)."""
    out = []
    if args.device == "cpu" and args.device_id != 0:
        out.append(f"--device-id {args.device_id} has no effect: it picks the CUDA device with --device gpu")
    if "text-generation" not in tasks and args.graph != "auto":
        out.append(f"--graph {args.graph} has no effect: it picks the decoder of text-generation bundles, and none "
                   "is served")
    if not tasks & set(GENERATION_TASKS) and args.max_batch != DEFAULT_MAX_BATCH:
        out.append(f"--max-batch {args.max_batch} has no effect: it bounds the text-generation batch, and only "
                   "classifiers are served (their batch is --classify-batch)")
    if "text-generation" not in tasks and args.default_max_tokens != DEFAULT_MAX_TOKENS:
        out.append(f"--default-max-tokens {args.default_max_tokens} has no effect: it is the default of chat "
                   "completions, which need a text-generation bundle, and none is served")
    if "text-classification" not in tasks:
        for opt, v, d in (("--classify-wait-ms", args.classify_wait_ms, DEFAULT_CLASSIFY_WAIT_MS),
                          ("--classify-batch", args.classify_batch, DEFAULT_CLASSIFY_BATCH)):
            if v != d:
                out.append(f"{opt} {v:g} has no effect: it acts on text-classification bundles, and none is served")
    return out


def _draining_server(uvicorn, delay_s: float = 0.0):
    class DrainingServer(uvicorn.Server):
        """SIGTERM/Ctrl-C: /health answers 503 "draining" at once; after `delay_s` (serve --drain-delay: a load
        balancer polling /health stops sending new requests meanwhile, which are still served) stop accepting,
        finish the requests in flight, exit 0 (uvicorn 0.54 would re-raise the signal after its graceful
        shutdown, so a drained server would look killed). A second signal during the delay stops at once."""

        pending: threading.Timer | None = None

        def handle_exit(self, sig, frame) -> None:
            drain = getattr(getattr(self.config.app, "state", None), "drain", None)
            if drain is not None:
                drain["draining"] = True
            if delay_s > 0 and self.pending is None and not self.should_exit:
                log.info("signal %d: /health says draining; still serving for %g s (--drain-delay), then draining "
                         "the requests in flight and exiting", sig, delay_s)
                self.pending = threading.Timer(delay_s, self._stop, (sig, frame))
                self.pending.daemon = True
                self.pending.start()
                return
            if self.pending is not None:
                self.pending.cancel()
            self._stop(sig, frame)

        def _stop(self, sig, frame) -> None:
            if not self.should_exit:
                log.info("signal %d: draining the requests in flight, then exiting", sig)
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return DrainingServer


def run(args) -> int:
    from paddle2ort.runtime.files import module_available
    missing = [m for m in SERVE_MODULES if not module_available(m)]
    if missing:
        raise BadInputError(f"serve needs {', '.join(missing)}: pip install 'paddle2ort[serve]'")
    for b in args.bundles:
        check_exists(b, "BUNDLE")
    check_port(args.host, args.port)
    import uvicorn

    from paddle2ort.runtime.serving.app import ServeConfig, create_app, load_models
    from paddle2ort.runtime.serving.metrics import ServingMetrics

    cfg = ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue, retry_after=args.retry_after,
                      default_max_tokens=args.default_max_tokens, classify_max_wait_ms=args.classify_wait_ms,
                      classify_max_texts=args.classify_batch, max_body_bytes=int(args.max_body_mb * 1_000_000))
    metrics = ServingMetrics()
    models = load_models(args.bundles, cfg, metrics, args.device, args.precision, args.threads, args.device_id,
                         args.graph)
    for note in ignored_options(args, {s.task for s in models.values()}):
        log.warning("%s", note)
    app = create_app(models, cfg, metrics)
    log.info("listening on %s (models: %s); SIGTERM or Ctrl-C drains the requests in flight",
             server_url(args.host, args.port), ", ".join(models))
    server = _draining_server(uvicorn, args.drain_delay)(uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                                           log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=args.drain_timeout or None))
    server.run()
    return 0


def register(sub) -> None:
    g = command(sub, "serve", "serve bundles over HTTP (OpenAI-compatible API, in-flight batching)",
                "paddle2ort serve bundles/smollm2 bundles/sentiment --port 8000 --max-batch 16\n"
                "curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                "  -d '{\"model\": \"smollm2\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'",
                description="Serve text-generation bundles on OpenAI's /v1/completions and /v1/chat/completions "
                            "(streaming, continuous batching of concurrent requests) and text-classification "
                            "bundles on /v1/classify (micro-batched), text2text-generation bundles (T5, BART, "
                            "UNIMO-text) on /v1/completions (the prompt is the source; one batch at a time), "
                            "with /v1/models, /health and Prometheus "
                            "/metrics. A model's name is its bundle directory's name. Needs the serve extra.")
    g.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE", help="bundle directories to serve")
    g.add_argument("--host", type=_host, default="127.0.0.1",
                   help="address to listen on: 127.0.0.1 (the default) this machine only, 0.0.0.0 every interface; "
                        "an empty host is refused")
    g.add_argument("--port", type=_port, default=8000, help="TCP port")
    g.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where onnxruntime runs")
    g.add_argument("--device-id", type=nonneg_int, default=0, help="CUDA device with --device gpu")
    g.add_argument("--precision", help="which model of each bundle (fp32, fp16, int8, int4); default: the one "
                   "`paddle2ort release` chose for --device, else fp32")
    g.add_argument("--graph", default="auto", choices=["auto", "generic", "fused"],
                   help="text-generation decoder: auto (the default: each bundle's default graph for --device and "
                        "the precision, as `generate` runs it: the fused decoder on the CPU where convert-llm "
                        "recorded it, else generic), generic (the paddle2onnx export, host KV cache) or fused (the "
                        "fused decoder; its rows take cache slots on the device, sized to what the rows need and "
                        "grown on demand; default precision fp16 on gpu). Why auto: "
                        "benchmarks/results/serve/README.md")
    g.add_argument("--threads", type=nonneg_int, default=0, help="intra-op threads (0: onnxruntime's choice)")
    g.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                   help="rows one decode step advances at most (in-flight batch size)")
    g.add_argument("--max-queue", type=nonneg_int, default=64,
                   help="requests waiting for a slot per model; more are answered 429 with Retry-After")
    g.add_argument("--retry-after", type=positive_int, default=1, help="seconds, in 429/503 answers")
    g.add_argument("--default-max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS,
                   help="new tokens of a chat completion that gives no max_tokens")
    g.add_argument("--classify-wait-ms", type=nonneg_float, default=DEFAULT_CLASSIFY_WAIT_MS,
                   help="how long a classify request waits for others to share its batch")
    g.add_argument("--classify-batch", type=positive_int, default=DEFAULT_CLASSIFY_BATCH,
                   help="texts a classifier batch at most")
    g.add_argument("--max-body-mb", type=positive_float, default=4.0,
                   help="largest request body accepted, in MB (10^6 bytes); a larger one is answered 413 before it "
                        "is parsed")
    g.add_argument("--drain-timeout", type=nonneg_float, default=60.0,
                   help="on SIGTERM, seconds to let requests in flight finish (0: no limit)")
    g.add_argument("--drain-delay", type=nonneg_float, default=0.0,
                   help="on SIGTERM, seconds to go on serving while /health answers 503 \"draining\" (a load "
                        "balancer polling it stops routing here) before the drain starts (default 0: at once)")
    g.set_defaults(func=run)
