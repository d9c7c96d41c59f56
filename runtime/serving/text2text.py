"""`serve` for text2text-generation bundles (T5, BART, UNIMO-text): /v1/completions with the prompt as the source.

One batch at a time through runtime.seq2seq.Text2TextGenerator, not the in-flight scheduler: the exported
encoder-decoder and prefix-LM step graphs take no target-side attention mask and derive positions from the cache
length, so rows at different target lengths cannot share a step (Seq2SeqDecoder has no join/leave). Waiting
requests whose settings are equal and deterministic (greedy, beam search) share a batch, up to max_batch rows; a
sampling choice runs alone, so its tokens depend only on its seed (choice i draws with seed + i, as in the
scheduler). The engine speaks the scheduler's interface (submit / cancel / Event sinks / post), so the HTTP
layer is the same.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import GenerationConfig, check_tokens

from .scheduler import Event, QueuedEngine, Request, _choice_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    request: Request
    index: int                   # the request's choice
    cfg: GenerationConfig        # with the choice's seed and the bundle's defaults


def batches(jobs: list[Job], max_batch: int) -> list[list[Job]]:
    """Jobs in batches, in order of arrival: equal deterministic settings share a batch (up to max_batch rows); a
    sampling job is a batch alone (its Philox counter is its batch row: alone, row 0)."""
    out: list[list[Job]] = []
    open_: dict[GenerationConfig, list[Job]] = {}
    for j in jobs:
        if j.cfg.sampling:
            out.append([j])
            continue
        b = open_.get(j.cfg)
        if b is None or len(b) >= max_batch:
            b = open_[j.cfg] = []
            out.append(b)
        b.append(j)
    return out


def finish_reason(ids: list[int], text: str, cut: str, cfg: GenerationConfig) -> str:
    """"stop" when a stop token or stop string ended the row, "length" when it ran to max_new_tokens."""
    return "stop" if len(cut) < len(text) or len(ids) < cfg.max_new_tokens else "length"


class Text2TextEngine(QueuedEngine):
    """The scheduler.Engine interface over a Text2TextGenerator (batch at a time; see the module's note)."""

    max_context = None                 # sources and targets are checked apart (check)

    thread_prefix = "text2text"

    def __init__(self, gen, max_batch: int = 16, max_queue: int = 64, retry_after: int = 1, metrics=None,
                 name: str = "model"):
        super().__init__(max_batch, max_queue, retry_after, metrics, name)
        self.gen, self.busy = gen, 0

    def check(self, prompt: list[int], cfg: GenerationConfig, n: int) -> tuple[list[int], GenerationConfig]:
        """Checks before queueing (the caller answers 400): ids, n, the model's source and target limits."""
        spec, dec = self.gen.spec, self.gen.model
        prompt = check_tokens([prompt], dec.vocab_size, "source")[0]
        if not 1 <= n <= self.max_batch:
            raise BadInputError(f"n must be in 1..{self.max_batch} (this server's --max-batch), got {n}")
        src_limit = self.gen.source_limit
        if src_limit is not None and len(prompt) > src_limit:
            raise BadInputError(f"prompt ({len(prompt)} tokens) exceeds the encoder's {src_limit} positions; "
                                "shorten the prompt")
        tgt_limit = getattr(spec, "max_target", None)
        if tgt_limit is not None and cfg.max_new_tokens + 1 > tgt_limit:
            raise BadInputError(f"max_tokens ({cfg.max_new_tokens}) + the start token exceeds the decoder's "
                                f"{tgt_limit} positions; lower max_tokens to at most {tgt_limit - 1}")
        limit = dec.max_tokens()
        if limit is not None and len(prompt) + cfg.max_new_tokens > limit:
            raise BadInputError(f"prompt ({len(prompt)} tokens) + max_tokens ({cfg.max_new_tokens}) exceeds the "
                                f"model's {limit} positions; shorten the prompt or lower max_tokens")
        return prompt, self.gen.stop_ids(cfg)

    @property
    def active(self) -> int:
        return self.busy

    @property
    def prompt_limit(self) -> int | None:
        """Most source tokens a prompt may have (None: no bound known); the server refuses a longer one
        untokenized."""
        limits = (self.gen.source_limit, self.gen.model.max_tokens())
        return min((x for x in limits if x is not None), default=None)

    def _rows_free(self) -> int:
        return 0 if self.busy else self.max_batch          # batch at a time: the next batch takes up to max_batch

    # ------------------------------------------------------------------ the loop (engine thread)
    def _loop(self) -> None:
        while True:
            with self.cv:
                while self.running and not self.waiting:
                    if not self.accepting:
                        self.running = False
                        break
                    self.cv.wait(0.5)
                if not self.running:
                    return
                reqs, rows = [], 0
                while self.waiting and (not reqs or rows + self.waiting[0].n <= self.max_batch):
                    reqs.append(self.waiting.popleft())
                    rows += reqs[-1].n
                self.busy = rows
                self._gauges()
            jobs = [Job(r, i, replace(r.cfg, seed=_choice_seed(r.cfg.seed, i))) for r in reqs for i in range(r.n)]
            for batch in batches(jobs, self.max_batch):
                self._run(batch)
            with self.cv:
                self.busy = 0
                self._gauges()

    def _run(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.request.cancelled]
        if not live:
            return
        cfg, t0, out = live[0].cfg, time.perf_counter(), []
        try:
            ids = self.gen.generate_token_ids([j.request.prompt for j in live], cfg)
        except Exception as e:                     # a model failure answers this batch, not the server
            log.exception("text2text generation failed")
            self.post([(j.request.sink, Event("error", j.index, text=f"generation failed: {e}")) for j in live])
            return
        now = time.perf_counter()
        for j, row in zip(live, ids):
            req = j.request
            text = self.gen.tokenizer.decode(row)
            cut = cfg.cut(text)
            req.completion_tokens += len(row)
            if req.first_token is None:
                req.first_token = now
                if self.metrics is not None:
                    self.metrics.ttft(self.name, now - req.submitted)
            if cut:
                out.append((req.sink, Event("delta", j.index, text=cut)))
            out.append((req.sink, Event("done", j.index, finish_reason=finish_reason(row, text, cut, cfg),
                                        completion_tokens=len(row))))
            if self.metrics is not None:
                self.metrics.tokens(self.name, len(row))
        if self.metrics is not None:
            self.metrics.step(len(live), self.max_batch, sum(map(len, ids)), now - t0, self.name)
        self.post(out)


__all__ = ["Job", "Text2TextEngine", "batches", "finish_reason"]
