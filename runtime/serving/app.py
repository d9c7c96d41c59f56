"""The HTTP server of `paddle2ort serve`: an OpenAI-compatible API over text-generation bundles (in-flight
batching, scheduler.py) and /v1/classify over text-classification bundles (micro-batched, classify.py), on
FastAPI + uvicorn, with /health and Prometheus /metrics.

A request names a model by the name the server gave a loaded bundle (its directory name); nothing a request
carries is ever used as a path."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from paddle2ort.runtime.errors import BadInputError, BundleError
from paddle2ort.tokenization.chat_template import check_message_chars

from .classify import MicroBatcher
from .metrics import CONTENT_TYPE_LATEST, ServingMetrics
from .openai_schema import (DEFAULT_COMPLETION_TOKENS, ChatRequest, ClassifyRequest, CompletionRequest,
                            GenerationRequest, check_text)
from .scheduler import Engine, Event, QueueFull, ShuttingDown, _call_each

log = logging.getLogger(__name__)

_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[\w-]+\[.*\])$")
ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/classify", "/health", "/metrics")
DISCONNECT_POLL_S = 0.5          # a non-streamed answer checks this often (wall time) that its client is still there
MAX_BODY_BYTES = 4_000_000       # ServeConfig.max_body_bytes' default: a request body over it is refused (413)
FALLBACK_TOKEN_CHARS = 256       # characters a token may stand for, where the tokenizer shows no vocabulary
CUT_OFF_ANSWER_S = 5.0          # at shutdown, how long requests cut off at the drain limit may take to say so
JSON_BODY_HINT = "the request body must be a JSON object, sent with Content-Type: application/json"
PARSE_FAILED = "There was an error parsing the body"       # FastAPI's 400 detail for a body json.loads refused
SERVABLE = ("text-generation", "text2text-generation", "text-classification")


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 16                 # rows (choices) one decode step advances at most
    max_queue: int = 64                 # requests waiting for a slot, per model; more -> 429
    retry_after: int = 1                # seconds, in 429/503 answers
    default_max_tokens: int = 256       # chat completions without max_tokens (bounded by the context)
    classify_max_wait_ms: float = 10.0  # how long the first waiting classify request waits for company
    classify_max_texts: int = 64        # texts a classifier batch at most
    max_classify_inputs: int = 256      # texts one /v1/classify request at most
    max_body_bytes: int = MAX_BODY_BYTES  # a request body over this is refused (413) before it is read or parsed

    def __post_init__(self):
        for name in ("max_batch", "retry_after", "default_max_tokens", "classify_max_texts", "max_classify_inputs",
                     "max_body_bytes"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0 or self.classify_max_wait_ms < 0:
            raise BadInputError("max_queue and classify_max_wait_ms must be >= 0")


@dataclass
class Served:
    """One loaded bundle under its public name."""
    name: str
    task: str
    path: Path
    created: int = field(default_factory=lambda: int(time.time()))
    generator: Any = None               # runtime.llm.TextGenerator
    engine: Engine | None = None
    classifier: Any = None              # runtime.pipelines.TextClassifier
    batcher: MicroBatcher | None = None
    token_chars: int = FALLBACK_TOKEN_CHARS   # most characters one token stands for (create_app: token_chars())


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status, headers=e.headers)


# ----------------------------------------------------------------------------- loading
def load_models(bundles: list[Path], cfg: ServeConfig, metrics: ServingMetrics, device: str = "cpu",
                precision: str | None = None, threads: int = 0, device_id: int = 0,
                graph: str = "auto") -> dict[str, Served]:
    """Load every bundle before the server binds (a bad bundle is an error now, not on the first request).
    graph: the text-generation bundles' decoder, "auto" (each bundle's default for the device and precision, the
    graph `generate` runs), "generic" (the paddle2onnx export) or "fused" (the fused decoder, its rows in cache
    slots on the device)."""
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.runtime.selection import default_precision
    from paddle2ort.runtime.session import SessionOptions

    names: dict[str, Path] = {}
    for b in bundles:
        name = Path(b).resolve().name
        if name in names:
            if names[name].resolve() == Path(b).resolve():
                raise BadInputError(f"bundle {b} is named twice; name each bundle once")
            raise BadInputError(f"two bundles would be served as {name!r} ({names[name]} and {b}): a model's name is "
                                "its directory's name, so rename one directory")
        names[name] = Path(b)
    # every manifest is checked before any model loads: a bad last bundle is not found after minutes of loading
    manifests = {name: load_bundle(path, verify=False).manifest for name, path in names.items()}
    for name, m in manifests.items():
        if m.task not in SERVABLE:
            what = f"has task {m.task!r}" if m.task else "records no task (an image or raw-tensor model)"
            raise BundleError(f"bundle {names[name]} {what}: serve runs {', '.join(SERVABLE)} bundles only; "
                              "leave this one out (a text classifier converted without --task: convert it again "
                              "with --task text-classification)")
    session = SessionOptions(device=device, device_id=device_id, intra_op_threads=threads)
    out: dict[str, Served] = {}
    for name, path in names.items():
        m = manifests[name]
        if m.task == "text-generation" and graph == "fused":       # release's choice is of the generic graph
            prec = precision or ("fp16" if device == "gpu" else "fp32")
        else:
            prec = precision or default_precision(load_bundle(path, verify=False), device)
        if m.task == "text-generation":
            from paddle2ort.runtime.llm import TextGenerator
            # in-flight batching takes the fused graph's cache slots: not the compiled CPU step
            gen = TextGenerator(path, precision=prec, session=session, graph=graph, compiled_step=False)
            eng = Engine(gen.model, gen.tokenizer, gen.default_stop_ids, gen.max_context, cfg.max_batch,
                         cfg.max_queue, cfg.retry_after, metrics, name)
            out[name] = Served(name, m.task, path, generator=gen, engine=eng)
        elif m.task == "text2text-generation":                    # /v1/completions, batch at a time (text2text.py)
            from paddle2ort.runtime.seq2seq import Text2TextGenerator

            from .text2text import Text2TextEngine
            gen = Text2TextGenerator(path, precision=prec, session=session)
            out[name] = Served(name, m.task, path, generator=gen, engine=Text2TextEngine(
                gen, cfg.max_batch, cfg.max_queue, cfg.retry_after, metrics, name))
        else:                                                       # text-classification (SERVABLE, above)
            from paddle2ort.runtime.pipelines import TextClassifier
            clf = TextClassifier(path, precision=prec, session=session)
            out[name] = Served(name, m.task, path, classifier=clf, batcher=MicroBatcher(
                clf, cfg.classify_max_texts, cfg.classify_max_wait_ms / 1000, cfg.max_queue, cfg.retry_after,
                metrics, name))
        log.info("serving %s (%s) as %r", path, m.task, name)
    return out


# ----------------------------------------------------------------------------- the app
def create_app(models: dict[str, Served], cfg: ServeConfig = ServeConfig(),
               metrics: ServingMetrics | None = None) -> FastAPI:
    metrics = metrics or ServingMetrics()
    state = {"draining": False, "cut_off": 0, "in_flight": 0}

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()

        def post(items) -> None:           # a step's events: one wake-up of this loop, not one per token
            loop.call_soon_threadsafe(_call_each, items)

        for s in models.values():
            if s.engine is not None:
                s.engine.post = post
                s.engine.start()
            if s.batcher is not None:
                s.batcher.start()
        yield
        state["draining"] = True                # uvicorn has finished the requests in flight (SIGTERM drain)
        for s in models.values():
            if s.engine is not None:
                await asyncio.to_thread(s.engine.stop)
            if s.batcher is not None:
                await s.batcher.stop()
        t0 = time.monotonic()              # requests cut off at the drain limit are still writing their answers
        while state["in_flight"] and time.monotonic() - t0 < CUT_OFF_ANSWER_S:
            await asyncio.sleep(0.01)
        if state["cut_off"]:
            log.warning("server stopped: %d request(s) in flight were cut off at the drain limit (serve "
                        "--drain-timeout) and told so (503, or an error event ending a stream); the others were "
                        "answered", state["cut_off"])
        else:
            log.info("server stopped: every admitted request was answered")

    app = FastAPI(title="paddle2ort", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.metrics, app.state.config = models, metrics, cfg
    app.state.drain = state       # serve --drain-delay sets "draining" at SIGTERM, before the server stops accepting
    app.add_middleware(_CutOffMiddleware, state=state, retry_after=cfg.retry_after)
    app.add_middleware(_BodyLimitMiddleware, limit=cfg.max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)       # outermost: it counts the 413s too
    for s in models.values():
        if s.generator is not None:
            s.token_chars = token_chars(s.generator.tokenizer)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc, request.headers.get("content-type")))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == PARSE_FAILED:    # not UTF-8, or nested past json's recursion
            return error_response(ApiError(400, "the request body could not be parsed: it is not UTF-8 or it is "
                                           f"nested too deeply for a JSON parser; {JSON_BODY_HINT}", None,
                                           "invalid_json"))
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       code="not_found" if exc.status_code == 404 else None,
                                       headers=dict(exc.headers or {})))        # 405's Allow

    def model_for(name: str, task: str, *more: str) -> Served:
        s = models.get(name)
        if s is None:
            raise ApiError(404, f"model {name!r} does not exist; this server has: {', '.join(sorted(models))}",
                           "model", "model_not_found")
        if s.task not in (task, *more):
            raise ApiError(400, f"model {name!r} is a {s.task} model; this route needs a {' or '.join((task, *more))}"
                           " model", "model", "wrong_task")
        return s

    @app.get("/health")
    async def health():
        body = {"status": "draining" if state["draining"] else "ok",
                "models": {n: {"task": s.task, **({"active_rows": s.engine.active, "queued": s.engine.queued}
                                                  if s.engine else {})} for n, s in models.items()}}
        return JSONResponse(body, status_code=503 if state["draining"] else 200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": s.created,
                                            "owned_by": "paddle2ort", "task": s.task} for n, s in models.items()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        s = models.get(name)
        if s is None:
            raise ApiError(404, f"model {name!r} does not exist", "model", "model_not_found")
        return {"id": s.name, "object": "model", "created": s.created, "owned_by": "paddle2ort", "task": s.task}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        s = model_for(body.model, "text-generation", "text2text-generation")
        check_prompt_size(s, len(body.prompt), "the prompt", "prompt")
        # tokenizing runs on a worker thread: a long prompt does not stall the event loop (/health, other requests)
        try:
            if s.task == "text2text-generation":       # the prompt is the source (it ends with the model's eos)
                ids = await run_in_threadpool(s.generator.prompt_ids, body.prompt)
            else:
                ids = await run_in_threadpool(encode, s.generator.tokenizer, body.prompt)
        except BadInputError as e:
            raise ApiError(400, str(e), "prompt") from e
        return await run_generation(s, ids, body, body.new_tokens(DEFAULT_COMPLETION_TOKENS), request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        s = model_for(body.model, "text-generation")
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        chars = sum(len(m["content"]) for m in msgs)
        check_prompt_size(s, chars, "the messages' content", "messages")
        try:                                    # refused before a worker thread renders it, as the renderer would
            check_message_chars(msgs)
        except BadInputError as e:
            raise ApiError(400, str(e), "messages", "context_length_exceeded") from e
        try:                                            # templating and tokenizing: on a worker thread, as above
            ids = await run_in_threadpool(chat_ids, s.generator.tokenizer, msgs)
        except BadInputError as e:
            raise ApiError(400, str(e), "messages") from e
        limit = s.engine.max_context
        default = cfg.default_max_tokens if limit is None else max(1, min(cfg.default_max_tokens, limit - len(ids)))
        return await run_generation(s, ids, body, body.new_tokens(default), request, chat=True)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        s = model_for(body.model, "text-classification")
        if len(body.input) > cfg.max_classify_inputs:
            raise ApiError(400, f"input has {len(body.input)} texts; at most {cfg.max_classify_inputs} a request: "
                           "split them over several requests", "input", "invalid_value")
        for i, text in enumerate(body.input):          # JSON's "\ud800": no tokenizer text (it would drop it)
            try:
                check_text(text, f"input[{i}]")
            except ValueError as e:
                raise ApiError(400, str(e), "input", "invalid_value") from None
        try:
            rows = await s.batcher.classify(body.input)
        except BundleError:                             # the served bundle's fault, not the request's: a 500
            raise
        except BadInputError as e:                      # what the model cannot take (e.g. past its positions)
            raise ApiError(400, str(e), "input", "invalid_value") from e
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full", kind="server_busy",
                           headers={"Retry-After": str(e.retry_after)}) from e
        except ShuttingDown as e:
            raise ApiError(503, str(e), code="shutting_down", kind="server_busy",
                           headers={"Retry-After": str(cfg.retry_after)}) from e
        return {"object": "list", "model": s.name, "data": [{"index": i, **r} for i, r in enumerate(rows)],
                "usage": {"input_texts": len(rows)}}

    return app


def validation_error(exc: RequestValidationError, content_type: str | None = None) -> ApiError:
    """FastAPI's 422 as a 400 naming the first bad field (OpenAI's error shape); a body that is not a JSON object
    (often: sent without Content-Type: application/json, so not parsed as JSON) says what the body must be."""
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('msg')}", None, "invalid_json")
    # union members add their type name to the path (e.g. prompt.str): keep the field's path only
    loc = [x for x in loc if not _UNION_TAG.match(x)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "value_error":      # our validators' messages, without pydantic's "Value error, "
        msg = str((first.get("ctx") or {}).get("error") or msg)
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    if param is None and first.get("type") in ("model_attributes_type", "dict_type", "model_type", "missing"):
        sent = f"this request's Content-Type: {content_type}" if content_type else "this request has no Content-Type"
        return ApiError(400, f"body: {msg}{more}; {JSON_BODY_HINT} ({sent})", None, "invalid_body")
    said = msg if param and msg.startswith(param) else f"{param or 'body'}: {msg}"     # "logprobs are not ..."
    return ApiError(400, f"{said}{more}", param, "invalid_value")


# ----------------------------------------------------------------------------- prompts
def token_chars(tok) -> int:
    """The most characters of text one token of `tok` stands for: twice its longest vocabulary entry (a normalizer
    may fold a few characters into one), or FALLBACK_TOKEN_CHARS where the tokenizer shows no vocabulary."""
    hf = getattr(tok, "hf", None)                     # tokenization.bpe.BPETokenizer: the HF tokenizers object
    vocab = hf.get_vocab() if hf is not None and hasattr(hf, "get_vocab") else None
    return 2 * max(map(len, vocab)) if vocab else FALLBACK_TOKEN_CHARS


def check_prompt_size(s: Served, chars: int, what: str, param: str) -> None:
    """A prompt whose characters cannot fit the model's context is refused before it is tokenized (a request
    bigger than the context costs no tokenizer time); one that may fit is checked in tokens by the engine."""
    limit = s.engine.prompt_limit
    if limit is not None and chars > limit * s.token_chars:
        raise ApiError(400, f"{what} is {chars} characters: more than the model's context of {limit} tokens can hold "
                       f"(a token of this model's tokenizer covers at most {s.token_chars} characters); shorten it",
                       param, "context_length_exceeded")


def encode(tok, text: str) -> list[int]:
    """Token ids of `text` (called on a worker thread): through encode_batch where the tokenizer has it, as the HF
    tokenizers library releases the GIL there (not in encode), so the event loop runs meanwhile."""
    batch = getattr(tok, "encode_batch", None)
    return batch([text])[0] if batch is not None else tok.encode(text)


def chat_ids(tok, msgs: list[dict]) -> list[int]:
    """Token ids of a conversation through the model's chat template (called on a worker thread)."""
    return encode(tok, tok.apply_chat_template(msgs, add_generation_prompt=True))


async def run_generation(s: Served, ids: list[int], body: GenerationRequest, max_tokens: int, request: Request,
                         chat: bool):
    try:
        cfg = body.generation_config(max_tokens)
    except BadInputError as e:
        raise ApiError(400, str(e)) from e
    events: asyncio.Queue[Event] = asyncio.Queue()

    try:
        req = s.engine.submit(ids, cfg, events.put_nowait, body.n)      # called on this loop (engine.post)
    except BadInputError as e:
        msg = str(e)
        raise ApiError(400, msg, "n" if msg.startswith("n must") else "max_tokens" if "max_tokens" in msg else
                       "messages" if chat else "prompt",
                       "context_length_exceeded" if "model's context" in msg else None) from e
    except QueueFull as e:
        raise ApiError(429, str(e), code="queue_full", kind="server_busy",
                       headers={"Retry-After": str(e.retry_after)}) from e
    except ShuttingDown as e:
        raise ApiError(503, str(e), code="shutting_down", kind="server_busy",
                       headers={"Retry-After": str(s.engine.retry_after)}) from e
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if body.stream:
        gen = _sse(s, req, events, rid, created, len(ids), chat, body.include_usage(), body.n)
        return _CancellingStream(gen, on_close=lambda: s.engine.cancel(req), media_type="text/event-stream")
    try:
        got = await _gather(events, body.n, request)
    finally:
        s.engine.cancel(req)              # a no-op once every choice is done; frees the slots otherwise
    if got is None:                       # the client went away: its rows leave at the next step boundary
        return Response(status_code=499)
    texts, reasons = got
    usage = {"prompt_tokens": len(ids), "completion_tokens": req.completion_tokens,
             "total_tokens": len(ids) + req.completion_tokens}
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                    "logprobs": None} for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": rid, "object": "chat.completion", "created": created, "model": s.name, "choices": choices,
                "usage": usage}
    choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None}
               for i, (t, r) in enumerate(zip(texts, reasons))]
    return {"id": rid, "object": "text_completion", "created": created, "model": s.name, "choices": choices,
            "usage": usage}


async def _gather(events: asyncio.Queue, n: int, request: Request) -> tuple[list[str], list] | None:
    """The n choices' texts and finish reasons of a non-streamed answer, or None once its client has gone away:
    checked every DISCONNECT_POLL_S of wall time, whether tokens are flowing or not."""
    loop = asyncio.get_running_loop()
    texts, reasons = [""] * n, [None] * n
    check_at = loop.time() + DISCONNECT_POLL_S
    while sum(r is not None for r in reasons) < n:
        ev = await _next_event(events, check_at - loop.time())
        if loop.time() >= check_at:
            if await request.is_disconnected():
                return None
            check_at = loop.time() + DISCONNECT_POLL_S
        if ev is None:
            continue
        if ev.kind == "error":
            raise ApiError(500, ev.text, kind="server_error")
        if ev.kind == "delta":
            texts[ev.index] += ev.text
        else:
            reasons[ev.index] = ev.finish_reason
    return texts, reasons


async def _next_event(events: asyncio.Queue, timeout: float) -> Event | None:
    """The next event, waiting at most `timeout` seconds (None: none came)."""
    if not events.empty():
        return events.get_nowait()
    try:
        return await asyncio.wait_for(events.get(), max(timeout, 0.0))
    except asyncio.TimeoutError:
        return None


async def _sse(s: Served, req, events: asyncio.Queue, rid: str, created: int, prompt_tokens: int, chat: bool,
               include_usage: bool, n: int):
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, usage=None) -> str:
        body = {"id": rid, "object": obj, "created": created, "model": s.name, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    if chat:
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for i in range(n)])
    done = 0
    while done < n:
        ev = await events.get()
        if ev.kind == "error":
            yield f"data: {json.dumps({'error': {'message': ev.text, 'type': 'server_error'}})}\n\n"
            return
        if ev.kind == "delta":
            c = ({"index": ev.index, "delta": {"content": ev.text}, "finish_reason": None} if chat else
                 {"index": ev.index, "text": ev.text, "finish_reason": None, "logprobs": None})
        else:
            done += 1
            c = ({"index": ev.index, "delta": {}, "finish_reason": ev.finish_reason} if chat else
                 {"index": ev.index, "text": "", "finish_reason": ev.finish_reason, "logprobs": None})
        yield chunk([c])
    if include_usage:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": req.completion_tokens,
                 "total_tokens": prompt_tokens + req.completion_tokens}
        yield chunk([], usage)
    yield "data: [DONE]\n\n"


class _CancellingStream(StreamingResponse):
    """A streaming answer that cancels its generation however it ends (finished, client gone, server error)."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()


class _CutOffMiddleware:
    """A request still in flight when the drain limit passes (serve --drain-timeout: uvicorn then cancels its task)
    is answered 503 in the API's error shape, or, where its stream has begun, ends with an error event; not
    uvicorn's plain-text 500 and a traceback. Its rows were freed by the route's own cleanup (engine.cancel)."""

    def __init__(self, app, state: dict, retry_after: int):
        self.app, self.state, self.retry_after = app, state, retry_after

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started: list[dict] = []

        async def watched(msg):
            if msg["type"] == "http.response.start":
                started.append(msg)
            await send(msg)

        self.state["in_flight"] += 1
        try:
            await self._answer(scope, receive, send, watched, started)
        finally:
            self.state["in_flight"] -= 1

    async def _answer(self, scope, receive, send, watched, started: list[dict]) -> None:
        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()                     # answered here: the cancellation is handled
            self.state["cut_off"] += 1
            log.warning("%s %s: cut off at the drain limit (serve --drain-timeout)", scope["method"], scope["path"])
            msg = ("the server shut down before this request finished (its drain limit, serve --drain-timeout, "
                   "passed); send it again")
            if not started:
                await error_response(ApiError(503, msg, None, "shutting_down", "server_busy",
                                              {"Retry-After": str(self.retry_after)}))(scope, receive, send)
                return
            sse = any(k == b"content-type" and v.startswith(b"text/event-stream")
                      for k, v in started[0].get("headers", ()))
            err = {"error": {"message": msg, "type": "server_busy", "param": None, "code": "shutting_down"}}
            try:
                if sse:
                    await send({"type": "http.response.body", "body": f"data: {json.dumps(err)}\n\n".encode(),
                                "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:                         # the client has gone too
                pass


class _BodyLimitMiddleware:
    """Refuses a request body over `limit` bytes with 413 before any of it is parsed: at once when its
    Content-Length says so, else as soon as the bytes received pass the limit. The body (at most `limit` bytes) is
    read here, then handed to the app; later receive() calls (a client's disconnect) pass through."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            return await self._refuse(scope, receive, send, f"{declared} bytes")
        parts, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":          # the client went away before its body was in
                return
            parts.append(msg.get("body", b""))
            size += len(parts[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send, f"more than {self.limit} bytes")
            more = msg.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(parts), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: str) -> None:
        log.info("%s %s: refused a request body of %s (limit %d bytes)", scope["method"], scope["path"], size,
                    self.limit)
        msg = (f"the request body is {size}; this server accepts at most {self.limit} bytes ({self.limit / 1e6:g} MB, "
               "serve --max-body-mb)")
        await error_response(ApiError(413, msg, None, "body_too_large"))(scope, receive, send)


def _content_length(scope) -> int | None:
    for k, v in scope.get("headers", ()):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class _MetricsMiddleware:
    """Requests by route and status, and latency to the last byte (pure ASGI: streaming passes through)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def wrapped(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.metrics.request(route, status[0], time.perf_counter() - t0)
