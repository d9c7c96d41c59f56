"""A FastAPI app served by uvicorn on a thread, on a free localhost port (the serving tests' server)."""
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
