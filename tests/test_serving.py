"""`paddle2ort serve`: the official openai client unchanged, in-flight batching (tokens under concurrency = alone),
bad input (400 naming the field, 404 for anything that is not a loaded model), a bounded queue (429 +
Retry-After), a client that goes away frees its slot, SIGTERM drains, micro-batched classification, metrics.
Servers run uvicorn in a thread on a free localhost port (the SIGTERM test: `paddle2ort serve` in a subprocess)."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from http_server import AppServer, FakeEngine, free_port  # noqa: E402
from http_server import fake_server as serve_fake  # noqa: E402
from paddle2ort.runtime.generation import GenerationConfig  # noqa: E402


class Server(AppServer):
    """create_app over load_models, served by uvicorn on a thread."""

    def __init__(self, bundles, **cfg):
        from paddle2ort.runtime.serving.app import ServeConfig, create_app, load_models
        from paddle2ort.runtime.serving.metrics import ServingMetrics
        self.cfg = ServeConfig(**cfg)
        self.metrics = ServingMetrics()
        self.models = load_models(bundles, self.cfg, self.metrics, threads=1)
        super().__init__(create_app(self.models, self.cfg, self.metrics))


@pytest.fixture(scope="module")
def llama(llm_bundles, tmp_path_factory):
    """The tiny LLaMA bundle under the name `llama` (a model's name is its directory's name)."""
    import shutil
    dest = tmp_path_factory.mktemp("serve") / "llama"
    shutil.copytree(llm_bundles["llama"][1], dest)
    return dest


@pytest.fixture(scope="module")
def server(llama, clf_bundle):
    s = Server([llama, clf_bundle], max_batch=8, max_queue=8, classify_max_wait_ms=100)
    yield s
    s.close()


def chat(model="llama", content="Hello", **kw):
    return {"model": model, "messages": [{"role": "user", "content": content}], **kw}


def test_the_openai_client_works_unchanged(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in c.models.list().data} == {"llama", "bundle"}
    r = c.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hi there"}], max_tokens=8,
                                  temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason in ("stop", "length") and ch.message.role == "assistant"
    assert r.usage.completion_tokens == (8 if ch.finish_reason == "length" else r.usage.completion_tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the prompt is the bundle's chat template, rendered and tokenized
    tok = server.models["llama"].generator.tokenizer
    want = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi there"}]))
    assert r.usage.prompt_tokens == len(want)
    # streaming (SSE) gives the same text as the non-streamed answer, then the usage chunk
    parts, usage, reasons = [], None, []
    for chunk in c.chat.completions.create(model="llama", messages=[{"role": "user", "content": "Hi there"}],
                                           max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for cc in chunk.choices:
            parts.append(cc.delta.content or "")
            reasons.append(cc.finish_reason)
    assert "".join(parts) == ch.message.content and reasons[-1] == ch.finish_reason
    assert usage.completion_tokens == r.usage.completion_tokens
    # completions: sampling with a seed reproduces; n choices draw differently; length ends as "length"
    a = c.completions.create(model="llama", prompt="Once upon a time", max_tokens=6, temperature=0.9, seed=11, n=2,
                             extra_body={"ignore_eos": True})
    b = c.completions.create(model="llama", prompt="Once upon a time", max_tokens=6, temperature=0.9, seed=11, n=2,
                             extra_body={"ignore_eos": True})
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert a.choices[0].text != a.choices[1].text
    assert {x.finish_reason for x in a.choices} == {"length"} and a.usage.completion_tokens == 12


def test_stop_strings_cut_the_text_and_finish_with_stop(server):
    base = server.post("/v1/completions", json={"model": "llama", "prompt": "The", "max_tokens": 12,
                                                "temperature": 0, "ignore_eos": True}).json()
    text = base["choices"][0]["text"]
    stop = text[3:6] if len(text) > 6 else text[-2:]          # a piece of what greedy decoding will write
    r = server.post("/v1/completions", json={"model": "llama", "prompt": "The", "max_tokens": 12, "temperature": 0,
                                             "ignore_eos": True, "stop": [stop]}).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == text[:text.index(stop)]


def test_concurrent_requests_share_steps_and_get_what_they_get_alone(server):
    bodies = [chat(content=f"Question {i}: " + "tell me more " * i, max_tokens=10 + 3 * i, temperature=0,
                   ignore_eos=True) for i in range(5)]
    bodies += [chat(content="Sample please", max_tokens=12, temperature=0.8, top_p=0.9, seed=5, ignore_eos=True),
               chat(content="Stop early", max_tokens=12, temperature=0, ignore_eos=True, stop=["e"])]
    alone = [server.post("/v1/chat/completions", json=b).json() for b in bodies]
    eng = server.models["llama"].engine
    steps = eng.steps
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: server.post("/v1/chat/completions", json=b).json(), bodies))
    steps = eng.steps - steps
    g = server.models["llama"].generator
    for body, a, t in zip(bodies, alone, together):
        got, ref = t["choices"][0]["message"]["content"], a["choices"][0]["message"]["content"]
        if got == ref:
            assert t["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"] and t["usage"] == a["usage"]
            continue
        assert body["temperature"] == 0, (got, ref)   # seeded sampling: a flip needs a draw at a CDF edge's rounding
        p = g.prompt_ids(body["messages"][0]["content"], chat=True)       # greedy: equal up to a near-tie
        n = body["max_tokens"]
        ids = g.generate_token_ids([p], GenerationConfig(max_new_tokens=n, min_new_tokens=n))[0]
        assert text_divergence(got, ids, g.tokenizer.decode, teacher_margins(generic_logits(g.model), p, ids)) \
            is None, (got, ref)
    # one request alone takes (tokens - 1) decode steps (its first token comes from the prefill); together they
    # shared steps
    solo_steps = sum(a["usage"]["completion_tokens"] - 1 for a in alone)
    assert steps < 0.75 * solo_steps, (steps, solo_steps)


def test_a_request_joins_a_running_batch_at_a_step_boundary(server):
    """Engine level: B is admitted while A decodes; both equal their solo runs; A's steps carried B's row."""
    from paddle2ort.runtime.serving.scheduler import Engine, generate_alone
    g = server.models["llama"].generator
    cfg = GenerationConfig(max_new_tokens=24, min_new_tokens=24)
    pa, pb = g.tokenizer.encode("A long first prompt with several words"), g.tokenizer.encode("B")
    want = [generate_alone(g.model, g.tokenizer, g.default_stop_ids, p, cfg, g.max_context) for p in (pa, pb)]
    eng = Engine(g.model, g.tokenizer, g.default_stop_ids, g.max_context, max_batch=4).start()
    outs = {0: [], 1: []}
    done = {0: threading.Event(), 1: threading.Event()}
    started_b, b_in = threading.Event(), threading.Event()

    def sink(k):
        def put(ev):
            outs[k].append(ev)
            if k == 0 and sum(e.kind == "delta" for e in outs[0]) == 5:
                started_b.set()
                # the engine thread waits here (outside its lock) until B is queued: on a loaded host A's other
                # 19 steps could otherwise all run before this test's thread submits B (46 steps, run after A)
                assert b_in.wait(30)
            if ev.kind != "delta":
                done[k].set()
        return put

    try:
        eng.submit(pa, cfg, sink(0))
        assert started_b.wait(30)
        eng.submit(pb, cfg, sink(1))
        b_in.set()
        assert done[0].wait(60) and done[1].wait(60)
    finally:
        eng.stop()
    got = [("".join(e.text for e in outs[k] if e.kind == "delta"), outs[k][-1].finish_reason) for k in (0, 1)]
    assert [r for _, r in got] == [r for _, r in want] == ["length", "length"]
    for (text, _), (ref, _), p in zip(got, want, (pa, pb)):         # equal up to a near-tie of the reference
        if text != ref:
            ids = g.generate_token_ids([p], cfg)[0]
            assert text_divergence(text, ids, g.tokenizer.decode,
                                   teacher_margins(generic_logits(g.model), p, ids)) is None, (text, ref)
    assert eng.steps < 2 * 23                     # B's 23 decode steps rode on A's, not after them
    assert eng.active == 0 and eng.length == 0    # both rows left; the cache is empty


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    ({"model": "llama"}, 400, "messages"),
    (chat(temperature=-1), 400, "temperature"),
    (chat(top_p=0), 400, "top_p"),
    (chat(max_tokens=0), 400, "max_tokens"),
    (chat(n=0), 400, "n"),
    (chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (chat(stop=[""]), 400, "stop"),
    (chat(seed=-3), 400, "seed"),
    ({"model": "llama", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": "llama", "messages": []}, 400, "messages"),
    (chat(max_tokens=100000), 400, "max_tokens"),
    (chat(n=99), 400, "n"),
    (chat(model="bundle"), 400, "model"),
    (chat(model="../../../../etc/passwd"), 404, "model"),
    (chat(model="/etc/passwd"), 404, "model"),
    (chat(model="llama/../llama"), 404, "model"),
])
def test_bad_requests_are_400_naming_the_field(server, body, status, param):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body}
    r = server.post("/v1/chat/completions", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    if param:
        assert param.split(".")[0] in err["message"]


def test_bad_completions_and_classify_requests(server):
    assert server.post("/v1/completions", json={"model": "llama", "prompt": ""}).json()["error"]["param"] == "prompt"
    assert server.post("/v1/completions", json={"model": "llama", "prompt": "x", "echo": True}).status_code == 400
    r = server.post("/v1/classify", json={"model": "llama", "input": ["x"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = server.post("/v1/classify", json={"model": "bundle", "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert httpx.get(server.url + "/v1/models/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_classify_is_micro_batched_and_equals_the_pipeline(server, clf_bundle):
    from paddle2ort.runtime.numeric import softmax
    texts = ["great movie", "awful", "it was fine I guess", "", "meh " * 40, "love it", "worst ever", "ok"]
    clf = server.models["bundle"].classifier
    want = softmax(clf.predict_logits(texts))
    reg = server.metrics.registry

    def seen(what):
        return reg.get_sample_value(f"paddle2ort_classify_batch_texts_{what}", {"model": "bundle"}) or 0.0

    batches, n = seen("count"), seen("sum")
    with ThreadPoolExecutor(len(texts)) as pool:
        rows = list(pool.map(lambda t: server.post("/v1/classify", json={"model": "bundle", "input": t}).json(),
                             texts))
    got = np.array([[r["data"][0]["scores"][lab] for lab in clf.labels] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-4)     # padding differs between batchings: tiny float noise
    assert [r["data"][0]["label"] for r in rows] == [clf.labels[i] for i in got.argmax(-1)]
    batches = seen("count") - batches
    assert seen("sum") - n == len(texts)
    assert batches < len(texts)                     # requests shared batches


def test_a_full_queue_answers_429_with_retry_after(llama):
    s = Server([llama], max_batch=1, max_queue=1, retry_after=3)
    try:
        body = chat(max_tokens=100, temperature=0, ignore_eos=True)          # long enough to overlap
        with ThreadPoolExecutor(6) as pool:
            rs = list(pool.map(lambda _: s.post("/v1/chat/completions", json=body), range(6)))
        codes = sorted(r.status_code for r in rs)
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        busy = [r for r in rs if r.status_code == 429]
        assert all(r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "queue_full" for r in busy)
        ok = [r.json() for r in rs if r.status_code == 200]
        assert all(o["usage"]["completion_tokens"] == 100 for o in ok)
        assert f'route="/v1/chat/completions",status="429"' in httpx.get(s.url + "/metrics").text
    finally:
        s.close()


def test_a_client_that_goes_away_frees_its_slot(server):
    eng = server.models["llama"].engine
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/v1/chat/completions",
                      json=chat(max_tokens=200, temperature=0, ignore_eos=True, stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(x.startswith("data: ") for x in got)
            assert eng.active == 1
    t0 = time.monotonic()
    while eng.active:                              # cancelled at the next step boundary, long before 200 tokens
        assert time.monotonic() - t0 < 10, "the slot was not freed"
        time.sleep(0.05)
    health = httpx.get(server.url + "/health").json()
    assert health["models"]["llama"]["active_rows"] == 0


def test_metrics_name_every_family(server):
    server.post("/v1/chat/completions", json=chat(max_tokens=3, temperature=0))
    text = httpx.get(server.url + "/metrics").text
    for name in ("paddle2ort_requests_total", "paddle2ort_request_latency_seconds_bucket",
                 "paddle2ort_time_to_first_token_seconds_bucket", "paddle2ort_generated_tokens_per_second",
                 "paddle2ort_generated_tokens_total", "paddle2ort_queue_depth", "paddle2ort_batch_occupancy",
                 "paddle2ort_decode_step_rows_bucket"):
        assert name in text, name
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@contextlib.contextmanager
def serve_process(llama, *extra):
    """`paddle2ort serve LLAMA --port P ...` in a child process, once /health answers 200: -> (process, url)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "paddle2ort.cli", "serve", str(llama), "--port", str(port),
                             "--threads", "1", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() - t0 < 60, "serve did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_drains_the_requests_in_flight_then_exits(llama):
    with serve_process(llama) as (proc, url):
        events = []
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", url + "/v1/completions", json={"model": "llama", "prompt": "Drain", "stream": True,
                                                                 "max_tokens": 60, "temperature": 0,
                                                                 "ignore_eos": True}) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if len(events) == 2:
                        proc.send_signal(signal.SIGTERM)
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])["choices"][0]
        assert last["finish_reason"] == "length"          # the request ran to its end after SIGTERM
        assert proc.wait(60) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=1)


def test_drain_delay_says_draining_while_still_serving(llama):
    """serve --drain-delay: at SIGTERM /health turns 503 "draining" (a load balancer stops routing here) while new
    requests are still answered; after the delay the server drains and exits 0."""
    with serve_process(llama, "--drain-delay", "3") as (proc, url):
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        h = httpx.get(url + "/health", timeout=5)
        assert h.status_code == 503 and h.json()["status"] == "draining"
        r = httpx.post(url + "/v1/completions", json={"model": "llama", "prompt": "Hi", "max_tokens": 2,
                                                      "temperature": 0}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] is not None
        assert proc.wait(60) == 0 and time.monotonic() - t0 >= 3


def test_serve_refuses_a_non_servable_bundle_and_a_busy_port(tmp_path, llama, capsys):
    from paddle2ort.cli import main
    assert main(["serve", str(tmp_path / "missing")]) == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(llama), "--port", str(port)]) == 2
    assert "pick another --port" in capsys.readouterr().err


def test_the_batch_bound_holds_when_requests_arrive_together(server):
    """max_batch 1 = one request at a time, even when several wait at once (each takes its own decode steps)."""
    from paddle2ort.runtime.serving.scheduler import Engine
    g = server.models["llama"].generator
    cfg = GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    eng = Engine(g.model, g.tokenizer, g.default_stop_ids, g.max_context, max_batch=1, max_queue=8)
    done = threading.Semaphore(0)
    for i in range(3):                       # all queued before the engine thread starts
        eng.submit(g.tokenizer.encode(f"prompt {i}"), cfg, lambda ev: ev.kind == "done" and done.release())
    eng.start()
    try:
        for _ in range(3):
            assert done.acquire(timeout=60)
    finally:
        eng.stop()
    assert eng.steps == 3 * 5


def test_a_prompt_past_the_context_names_the_prompt_not_max_tokens(server):
    """A prompt the context cannot hold is the prompt's fault (param prompt/messages), whatever max_tokens is; only a
    prompt that fits with a max_tokens that does not names max_tokens. Both are context_length_exceeded."""
    g = server.models["llama"].generator
    long = " ".join(["word"] * (2 * g.max_context))
    r = server.post("/v1/completions", json={"model": "llama", "prompt": long, "max_tokens": 1})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "prompt" and err["code"] == "context_length_exceeded", err
    assert "max_tokens" not in err["message"]
    r = server.post("/v1/completions", json={"model": "llama", "prompt": "hi", "max_tokens": 10 * g.max_context})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens" and err["code"] == "context_length_exceeded", err


def test_load_benchmark_targets_are_computed_from_its_rows():
    from paddle2ort.benchmarks.serve_load import markdown, verdicts

    def row(mode, c, tps, base, failed=0):
        return {"mode": mode, "clients": c, "requests": 2 * c, "failed_valid": failed, "bad_requests": c,
                "bad_answered_400": c, "tokens_per_s": tps, "adjacent_1_client_tokens_per_s": base,
                "latency_p50_s": 1.0, "latency_p95_s": 2.0, "ttft_p50_s": 0.1, "ttft_p95_s": 0.3}

    good = [row("continuous", 1, 100, 100), row("continuous", 16, 450, 100), row("one-at-a-time", 16, 100, 100)]
    v = {x["target"].split(":")[0]: x["met"] for x in verdicts(good)}
    assert v["continuous batching"] is True and v["zero failed valid requests"] is True
    bad = [row("continuous", 16, 390, 100, failed=1)]
    v = {x["target"].split(":")[0]: x["met"] for x in verdicts(bad)}
    assert v["continuous batching"] is False and v["zero failed valid requests"] is False
    res = {"bundle": "m", "created_at": "now", "rows": good, "verdicts": verdicts(good),
           "config": {"threads": 1, "note": "", "requests": 2, "max_tokens": 8},
           "environment": {"git_commit": "x", "cpu": "cpu", "usable_cores": 2}}
    assert "4.50x" in markdown(res) and "MISSED" not in markdown(res)


# ----------------------------------------------------------------------------- the HTTP layer over a fake engine
# The server's own behaviour (limits, what runs off the event loop, disconnects, what a body may hold) does not need
# a model: a fake tokenizer and a fake engine of the scheduler's interface, so these run in seconds, without Paddle.
TINY_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


class FakeTokenizer:
    """A character a token; the chat template is rendered by the real bounded renderer; each encode takes `delay`
    seconds (time.sleep: it blocks an event loop that calls it, not a worker thread)."""
    pad_token_id = 0

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls = delay, 0

    def encode(self, text):
        self.calls += 1
        time.sleep(self.delay)
        return [1 + ord(c) % 50 for c in text]

    def decode(self, ids):
        return "x" * len(ids)

    def apply_chat_template(self, messages, add_generation_prompt=True):
        from paddle2ort.tokenization.chat_template import render_chat_template
        self.calls += 1
        return render_chat_template(TINY_TEMPLATE, messages=messages)


def fake_server(tokenizer=None, engine=None, **cfg) -> AppServer:
    return serve_fake(tokenizer or FakeTokenizer(), engine, **cfg)


@pytest.fixture(scope="module")
def fake():
    s = fake_server()
    yield s
    s.close()


def fake_chat(content="Hello", **kw):
    return {"model": "fake", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **kw}


@pytest.mark.unit
def test_a_body_over_the_limit_is_413_before_it_is_read_or_parsed():
    s = fake_server(max_body_bytes=2000)
    try:
        tok = s.served.generator.tokenizer
        r = s.post("/v1/completions", json={"model": "fake", "prompt": "x" * 5000})       # Content-Length says so
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == "body_too_large" and "2000 bytes" in err["message"] and "--max-body-mb" in err["message"]
        body = json.dumps({"model": "fake", "prompt": "x" * 5000}).encode()
        r = s.post("/v1/completions", content=iter([body[:1000], body[1000:]]),               # chunked: counted
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert tok.calls == 0                                                                 # nothing tokenized
        r = s.post("/v1/completions", json={"model": "fake", "prompt": "x" * 20, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "xxx"
        r = s.post("/v1/completions", content=iter([body[:100]]), headers={"content-type": "application/json"})
        assert r.status_code == 400                                   # a chunked body under the limit gets through
    finally:
        s.close()


@pytest.mark.unit
@pytest.mark.parametrize("route,body", [("/v1/completions", {"model": "fake", "prompt": "slow", "max_tokens": 2}),
                                        ("/v1/chat/completions", fake_chat("slow", max_tokens=2))])
def test_tokenizing_does_not_stall_the_event_loop(route, body):
    s = fake_server(tokenizer=FakeTokenizer(delay=2.0))
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(s.post, route, json=body)
            time.sleep(0.3)                                   # the request is being tokenized now
            t0 = time.monotonic()
            assert httpx.get(s.url + "/health", timeout=10).status_code == 200
            waited = time.monotonic() - t0
            assert slow.result().status_code == 200
        assert waited < 1.0, f"/health waited {waited:.2f} s behind a tokenization"       # 1.7 s on the loop
    finally:
        s.close()


@pytest.mark.unit
def test_a_prompt_that_cannot_fit_the_context_is_refused_untokenized(fake):
    from paddle2ort.runtime.serving.app import FALLBACK_TOKEN_CHARS
    tok = fake.served.generator.tokenizer
    calls, chars = tok.calls, 64 * FALLBACK_TOKEN_CHARS + 1                   # the fake's context: 64 tokens
    r = fake.post("/v1/completions", json={"model": "fake", "prompt": "x" * chars})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert r.json()["error"]["code"] == "context_length_exceeded" and "64 tokens" in r.json()["error"]["message"]
    r = fake.post("/v1/chat/completions", json=fake_chat("x" * chars))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert tok.calls == calls


@pytest.mark.unit
def test_a_huge_chat_message_is_blamed_on_its_size_not_on_the_template():
    from paddle2ort.tokenization.chat_template import MAX_OUTPUT_CHARS
    s = fake_server(engine=FakeEngine(max_context=None), max_body_bytes=10_000_000)        # no context bound known
    try:
        r = s.post("/v1/chat/completions", json=fake_chat("y" * (MAX_OUTPUT_CHARS + 10)))
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "messages" and f"{MAX_OUTPUT_CHARS + 10} characters" in err["message"], err
        assert "template is broken" not in err["message"] and s.served.generator.tokenizer.calls == 0
    finally:
        s.close()


@pytest.mark.unit
def test_a_non_streaming_client_that_goes_away_frees_its_slot():
    s = fake_server(engine=FakeEngine(max_context=None))
    try:
        eng = s.served.engine
        with pytest.raises(httpx.ReadTimeout):                   # ~10 s of tokens; the client gives up after 0.5 s
            httpx.post(s.url + "/v1/completions", timeout=0.5,
                       json={"model": "fake", "prompt": "Hi", "max_tokens": 2000, "ignore_eos": True})
        t0 = time.monotonic()
        while eng.active:                       # tokens flow all along: the disconnect is still noticed
            assert time.monotonic() - t0 < 2, "the slot was not freed while tokens were flowing"
            time.sleep(0.05)
        assert eng.cancels == 1
        assert httpx.get(s.url + "/health").json()["models"]["fake"]["active_rows"] == 0
    finally:
        s.close()


@pytest.mark.unit
@pytest.mark.parametrize("field,value", [
    ("frequency_penalty", 0.5), ("presence_penalty", -1), ("logit_bias", {"50256": -100}), ("best_of", 3),
    ("response_format", {"type": "json_object"}), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"), ("tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("functions", [{"name": "f"}]), ("function_call", {"name": "f"}), ("top_logprobs", 2),
])
def test_fields_that_would_change_the_answer_are_refused(fake, field, value):
    for route, body in (("/v1/chat/completions", fake_chat()), ("/v1/completions", {"model": "fake", "prompt": "x"})):
        r = fake.post(route, json={**body, field: value})
        assert r.status_code == 400, (route, r.text)
        err = r.json()["error"]
        assert err["param"] == field and err["message"].startswith(f"{field} is not supported"), err
        if field.endswith("_penalty"):
            assert "repetition_penalty is supported" in err["message"]


@pytest.mark.unit
def test_the_neutral_values_of_unsupported_fields_are_accepted(fake):
    neutral = {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "best_of": 2, "n": 2,
               "response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "functions": None,
               "function_call": "auto", "top_logprobs": 0, "user": "u", "metadata": {"k": "v"}}
    r = fake.post("/v1/chat/completions", json=fake_chat(**neutral))
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2
    r = fake.post("/v1/completions", json={"model": "fake", "prompt": "x", "best_of": 1, "logit_bias": None})
    assert r.status_code == 200, r.text


@pytest.mark.unit
@pytest.mark.parametrize("field,value", [
    ("max_tokens", "8"), ("max_tokens", True), ("max_tokens", 2.0), ("n", True), ("stream", "yes"), ("stream", 1),
    ("temperature", "0.5"), ("temperature", False), ("seed", True), ("ignore_eos", "true"), ("top_k", "4"),
    ("max_completion_tokens", True),
])
def test_field_types_are_strict(fake, field, value):
    r = fake.post("/v1/chat/completions", json=fake_chat(**{field: value}))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], err


@pytest.mark.unit
def test_integers_are_numbers(fake):                    # what the openai client sends for temperature=0
    r = fake.post("/v1/chat/completions", json=fake_chat(temperature=0, top_p=1, repetition_penalty=1))
    assert r.status_code == 200, r.text


@pytest.mark.unit
def test_a_body_that_is_not_a_json_object_says_what_the_body_must_be(fake):
    r = fake.post("/v1/completions", data={"model": "fake", "prompt": "x"})        # curl -d without -H
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "JSON object" in msg and "Content-Type: application/json" in msg
    assert "application/x-www-form-urlencoded" in msg, msg
    r = fake.post("/v1/completions", json=["a", "list"])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = fake.post("/v1/completions", headers={"content-type": "application/json"})          # no body at all
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"], r.text


@pytest.mark.unit
def test_serve_refuses_an_empty_host_and_logs_a_usable_url(tmp_path, capsys):
    from paddle2ort.cli import main
    from paddle2ort.cli.serve import server_url
    assert main(["serve", str(tmp_path), "--host", ""]) == 2
    err = capsys.readouterr().err
    assert "empty host" in err and "0.0.0.0" in err and "127.0.0.1" in err
    assert server_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert server_url("::1", 8000) == "http://[::1]:8000"
    assert "http://127.0.0.1:8000 " in server_url("0.0.0.0", 8000) and "every interface" in server_url("::", 8)


# ----------------------------------------------------------------------------- the near-tie rule
# Rows batched with different company run different kernel shapes (and other ISAs' kernels), so a greedy token may
# flip where the reference's top-2 logit margin is within rounding: tokens are compared up to the first such step.
# fp32 batch-shape differences here are ~1e-6 of the tiny models' logit range; TIE_EPS leaves ample room.
TIE_EPS = 1e-3


def teacher_margins(logits_of, prompt: list[int], ids: list[int]) -> list[float]:
    """Top-2 logit margin at each generated step of `ids` after `prompt` (teacher-forced, one forward):
    logits_of(tokens) -> float32 [len(tokens), V]."""
    if not ids:
        return []
    lg = np.sort(logits_of(list(prompt) + list(ids[:-1]))[len(prompt) - 1:], axis=-1)
    return (lg[:, -1] - lg[:, -2]).tolist()


def generic_logits(model):
    """logits_of for the generic graph (OrtDecoder: one forward on an empty cache)."""
    def run(tokens):
        ids = np.array([tokens], np.int64)
        past = np.zeros((0, model.num_layers, 2, 1, model.kv_heads, model.head_dim), model.cache_dtype)
        return np.asarray(model(ids, np.ones_like(ids), np.arange(len(tokens), dtype=np.int64)[None], past)[0][0],
                          np.float32)
    return run


def first_clear_divergence(got: list[int], want: list[int], margins: list[float], eps: float = TIE_EPS):
    """None when got == want, or when got leaves want at a near-tie of the reference (margin <= eps);
    else (step, margin) of the clear divergence."""
    k = next((j for j in range(max(len(got), len(want))) if j >= len(got) or j >= len(want) or got[j] != want[j]),
             None)
    if k is None or (k < len(margins) and margins[k] <= eps):
        return None
    return k, margins[k] if k < len(margins) else None


def text_divergence(got: str, want_ids: list[int], decode, margins: list[float], eps: float = TIE_EPS):
    """The rule on streamed text: the step of want_ids whose text the answer leaves first must be a near-tie."""
    if got == decode(want_ids):
        return None
    k = next((j for j in range(len(want_ids)) if not got.startswith(decode(want_ids[:j + 1]))), len(want_ids))
    if k < len(margins) and margins[k] <= eps:
        return None
    return k, margins[k] if k < len(margins) else None


def _fused_alone(dec, prompt, cfg, pad):
    from paddle2ort.runtime.generation import generate
    return generate(dec, [prompt], cfg, pad)[0]


def test_fused_decoder_rows_join_and_leave_in_cache_slots(llama):
    """The fused graph (CPU provider: the code path the GPU runs, NumPy for CuPy) under in-flight batching: rows
    join running batches in free cache slots and leave at step boundaries; each row's tokens are what it gets
    alone, up to a near-tie; a leaving row's slot is taken by the next one; more rows than slots is refused."""
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.generation import Generator
    from paddle2ort.runtime.llm import TextGenerator
    tg = TextGenerator(llama, graph="fused", max_length=64)
    dec, pad, tok = tg.model, tg.tokenizer.pad_token_id, tg.tokenizer
    prompts = [tok.encode(t) for t in ("Hello there", "A much longer prompt with words", "x", "Hello there")]
    cfgs = [GenerationConfig(max_new_tokens=n, min_new_tokens=n) for n in (9, 5, 7, 4)]
    cfgs[2] = GenerationConfig(max_new_tokens=7, min_new_tokens=7, do_sample=True, temperature=0.8, seed=3)
    want = [_fused_alone(dec, p, c, pad) for p, c in zip(prompts, cfgs)]
    logits_of = lambda t: dec.prompt_logits(dec.state(1), [t], pad)[0]          # noqa: E731
    margins = [teacher_margins(logits_of, p, w) for p, w in zip(prompts, want)]
    dec.row_slots = 2
    gen = Generator(dec, pad_id=pad)
    join_at, ids, got, slots_seen = {0: [0, 1], 3: [2], 6: [3]}, {}, {}, set()
    pending = []
    for step in range(40):
        pending += join_at.get(step, [])
        free = dec.row_slots - len(gen.rows)
        if pending and free:
            new, pending = pending[:free], pending[free:]
            for k, i in zip(new, gen.add_rows([prompts[k] for k in new], [cfgs[k] for k in new])):
                ids[i] = k
            slots_seen.update(dec.slot_of)
        if not gen.rows and not pending:
            break
        if gen.rows:
            gen.generate_next_token()
        got.update((ids[r.id], list(r.ids)) for r in gen.remove_finished())
    assert sorted(got) == [0, 1, 2, 3] and slots_seen == {0, 1}        # two slots served four rows
    for k in (0, 1, 3):
        assert first_clear_divergence(got[k], want[k], margins[k]) is None, (k, got[k], want[k])
    assert got[2] == want[2]                # seeded sampling: a flip needs a draw within rounding of a CDF edge
    assert dec.length == 0 and dec.slot_of == []
    gen.add_rows([prompts[0], prompts[1]])
    with pytest.raises(BadInputError, match="cache slots are free"):
        gen.add_rows([prompts[2]])
    gen.remove_rows([r.id for r in gen.rows])
    # the server's engine drives the fused decoder the same way: concurrent requests = alone, up to a near-tie
    from paddle2ort.runtime.serving.scheduler import Engine
    eng = Engine(dec, tok, tg.default_stop_ids, tg.max_context, max_batch=3).start()
    outs = [[] for _ in prompts]
    left = threading.Semaphore(0)
    try:
        for k, (p, c) in enumerate(zip(prompts, cfgs)):
            eng.submit(p, c, lambda ev, k=k: (outs[k].append(ev), ev.kind != "delta" and left.release()))
        for _ in prompts:
            assert left.acquire(timeout=60)
    finally:
        eng.stop()
    assert dec.row_slots == 3 and eng.active == 0 and eng.length == 0
    for k in (0, 1, 3):
        text = "".join(e.text for e in outs[k] if e.kind == "delta")
        assert text_divergence(text, want[k], tok.decode, margins[k]) is None, (k, text, tok.decode(want[k]))
