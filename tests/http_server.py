"""The serving tests' pieces: a FastAPI app served by uvicorn on a thread on a free localhost port, and a fake
generation engine behind the real app."""
import socket
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """An app served by uvicorn on a thread, on a free localhost port."""

    def __init__(self, app, **uvicorn_config):
        import uvicorn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    **{"log_level": "warning", **uvicorn_config}))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 30, "server did not start"
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=60, **kw)


class FakeEngine:
    """scheduler.Engine's interface to the server: each choice gets an "x" every `token_s` seconds from a thread
    until max_new_tokens (finish "length") or cancel; `active` counts the rows not yet left, `configs` holds every
    request's GenerationConfig."""
    retry_after = 1

    def __init__(self, max_context: int | None = 64, token_s: float = 0.005):
        self.max_context = self.prompt_limit = max_context
        self.token_s, self.active, self.queued, self.cancels, self.configs = token_s, 0, 0, 0, []
        from paddle2ort.runtime.serving.scheduler import _call_each
        self.post = _call_each

    def start(self):
        return self

    def stop(self):
        pass

    def submit(self, prompt, cfg, sink, n=1):
        from paddle2ort.runtime.errors import BadInputError
        from paddle2ort.runtime.serving.scheduler import Request
        if self.max_context is not None and len(prompt) + cfg.max_new_tokens > self.max_context:
            raise BadInputError(f"prompt + max_tokens exceeds the model's context of {self.max_context} tokens")
        self.configs.append(cfg)
        req = Request(prompt, cfg, n, sink)
        self.active += n
        threading.Thread(target=self._run, args=(req,), daemon=True).start()
        return req

    def cancel(self, req):
        self.cancels += not req.cancelled and req.done < req.n
        req.cancelled = True

    def _run(self, req):
        from paddle2ort.runtime.serving.scheduler import Event
        for _ in range(req.cfg.max_new_tokens):
            if req.cancelled:
                break
            time.sleep(self.token_s)
            req.completion_tokens += req.n
            self.post([(req.sink, Event("delta", i, text="x")) for i in range(req.n)])
        else:
            req.done = req.n
            self.post([(req.sink, Event("done", i, finish_reason="length")) for i in range(req.n)])
        self.active -= req.n


def fake_server(tokenizer, engine=None, uvicorn_config: dict | None = None, **cfg) -> AppServer:
    """create_app over one fake text-generation model ("fake": `tokenizer`, `engine` or a FakeEngine), served;
    `srv.served`, `srv.tok` and `srv.engine` are its pieces. cfg: ServeConfig's fields."""
    from pathlib import Path
    from types import SimpleNamespace

    from paddle2ort.runtime.serving.app import ServeConfig, Served, create_app
    s = Served("fake", "text-generation", Path("fake"), generator=SimpleNamespace(tokenizer=tokenizer),
               engine=engine or FakeEngine())
    srv = AppServer(create_app({"fake": s}, ServeConfig(**cfg)), **(uvicorn_config or {}))
    srv.served, srv.tok, srv.engine = s, tokenizer, s.engine
    return srv
