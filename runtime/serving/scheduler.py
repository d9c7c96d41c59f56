"""In-flight (continuous) batching over the exported graph's contract (runtime.generation's module docstring):
`forward(input_ids, attention_mask, position_ids, past) -> (logits, present)`, past time-major [T, L, 2, B, KVH, D].

One engine thread owns one batch of rows (at most `max_batch`) and its KV cache:
  - a new request is prefilled alone (its prompt once, its cache repeated for n > 1 choices), then its rows join
    the batch at the next step boundary: caches are right-aligned, the shorter side left-padded and masked
    (positions count real tokens only, as runtime.generation.CacheDecoder does for left-padded batches);
  - one `forward` a step feeds every row its last token; each row chooses its next one with its own settings
    (kernels.sample_rows on its logits row: the one token-choice path, its own Philox seed; row 0 of a 1-row call,
    so a request draws what it would draw alone);
  - a row that stops (stop token, stop string, max_tokens) or whose client went away leaves at the step boundary;
    columns no live row uses are trimmed from the left.
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

import numpy as np

from paddle2ort.runtime import kernels
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import GenerationConfig, check_tokens

log = logging.getLogger(__name__)

CACHE_HEADROOM = 64          # steps of KV room allocated past the current length (grown when used up)


class QueueFull(Exception):
    """The waiting queue is at its bound: the caller answers 429 with Retry-After."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"server busy: {depth} requests are waiting (the queue's bound); retry in {retry_after} s")
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
    """One row (one choice of one request)."""
    request: "Request"
    index: int
    cfg: GenerationConfig
    seen: np.ndarray | None = None
    stop_arr: np.ndarray | None = None
    ids: list = field(default_factory=list)          # generated ids (stop token excluded)
    next_id: int = 0                                 # the token the next step feeds
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


class Engine:
    """The continuous-batching loop on its own thread. `model`: a graph-contract callable carrying num_layers,
    kv_heads, head_dim, vocab_size, cache_dtype (runtime.llm.OrtDecoder); `tokenizer`: encode/decode/pad id."""

    def __init__(self, model, tokenizer, stop_ids: tuple[int, ...], max_context: int | None, max_batch: int = 16,
                 max_queue: int = 64, retry_after: int = 1, metrics=None, name: str = "model"):
        if max_batch < 1 or max_queue < 0:
            raise BadInputError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model, self.tok, self.stop_ids = model, tokenizer, tuple(stop_ids)
        self.max_context, self.max_batch, self.max_queue = max_context, max_batch, max_queue
        self.retry_after, self.metrics, self.name = retry_after, metrics, name
        self.pad_id = int(tokenizer.pad_token_id)
        self.vocab = int(model.vocab_size)
        self.geom = (model.num_layers, 2, model.kv_heads, model.head_dim)
        self.dtype = np.dtype(getattr(model, "cache_dtype", np.float32))
        self.waiting: collections.deque[Request] = collections.deque()
        self.rows: list[Sequence] = []
        self.cache = self._empty(0, 0)
        self.length = 0
        self.mask = np.zeros((0, 0), np.int64)
        self.cv = threading.Condition()
        self.accepting = True
        self.running = False
        self.thread: threading.Thread | None = None
        self.steps = 0
        self.outbox: list[tuple[Callable, Event]] = []
        # how a step's events reach the requests: one call a step (the server posts them to its event loop in one
        # wake-up); default: each sink called on the engine thread
        self.post: Callable[[list[tuple[Callable, Event]]], None] = _call_each

    # ------------------------------------------------------------------ public (any thread)
    def start(self) -> "Engine":
        self.running = True
        self.thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every admitted one (drain), then end the thread."""
        with self.cv:
            self.accepting = False
            self.cv.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)

    def check(self, prompt: list[int], cfg: GenerationConfig, n: int) -> tuple[list[int], GenerationConfig]:
        """Checks before queueing (the caller answers 400 on BadInputError): ids, context room, n, stop ids."""
        prompt = check_tokens([prompt], self.vocab)[0]
        if not 1 <= n <= self.max_batch:
            raise BadInputError(f"n must be in 1..{self.max_batch} (this server's --max-batch), got {n}")
        if cfg.num_beams != 1:
            raise BadInputError("the server does greedy and sampling decoding; beam search is `paddle2ort generate`")
        if self.max_context is not None and len(prompt) + cfg.max_new_tokens > self.max_context:
            raise BadInputError(f"prompt ({len(prompt)} tokens) + max_tokens ({cfg.max_new_tokens}) exceeds the "
                                f"model's context of {self.max_context} tokens; shorten the prompt or lower max_tokens")
        if not cfg.stop_token_ids:
            cfg = replace(cfg, stop_token_ids=self.stop_ids)
        return prompt, cfg

    def submit(self, prompt: list[int], cfg: GenerationConfig, sink: Callable[[Event], None], n: int = 1) -> Request:
        prompt, cfg = self.check(prompt, cfg, n)
        req = Request(prompt, cfg, n, sink)
        with self.cv:
            if not self.accepting:
                raise ShuttingDown("the server is shutting down")
            if len(self.waiting) >= self.max_queue and (self.waiting or self._rows_busy(n)):
                raise QueueFull(len(self.waiting), self.retry_after)
            self.waiting.append(req)
            self._gauges()
            self.cv.notify_all()
        return req

    def cancel(self, req: Request) -> None:
        """The client went away: its rows leave at the next step boundary (a waiting request is dropped now)."""
        with self.cv:
            req.cancelled = True
            if req in self.waiting:
                self.waiting.remove(req)
                self._gauges()
            self.cv.notify_all()

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------------ the loop (engine thread)
    def _rows_busy(self, n: int) -> bool:
        return len(self.rows) + n > self.max_batch

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
                for req in joining:
                    if not req.cancelled:
                        self._prefill(req)
                self._leave()
                if self.rows:
                    self._step()
                    self._leave()
            except Exception as e:                     # a model failure ends the requests in flight, not the server
                log.exception("generation step failed")
                for s in self.rows:
                    self._send(s.request, Event("error", s.index, text=f"generation failed: {e}"))
                self.rows = []
                self._reset()
            self._flush()
            with self.cv:
                self._gauges()

    def _empty(self, t: int, b: int) -> np.ndarray:
        layers, two, kvh, d = self.geom
        return np.zeros((t, layers, two, b, kvh, d), self.dtype)

    def _reset(self) -> None:
        self.cache, self.length, self.mask = self._empty(0, 0), 0, np.zeros((0, 0), np.int64)

    def _prefill(self, req: Request) -> None:
        """Run the prompt alone, choose each choice's first token, join the batch (right-aligned)."""
        s = len(req.prompt)
        ids = np.array([req.prompt], np.int64)
        logits, present = self.model(ids, np.ones_like(ids), np.arange(s, dtype=np.int64)[None], self._empty(0, 1))
        seqs = [Sequence(req, i, replace(req.cfg, seed=_choice_seed(req.cfg.seed, i))) for i in range(req.n)]
        row_logits = np.ascontiguousarray(logits[:, -1])
        for q in seqs:
            q.stop_arr = np.array(q.cfg.stop_token_ids, np.int32) if q.cfg.stop_token_ids else None
            if q.cfg.repetition_penalty != 1.0:
                q.seen = np.zeros((1, self.vocab), np.uint8)
                q.seen[0, req.prompt] = 1
            self._choose(q, row_logits)
        present = np.repeat(present, req.n, axis=3) if req.n > 1 else present
        self._join(present, seqs)

    def _join(self, present: np.ndarray, seqs: list[Sequence]) -> None:
        s, k, b, t = present.shape[0], len(seqs), len(self.rows), self.length
        t2 = max(t, s)
        cap = t2 + CACHE_HEADROOM
        cache = self._empty(cap, b + k)
        cache[t2 - t:t2, :, :, :b] = self.cache[:t]
        cache[t2 - s:t2, :, :, b:] = present
        mask = np.zeros((b + k, t2), np.int64)
        mask[:b, t2 - t:] = self.mask
        mask[b:, t2 - s:] = 1
        self.cache, self.mask, self.length = cache, mask, t2
        self.rows += seqs

    def _step(self) -> None:
        b, t = len(self.rows), self.length
        if t == self.cache.shape[0]:                                   # out of room: grow
            grown = self._empty(t + CACHE_HEADROOM, b)
            grown[:t] = self.cache[:t]
            self.cache = grown
        self.mask = np.concatenate([self.mask, np.ones((b, 1), np.int64)], axis=1)
        pos = (self.mask.sum(-1, keepdims=True) - 1).astype(np.int64)
        ids = np.array([[q.next_id] for q in self.rows], np.int64)
        t0 = time.perf_counter()
        logits, present = self.model(ids, self.mask, pos, self.cache[:t])
        self.cache[t] = present[0]
        self.length = t + 1
        self.steps += 1
        lg = logits[:, -1]
        greedy: dict[tuple, list[int]] = {}        # greedy rows without a penalty: one twin call per stop setting
        for r, q in enumerate(self.rows):
            if q.finish_reason is None and not q.cfg.sampling and q.seen is None:
                greedy.setdefault((q.step < q.cfg.min_new_tokens, q.cfg.stop_token_ids), []).append(r)
            else:
                self._choose(q, lg[r:r + 1])
        for idx in greedy.values():
            first = self.rows[idx[0]]
            nxt = np.zeros((len(idx), 1), np.int64)
            kernels.sample_rows(lg[idx], None, first.cfg.sampler_params(first.step, self.pad_id), nxt,
                                stop_ids=first.stop_arr)
            for j, r in enumerate(idx):
                self._accept(self.rows[r], int(nxt[j, 0]))
        if self.metrics is not None:
            self.metrics.step(b, self.max_batch, b, time.perf_counter() - t0, self.name)

    def _choose(self, q: Sequence, logits: np.ndarray) -> None:
        """One row's next token with its own settings; stop token / stop string / length decide its end."""
        if q.finish_reason is not None:
            return
        nxt = np.zeros((1, 1), np.int64)
        kernels.sample_rows(logits, None, q.cfg.sampler_params(q.step, self.pad_id), nxt, seen=q.seen,
                            stop_ids=q.stop_arr)                       # stop ids suppressed before min_new_tokens
        self._accept(q, int(nxt[0, 0]))

    def _accept(self, q: Sequence, tok: int) -> None:
        q.step += 1
        req = q.request
        if req.first_token is None:
            req.first_token = time.perf_counter()
            if self.metrics is not None:
                self.metrics.ttft(self.name, req.first_token - req.submitted)
        if tok in q.cfg.stop_token_ids and q.step > q.cfg.min_new_tokens:
            self._finish(q, "stop")
            return
        q.ids.append(tok)
        q.next_id = tok
        req.completion_tokens += 1
        text = self.tok.decode(q.ids)
        stop_at = _find_stop(text, q.cfg.stop_strings, q.sent)
        if stop_at is not None:
            self._emit(q, text[:stop_at])
            self._finish(q, "stop")
            return
        if q.step >= q.cfg.max_new_tokens:
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
        """Rows that finished or whose client went away leave; columns no live row uses are trimmed."""
        keep = [i for i, q in enumerate(self.rows) if q.finish_reason is None and not q.request.cancelled]
        if len(keep) == len(self.rows):
            return
        for q in self.rows:
            if q.request.cancelled and q.finish_reason is None:
                q.finish_reason = "cancelled"
                if self.metrics is not None:
                    self.metrics.tokens(self.name, len(q.ids))
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._reset()
            return
        mask = self.mask[keep]
        lead = int(np.argmax(mask.any(0)))
        t = self.length
        cache = self._empty(t - lead + CACHE_HEADROOM, len(keep))
        cache[:t - lead] = self.cache[lead:t][:, :, :, keep]
        self.cache, self.mask, self.length = cache, mask[:, lead:], t - lead

    def _send(self, req: Request, ev: Event) -> None:
        self.outbox.append((req.sink, ev))

    def _flush(self) -> None:
        if self.outbox:
            out, self.outbox = self.outbox, []
            self.post(out)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.load(self.name, len(self.waiting), len(self.rows), self.max_batch)


def _call_each(items: list[tuple[Callable, Event]]) -> None:
    for sink, ev in items:
        sink(ev)


def _choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i of a request draws with seed + i (choice 0: the request's seed, as alone)."""
    return None if seed is None else (seed + i) % (2 ** 64)


def _find_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Where the first stop string starts in text (searched from what may still be cut), else None."""
    hits = []
    for s in stops:
        i = text.find(s, max(0, sent - len(s)))
        if i >= 0:
            hits.append(i)
    return min(hits) if hits else None


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
