"""`paddle2ort serve` as a hostile but realistic API client sees it: each bad request is one 4xx in OpenAI's error
shape naming the field (never a 500 or a NaN answer), null fields are their defaults (the OpenAI API's fields are
nullable), a request cut off at the drain limit is told so, an idle classifier takes a request with --max-queue 0,
and the CLI refuses a bundle it cannot serve before loading any model and warns of options that change nothing.
Everything runs over a fake tokenizer and engine (the HTTP layer's contract), in seconds, without Paddle."""
import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from http_server import AppServer, FakeEngine, fake_server, free_port  # noqa: E402 (after the skips)

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------- a fake model behind the real app
class FakeTokenizer:
    """A character a token; the chat template is the real bounded renderer."""
    pad_token_id = 0

    def __init__(self):
        self.calls = 0

    def encode(self, text):
        self.calls += 1
        text.encode("utf-8")                      # as a UTF-8 tokenizer: a lone surrogate is an error (a 500)
        return [1 + ord(c) % 50 for c in text]

    def decode(self, ids):
        return "x" * len(ids)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        from paddle2ort.tokenization.chat_template import render_chat_template
        self.calls += 1
        return render_chat_template("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>",
                                    messages=messages)


def audit_server(engine=None, drain_s=None, **cfg) -> AppServer:
    """create_app over a fake model, served by uvicorn on a thread (drain: uvicorn's graceful-shutdown limit)."""
    return fake_server(FakeTokenizer(), engine, {"log_level": "critical", "timeout_graceful_shutdown": drain_s}, **cfg)


@pytest.fixture(scope="module")
def fake():
    s = audit_server()
    yield s
    s.close()


def chat(content="Hello", **kw):
    return {"model": "fake", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **kw}


def error_of(r, status=400):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


def still_healthy(s):
    assert httpx.get(s.url + "/health", timeout=10).json()["status"] == "ok"
    r = s.post("/v1/completions", json={"model": "fake", "prompt": "ok", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "xx", r.text


# ----------------------------------------------------------------------------- request bodies
@pytest.mark.parametrize("route,body,param", [
    ("/v1/completions", {"model": "fake", "prompt": "a\ud800b"}, "prompt"),
    ("/v1/chat/completions", chat("a\udfffb"), "messages.0.content"),
    ("/v1/chat/completions", chat([{"type": "text", "text": "\ud83d"}]), "messages.0.content"),
])
def test_a_lone_surrogate_is_a_400_not_a_tokenizer_crash(fake, route, body, param):
    """JSON's "\\ud800" escape decodes to a lone surrogate, which a UTF-8 tokenizer cannot encode: it was a 500
    (TypeError from the HF tokenizer); it is a 400 naming the field, before the tokenizer runs."""
    calls = fake.tok.calls
    sent = json.dumps(body).encode()                 # ASCII JSON: the surrogate travels as its \u escape
    assert b"\\ud" in sent or b"\\udfff" in sent
    err = error_of(fake.post(route, content=sent, headers={"content-type": "application/json"}))
    assert err["param"] == param and "surrogate" in err["message"] and err["type"] == "invalid_request_error", err
    assert fake.tok.calls == calls
    still_healthy(fake)


def test_a_tiny_temperature_is_greedy_not_nan():
    """temperature 1e-300 is 0 in float32: logits / 0 made NaN, and the answer was empty with finish "stop". Below
    SAMPLING_EPS a temperature is greedy (vLLM's rule): the token is the argmax."""
    from paddle2ort.runtime.kernels.reference import sample_rows
    from paddle2ort.runtime.serving.openai_schema import ChatRequest
    logits = np.random.default_rng(0).normal(0, 30, (1, 500)).astype(np.float32)
    for t in (1e-300, 1e-40, 1e-7):
        cfg = ChatRequest(**chat(temperature=t)).generation_config(4)
        assert not cfg.sampling, t
        nxt = np.zeros(1, np.int64)
        sample_rows(logits, None, cfg.sampler_params(0, 0), nxt)
        assert nxt[0] == logits.argmax(), t
    assert ChatRequest(**chat(temperature=1e-3)).generation_config(4).sampling       # small but real: samples


@pytest.mark.parametrize("value", [1e-300, 1e-40, 0.001, 1e300, 1e5])
def test_a_repetition_penalty_that_breaks_float32_is_refused(fake, value):
    """A penalty of 1e-300 is 0 in float32 (logits / 0: NaN, an empty answer), 1e300 is inf (0 * inf: NaN): the
    range is bounded and a value outside it is a 400 naming repetition_penalty."""
    err = error_of(fake.post("/v1/chat/completions", json=chat(repetition_penalty=value)))
    assert err["param"] == "repetition_penalty" and "repetition_penalty" in err["message"], err
    r = fake.post("/v1/chat/completions", json=chat(repetition_penalty=1.3))
    assert r.status_code == 200, r.text


def test_null_fields_are_their_defaults(fake):
    """The OpenAI API's fields are nullable and some clients send "temperature": null: that is the default, not a
    400 ("Input should be a valid number")."""
    nulls = {k: None for k in ("temperature", "top_p", "n", "stream", "top_k", "repetition_penalty", "ignore_eos",
                               "max_tokens", "stop", "seed")}
    r = fake.post("/v1/completions", json={"model": "fake", "prompt": "x", **nulls})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1 and r.json()["choices"][0]["text"] == "x" * 16     # completions' default
    cfg = fake.engine.configs[-1]
    assert cfg.sampling and cfg.temperature == 1.0 and cfg.top_p == 1.0 and cfg.repetition_penalty == 1.0
    r = fake.post("/v1/chat/completions", json=chat(**{**nulls, "max_tokens": 3}))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text


def test_token_id_prompts_and_non_text_parts_are_named_plainly(fake):
    """A prompt of token ids (OpenAI accepts them) and an image part were refused with pydantic's union noise
    ("Input should be a valid string (and 3 more problems)"); now the message says what is not supported."""
    for prompt in ([1, 2, 3], [[1, 2, 3]]):
        err = error_of(fake.post("/v1/completions", json={"model": "fake", "prompt": prompt}))
        assert err["param"] == "prompt" and "token ids" in err["message"] and "more problem" not in err["message"]
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    err = error_of(fake.post("/v1/chat/completions", json=chat(parts)))
    assert err["param"] == "messages.0.content" and "image_url" in err["message"], err
    assert "more problem" not in err["message"]


def test_null_content_is_refused_for_a_user_and_empty_for_an_assistant(fake):
    """An assistant turn with content null (what the OpenAI API sends back beside tool calls) replays as empty;
    a user message with content null is a 400 saying so."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "?"}]
    r = fake.post("/v1/chat/completions", json={"model": "fake", "messages": msgs, "max_tokens": 2})
    assert r.status_code == 200, r.text
    err = error_of(fake.post("/v1/chat/completions", json=chat(None)))
    assert err["param"] == "messages.0.content" and "null" in err["message"], err


def test_a_body_json_cannot_parse_is_named_as_such(fake):
    """A body that is not UTF-8 got FastAPI's "There was an error parsing the body" with no code; it says what the
    body must be, code invalid_json."""
    err = error_of(fake.post("/v1/completions", content=b'{"model": "fake", "prompt": "\xff\xfe"}',
                             headers={"content-type": "application/json"}))
    assert err["code"] == "invalid_json" and "UTF-8" in err["message"] and "JSON object" in err["message"], err
    still_healthy(fake)


def test_a_wrong_method_says_which_are_allowed(fake):
    r = httpx.post(fake.url + "/health", timeout=10)
    err = error_of(r, 405)
    assert r.headers.get("allow") == "GET" and "Method Not Allowed" in err["message"]
    r = httpx.get(fake.url + "/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and r.headers.get("allow") == "POST"


# ----------------------------------------------------------------------------- shutdown
def test_requests_cut_off_at_the_drain_limit_are_told_so():
    """Past --drain-timeout uvicorn cancels the requests in flight: a non-streamed one got a plain-text
    "Internal Server Error" (a traceback in the log), a stream was cut mid-body, and the log said every request was
    answered. Now: 503 in the API's shape (Retry-After), a stream's last event is the error, the log counts them."""
    s = audit_server(engine=FakeEngine(max_context=None, token_s=0.01), drain_s=0.5, retry_after=4)
    got = {}

    def plain():
        got["plain"] = s.post("/v1/completions", json={"model": "fake", "prompt": "a", "max_tokens": 3000})

    def stream():
        with httpx.stream("POST", s.url + "/v1/completions", timeout=30,
                          json={"model": "fake", "prompt": "a", "max_tokens": 3000, "stream": True}) as r:
            got["stream"] = [ln for ln in r.iter_lines() if ln.startswith("data: ")]

    threads = [threading.Thread(target=f) for f in (plain, stream)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while s.engine.active < 2:
        assert time.monotonic() - t0 < 10, "the requests did not start"
        time.sleep(0.02)
    time.sleep(0.2)
    logs = []
    handler = _ListHandler(logs)
    import logging
    lg = logging.getLogger("paddle2ort.runtime.serving.app")
    lg.addHandler(handler)
    try:
        s.close()                                        # as SIGTERM: drain for 0.5 s, then cancel
        for t in threads:
            t.join(30)
    finally:
        lg.removeHandler(handler)
    err = error_of(got["plain"], 503)
    assert err["code"] == "shutting_down" and "--drain-timeout" in err["message"], err
    assert got["plain"].headers["retry-after"] == "4"
    last = json.loads(got["stream"][-1][len("data: "):])
    assert len(got["stream"]) > 2 and last["error"]["code"] == "shutting_down", got["stream"][-3:]
    assert any("2 request(s) in flight were cut off" in m for m in logs), logs
    assert not any("every admitted request was answered" in m for m in logs), logs
    t0 = time.monotonic()
    while s.engine.active:                               # the cut-off requests' rows were cancelled
        assert time.monotonic() - t0 < 5, "the cut-off requests kept generating"
        time.sleep(0.02)


class _ListHandler:
    """A logging handler collecting messages (logging.Handler's interface, without its lock machinery)."""
    level = 0

    def __init__(self, out):
        self.out = out

    def handle(self, record):
        self.out.append(record.getMessage())


# ----------------------------------------------------------------------------- classification
def test_an_idle_classifier_takes_a_request_with_max_queue_0():
    """--max-queue 0 (nothing waits behind a busy model) refused every /v1/classify request with 429, even on an
    idle server; now an idle classifier takes it, and a request behind a busy one is still refused."""
    from paddle2ort.runtime.serving.classify import MicroBatcher
    from paddle2ort.runtime.serving.scheduler import QueueFull

    class Clf:
        labels = ("neg", "pos")

        def predict_logits(self, texts):
            time.sleep(0.3)
            return np.array([[0.0, 1.0]] * len(texts), np.float32)

    async def main():
        b = MicroBatcher(Clf(), max_texts=8, max_wait_s=0.0, max_queue=0)
        b.start()
        try:
            rows = await b.classify(["good"])
            assert rows[0]["label"] == "pos"
            first = asyncio.ensure_future(b.classify(["a"]))
            await asyncio.sleep(0.1)                     # its batch is running now
            with pytest.raises(QueueFull):
                await b.classify(["b"])
            assert (await first)[0]["label"] == "pos"
        finally:
            await b.stop()

    asyncio.run(main())


# ----------------------------------------------------------------------------- the CLI and loading
def _manifest(path: Path, task):
    from paddle2ort.runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION
    path.mkdir(parents=True)
    spec = {"name": "x", "dtype": "float32", "shape": [1]}
    (path / MANIFEST_NAME).write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "name": path.name, "task": task, "inputs": [spec],
        "outputs": [{**spec, "name": "y"}], "opset": 17,
        "files": {"model.fp32.onnx": {"sha256": "0" * 64, "size_bytes": 1}},
        "models": {"fp32": {"precision": "fp32", "file": "model.fp32.onnx", "sha256": "0" * 64, "size_bytes": 1}},
        "source": {}, "versions": {}}))
    (path / "model.fp32.onnx").write_bytes(b"x")                  # not a model: loading it fails
    return path


def test_a_bundle_serve_cannot_run_is_refused_before_any_model_loads(tmp_path):
    """An image bundle (no task) was "has task None", found only after the bundles before it had loaded (minutes
    for an LLM); now every manifest is checked first and the message says what the bundle is."""
    from paddle2ort.runtime.errors import BundleError
    from paddle2ort.runtime.serving.app import ServeConfig, load_models
    from paddle2ort.runtime.serving.metrics import ServingMetrics
    clf = _manifest(tmp_path / "clf", "text-classification")        # no model files: loading it would fail
    det = _manifest(tmp_path / "det", None)
    with pytest.raises(BundleError) as e:
        load_models([clf, det], ServeConfig(), ServingMetrics())
    msg = str(e.value)
    assert str(det) in msg and "records no task" in msg and "None" not in msg, msg
    with pytest.raises(BundleError, match="has task 'image-segmentation'"):
        load_models([_manifest(tmp_path / "seg", "image-segmentation")], ServeConfig(), ServingMetrics())


def test_a_bundle_named_twice_is_said_so(tmp_path):
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.serving.app import ServeConfig, load_models
    from paddle2ort.runtime.serving.metrics import ServingMetrics
    b = _manifest(tmp_path / "clf", "text-classification")
    with pytest.raises(BadInputError, match="named twice") as e:
        load_models([b, tmp_path / "." / "clf"], ServeConfig(), ServingMetrics())
    assert "rename" not in str(e.value)


def test_options_that_change_nothing_are_named():
    """--device-id on the CPU, --graph / --max-batch / --default-max-tokens without a text-generation bundle and
    --classify-* without a classifier were accepted and silently ignored."""
    from paddle2ort.cli.main import build_parser
    p = build_parser()
    from paddle2ort.cli.serve import ignored_options

    def notes(argv, tasks):
        return ignored_options(p.parse_args(["serve", "b", *argv]), set(tasks))

    assert notes([], {"text-classification"}) == [] and notes([], {"text-generation"}) == []
    got = notes(["--device-id", "1", "--graph", "fused", "--max-batch", "4", "--default-max-tokens", "9"],
                {"text-classification"})
    assert [n.split()[0] for n in got] == ["--device-id", "--graph", "--max-batch", "--default-max-tokens"], got
    assert all("has no effect" in n for n in got)
    got = notes(["--classify-wait-ms", "5", "--classify-batch", "8", "--max-batch", "4", "--device", "gpu",
                 "--device-id", "1"], {"text-generation"})
    assert [n.split()[0] for n in got] == ["--classify-wait-ms", "--classify-batch"], got
    assert notes(["--default-max-tokens", "9", "--graph", "generic"], {"text2text-generation"})[0].startswith(
        "--graph generic")


def test_serve_warns_of_ignored_options(tmp_path, monkeypatch, capsys):
    """The warnings come out of `paddle2ort serve` itself (uvicorn stubbed: nothing listens)."""
    from paddle2ort.cli import main
    from paddle2ort.cli import serve as serve_cli
    from paddle2ort.runtime.serving import app as app_mod
    monkeypatch.setattr(app_mod, "load_models", lambda bundles, *a, **k: {
        "clf": SimpleNamespace(task="text-classification", engine=None, batcher=None, generator=None)})
    monkeypatch.setattr(serve_cli, "_draining_server",
                        lambda uvicorn, delay=0: lambda config: SimpleNamespace(run=lambda: 0))
    assert main(["serve", str(tmp_path), "--port", str(free_port()), "--graph", "fused"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "--graph fused has no effect" in err, err


def test_max_queue_0_admits_requests_while_batch_rows_are_free():
    """--max-queue 0 (no request waits behind a full batch) refused a request whenever another had arrived in the
    same step (it was "waiting" for the next boundary, though the batch had free rows): concurrent requests got 429
    from an idle server. Now only a request the free rows cannot take counts as waiting."""
    from paddle2ort.runtime.serving.scheduler import Engine, QueuedEngine, QueueFull

    class Rows(QueuedEngine):                          # the engine's queue and admission rule, no model
        rows: list = []
        active = 0
        _rows_free = Engine._rows_free

        def check(self, prompt, cfg, n):
            return prompt, cfg

    eng = Rows(max_batch=4, max_queue=0, retry_after=2, metrics=None, name="m")
    for n in (1, 2, 1):                                # 4 rows: the next boundary admits them all
        eng.submit([1], None, lambda ev: None, n)
    with pytest.raises(QueueFull, match=r"every slot is taken \(the queue's bound, serve --max-queue, is 0\)"):
        eng.submit([1], None, lambda ev: None)
    eng = Rows(max_batch=2, max_queue=1, retry_after=2, metrics=None, name="m")
    eng.rows = [object()]                              # one row runs: one free
    eng.submit([1], None, lambda ev: None)             # takes the free row
    eng.submit([1], None, lambda ev: None, 2)          # waits (the bound: 1)
    with pytest.raises(QueueFull, match="1 requests are waiting for a slot"):
        eng.submit([1], None, lambda ev: None)
