"""In-flight (continuous) batching: the engine thread drives the one decode loop, runtime.generation.Generator,
with rows joining and leaving at step boundaries (Generator.add_rows / remove_rows over the generic graph's
CacheDecoder, or the fused graph's FusedDecoder, whose rows take cache slots on the device).

Here: the bounded queue, admission up to `max_batch` rows, cancellation, metrics and event delivery:
  - a request's n choices join as n rows (prompt prefilled once; choice i draws with seed + i), each with its own
    settings; the Generator chooses each row's token alone (its tokens do not depend on the batch);
  - after each step the rows' new tokens become text deltas (held back while a stop string may be forming or a
    UTF-8 sequence is incomplete); a finished row, or one whose client went away, leaves at the step boundary.
Written by hand: onnxruntime-genai's continuous batching is not in its Python package, and vLLM's scheduler drives
its own paged kernels, not an exported ONNX graph.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import CacheDecoder, GenerationConfig, Generator, check_tokens

log = logging.getLogger(__name__)

class QueueFull(Exception):
    """The waiting queue is at its bound: the caller answers 429 with Retry-After."""

    def __init__(self, depth: int, retry_after: int, bound: int | None = None):
        said = f"{depth} requests are waiting for a slot" if depth else "every slot is taken"
        limit = f"the queue's bound, serve --max-queue, is {bound}" if bound is not None else "the queue's bound"
        super().__init__(f"server busy: {said} ({limit}); retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The engine drains: no new requests."""


@dataclass(frozen=True)
class Event:
    """What the engine tells a request's sink: kind "delta" (text of choice `index`), "done" (finish_reason) or
    "error" (message)."""
    kind: str
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class Sequence:
    """One row (one choice of one request) and what of it has been delivered."""
    request: "Request"
    index: int
    cfg: GenerationConfig
    row_id: int = -1                                 # its Generator row
    ids: list = field(default_factory=list)          # generated ids delivered (stop token excluded)
    step: int = 0
    sent: int = 0                                    # characters of text already emitted
    finish_reason: str | None = None


@dataclass
class Request:
    prompt: list
    cfg: GenerationConfig
    n: int
    sink: Callable[[Event], None]
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    cancelled: bool = False
    done: int = 0
    completion_tokens: int = 0


class QueuedEngine:
    """What every serving engine shares: a bounded queue of requests (429 with Retry-After when full, refused once
    draining), its own thread, stop = drain, cancel. A subclass gives check(), _loop(), active and _rows_free()."""

    thread_prefix = "engine"

    def __init__(self, max_batch: int, max_queue: int, retry_after: int, metrics, name: str):
        if max_batch < 1 or max_queue < 0:
            raise BadInputError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.max_batch, self.max_queue = max_batch, max_queue
        self.retry_after, self.metrics, self.name = retry_after, metrics, name
        self.waiting: collections.deque[Request] = collections.deque()
        self.cv = threading.Condition()
        self.accepting = True
        self.running = False
        self.thread: threading.Thread | None = None
        # how a step's events reach the requests: one call a step (the server posts them to its event loop in one
        # wake-up); default: each sink called on the engine thread
        self.post: Callable[[list[tuple[Callable, Event]]], None] = _call_each

    # ------------------------------------------------------------------ public (any thread)
    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._loop, name=f"{self.thread_prefix}-{self.name}", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every admitted one (drain), then end the thread."""
        with self.cv:
            self.accepting = False
            self.cv.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)

    def submit(self, prompt: list[int], cfg: GenerationConfig, sink: Callable[[Event], None], n: int = 1) -> Request:
        prompt, cfg = self.check(prompt, cfg, n)
        req = Request(prompt, cfg, n, sink)
        with self.cv:
            if not self.accepting:
                raise ShuttingDown("the server is shutting down")
            behind = self._behind([r.n for r in self.waiting] + [n])
            if behind > self.max_queue:
                raise QueueFull(behind - 1, self.retry_after, self.max_queue)
            self.waiting.append(req)
            self._gauges()
            self.cv.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        """The client went away: a waiting request is dropped now; running rows leave at the engine's next
        boundary (a step of the scheduler, a batch of the batch-at-a-time engine)."""
        with self.cv:
            req.cancelled = True
            if req in self.waiting:
                self.waiting.remove(req)
                self._gauges()
            self.cv.notify_all()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def _behind(self, rows: list[int]) -> int:
        """How many of these queued requests (rows each, in order) wait for a slot: those the next boundary does not
        admit (admission is in order: one that does not fit holds back those after it). A request the free rows
        take at the next boundary is not waiting for a slot, so --max-queue 0 still admits while rows are free."""
        free = self._rows_free()
        for i, k in enumerate(rows):
            if k > free:
                return len(rows) - i
            free -= k
        return 0

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.load(self.name, len(self.waiting), self.active, self.max_batch)


class Engine(QueuedEngine):
    """The continuous-batching loop on its own thread. `model`: a graph-contract callable carrying num_layers,
    kv_heads, head_dim, vocab_size, cache_dtype (runtime.llm.OrtDecoder), or a decoder with join/leave
    (runtime.fused.FusedDecoder: its row_slots become max_batch); `tokenizer`: encode/decode/pad id."""

    def __init__(self, model, tokenizer, stop_ids: tuple[int, ...], max_context: int | None, max_batch: int = 16,
                 max_queue: int = 64, retry_after: int = 1, metrics=None, name: str = "model"):
        super().__init__(max_batch, max_queue, retry_after, metrics, name)
        self.model, self.tok, self.stop_ids = model, tokenizer, tuple(stop_ids)
        self.max_context = max_context
        self.pad_id = int(tokenizer.pad_token_id)
        self.vocab = int(model.vocab_size)
        self.rows: list[Sequence] = []                 # in the Generator's batch order
        self.gen = self._generator()
        self.steps = 0
        self.outbox: list[tuple[Callable, Event]] = []

    def check(self, prompt: list[int], cfg: GenerationConfig, n: int) -> tuple[list[int], GenerationConfig]:
        """Checks before queueing (the caller answers 400 on BadInputError): ids, context room, n, stop ids."""
        prompt = check_tokens([prompt], self.vocab)[0]
        if not 1 <= n <= self.max_batch:
            raise BadInputError(f"n must be in 1..{self.max_batch} (this server's --max-batch), got {n}")
        if cfg.num_beams != 1:
            raise BadInputError("the server does greedy and sampling decoding; beam search is `paddle2ort generate`")
        if self.max_context is not None and len(prompt) >= self.max_context:      # no room for one new token
            raise BadInputError(f"the prompt is {len(prompt)} tokens, and the model's context holds "
                                f"{self.max_context} (with the answer); shorten it")
        if self.max_context is not None and len(prompt) + cfg.max_new_tokens > self.max_context:
            raise BadInputError(f"prompt ({len(prompt)} tokens) + max_tokens ({cfg.max_new_tokens}) exceeds the "
                                f"model's context of {self.max_context} tokens; shorten the prompt or lower max_tokens")
        if not cfg.stop_token_ids:
            cfg = replace(cfg, stop_token_ids=self.stop_ids)
        return prompt, cfg

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def prompt_limit(self) -> int | None:
        """Most tokens a prompt may have (None: no bound known); the server refuses a longer one untokenized."""
        return self.max_context

    @property
    def length(self) -> int:
        """Cached positions of the running batch (0 once every row has left)."""
        dec = self.gen.dec
        if hasattr(dec, "slot_of"):                   # the fused graph: the longest live row
            return dec.length if dec.slot_of is not None else 0
        return 0 if dec.cache is None else dec.cache.length

    # ------------------------------------------------------------------ the loop (engine thread)
    def _rows_free(self) -> int:
        return self.max_batch - len(self.rows)

    def _loop(self) -> None:
        while True:
            with self.cv:
                while self.running and not self.rows and not self.waiting:
                    if not self.accepting:
                        self.running = False
                        break
                    self.cv.wait(0.5)
                if not self.running:
                    return
                joining, taken = [], len(self.rows)
                while self.waiting and taken + self.waiting[0].n <= self.max_batch:
                    joining.append(self.waiting.popleft())
                    taken += joining[-1].n
            try:
                self._admit([r for r in joining if not r.cancelled])
                self._leave()
                if self.rows:
                    self._step()
                    self._leave()
            except Exception as e:                     # a model failure ends the requests in flight, not the server
                log.exception("generation step failed")
                for s in self.rows:
                    self._send(s.request, Event("error", s.index, text=f"generation failed: {e}"))
                held = {id(s.request) for s in self.rows}
                for req in joining:                    # requests whose rows never joined are answered too
                    if id(req) not in held and not req.cancelled:
                        self._send(req, Event("error", 0, text=f"generation failed: {e}"))
                self.rows = []
                self.gen = self._generator()
            self._flush()
            with self.cv:
                self._gauges()

    def _generator(self) -> Generator:
        dec = self.model if hasattr(self.model, "join") else CacheDecoder.wrap(self.model, self.pad_id)
        if hasattr(dec, "row_slots"):                  # the fused graph: one cache slot per row of the batch
            dec.row_slots = self.max_batch
        return Generator(dec, pad_id=self.pad_id, decode=self.tok.decode, max_context=self.max_context)

    def _admit(self, reqs: list[Request]) -> None:
        """The requests' n choices join the batch as rows, all in one add_rows (the cache rebuilt once for the lot,
        not once a request; the fused decoder prefills the lot's prompts in right-padded batches of similar length,
        FusedDecoder.prefill_groups)."""
        seqs = [Sequence(req, i, replace(req.cfg, seed=_choice_seed(req.cfg.seed, i)))
                for req in reqs for i in range(req.n)]
        if not seqs:
            return
        ids = self.gen.add_rows([q.request.prompt for q in seqs], [q.cfg for q in seqs])
        for q, i in zip(seqs, ids):
            q.row_id = i
        self.rows += seqs

    def _step(self) -> None:
        """One Generator step (the model on every decoding row, each row's own choice), then the new tokens out."""
        b, t0, before = len(self.rows), time.perf_counter(), self.gen.model_steps
        self.gen.generate_next_token()
        self.steps += self.gen.model_steps - before
        for q, st in zip(self.rows, self.gen.rows):
            if q.finish_reason is None and st.step > q.step:
                self._accept(q, st)
        if self.metrics is not None:
            self.metrics.step(b, self.max_batch, b, time.perf_counter() - t0, self.name)

    def _accept(self, q: Sequence, st) -> None:
        """A row's new token as events: a stop token / stop string / length ends the choice."""
        q.step = st.step
        req = q.request
        if req.first_token is None:
            req.first_token = time.perf_counter()
            if self.metrics is not None:
                self.metrics.ttft(self.name, req.first_token - req.submitted)
        new = len(st.ids) - len(q.ids)
        q.ids = list(st.ids)
        req.completion_tokens += new
        if st.finish_reason == "stop" and st.stop_at is None:           # a stop token (not delivered)
            self._finish(q, "stop")
            return
        text = self.tok.decode(q.ids)
        if st.stop_at is not None:
            self._emit(q, text[:st.stop_at])
            self._finish(q, "stop")
            return
        if st.finish_reason == "length":
            self._emit(q, text)
            self._finish(q, "length")
            return
        if not text.endswith("\ufffd"):                                 # an incomplete UTF-8 sequence waits
            hold = max((len(s) - 1 for s in q.cfg.stop_strings), default=0)   # a stop string may be forming
            self._emit(q, text[:max(len(text) - hold, q.sent)])

    def _emit(self, q: Sequence, text: str) -> None:
        if len(text) > q.sent:
            self._send(q.request, Event("delta", q.index, text=text[q.sent:]))
            q.sent = len(text)

    def _finish(self, q: Sequence, reason: str) -> None:
        q.finish_reason = reason
        req = q.request
        req.done += 1
        self._send(req, Event("done", q.index, finish_reason=reason, completion_tokens=len(q.ids)))
        if self.metrics is not None:
            self.metrics.tokens(self.name, len(q.ids))

    def _leave(self) -> None:
        """Rows that finished or whose client went away leave the Generator (their cache is freed)."""
        gone = [q for q in self.rows if q.finish_reason is not None or q.request.cancelled]
        if not gone:
            return
        for q in gone:
            if q.request.cancelled and q.finish_reason is None:
                q.finish_reason = "cancelled"
                if self.metrics is not None:
                    self.metrics.tokens(self.name, len(q.ids))
        left = {q.row_id for q in gone}
        self.gen.remove_rows(sorted(left))
        self.rows = [q for q in self.rows if q.row_id not in left]

    def _send(self, req: Request, ev: Event) -> None:
        self.outbox.append((req.sink, ev))

    def _flush(self) -> None:
        if self.outbox:
            out, self.outbox = self.outbox, []
            self.post(out)


def _call_each(items: list[tuple[Callable, Event]]) -> None:
    for sink, ev in items:
        sink(ev)


def _choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i of a request draws with seed + i (choice 0: the request's seed, as alone)."""
    return None if seed is None else (seed + i) % (2 ** 64)


def generate_alone(model, tokenizer, stop_ids, prompt: list[int], cfg: GenerationConfig,
                   max_context: int | None = None) -> tuple[str, str]:
    """One request through an engine of its own, synchronously: (text, finish_reason). The reference the
    concurrency tests and the benchmark compare against."""
    out: list[Event] = []
    done = threading.Event()

    def sink(ev: Event) -> None:
        out.append(ev)
        if ev.kind in ("done", "error"):
            done.set()

    eng = Engine(model, tokenizer, stop_ids, max_context, max_batch=1, max_queue=1).start()
    try:
        eng.submit(prompt, cfg, sink)
        done.wait()
    finally:
        eng.stop()
    return "".join(e.text for e in out if e.kind == "delta"), out[-1].finish_reason or out[-1].text


__all__ = ["Engine", "Event", "QueueFull", "Request", "ShuttingDown", "generate_alone"]
