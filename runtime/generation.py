"""The decode loop: small pure functions in the manner of gpt-fast's generate.py, plus a step API (`Generator`).

A decoder is any callable `model(input_ids, attention_mask, position_ids, past) -> (logits, present)` with the
exported graph's contract (see paddle2ort.convert.llm.wrapper): past [P, L, 2, B, KVH, D] time-major,
present [S, L, 2, B, KVH, D] holding only the new positions. The same loop drives onnxruntime (runtime.llm)
and, in the converter's validation, Paddle itself.

Shapes: B batch rows, S new tokens this call, P cached tokens, V vocabulary.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import BadInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    do_sample: bool = False          # False: greedy. temperature == 0 also means greedy.
    temperature: float = 1.0
    top_k: int = 0                   # 0: off
    top_p: float = 1.0               # 1.0: off; must be in (0, 1]
    repetition_penalty: float = 1.0  # 1.0: off; CTRL-style, must be > 0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise BadInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise BadInputError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature < 0:
            raise BadInputError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BadInputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise BadInputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise BadInputError(f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if self.num_beams < 1:
            raise BadInputError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.sampling:
            raise BadInputError("beam search is deterministic: use num_beams > 1 without sampling options")

    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature > 0 and self.top_k != 1


# ----------------------------------------------------------------------------- logits processing (pure, [B, V])
def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL penalty on tokens already in the row (prompt + generated): positive logits / p, negative * p.
    seen: bool [B, V]."""
    if penalty == 1.0:
        return logits
    pen = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, pen, logits)


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep logits >= the k-th largest of the row (ties at the boundary are kept); others -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]                       # [B, 1]
    return np.where(logits >= kth, logits, -np.inf)


def top_p_mask(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")                              # [B, V]
    sorted_logits = np.take_along_axis(logits, order, -1)
    probs = softmax(sorted_logits)
    cum = np.cumsum(probs, axis=-1)
    remove_sorted = (cum - probs) >= p                                               # mass before this token
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, -1)
    return np.where(remove, -np.inf, logits)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def logits_to_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    logits = logits / max(temperature, 1e-5)                                         # [B, V]
    logits = top_k_mask(logits, top_k)
    logits = top_p_mask(logits, top_p)
    return softmax(logits)


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inverse-CDF draw per row: one uniform per row, so a seed fixes the whole sequence. -> [B] int64."""
    u = rng.random(probs.shape[0])[:, None]
    cdf = np.cumsum(probs, axis=-1)
    idx = (cdf < u * cdf[:, -1:]).sum(-1)
    return np.minimum(idx, probs.shape[-1] - 1).astype(np.int64)


def next_tokens(logits: np.ndarray, cfg: GenerationConfig, seen: np.ndarray, step: int,
                rng: np.random.Generator) -> np.ndarray:
    """One step of logits processing + choice. logits [B, V] -> ids [B]."""
    logits = apply_repetition_penalty(logits.astype(np.float32), seen, cfg.repetition_penalty)
    if step < cfg.min_new_tokens and cfg.stop_token_ids:
        logits = logits.copy()
        logits[:, list(cfg.stop_token_ids)] = -np.inf
    if not cfg.sampling:
        return logits.argmax(-1).astype(np.int64)
    return sample(logits_to_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p), rng)


# ----------------------------------------------------------------------------- inputs and the KV cache
def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids [B, S], attention_mask [B, S] (0 on the left padding)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise BadInputError("every prompt needs at least one token (an empty prompt has nothing to continue)")
    s = max(len(p) for p in prompts)
    ids = np.full((len(prompts), s), pad_id, np.int64)
    mask = np.zeros((len(prompts), s), np.int64)
    for i, p in enumerate(prompts):
        ids[i, s - len(p):] = p
        mask[i, s - len(p):] = 1
    return ids, mask


def position_ids(mask: np.ndarray) -> np.ndarray:
    """Positions count real tokens only, so a left-padded row is numbered as if unpadded. [B, T] -> [B, T]."""
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0).astype(np.int64)


@dataclass
class KVCache:
    """Preallocated time-major buffer [T_max, L, 2, B, KVH, D]; steps write new rows in place."""

    buffer: np.ndarray
    length: int = 0

    @classmethod
    def allocate(cls, max_tokens: int, layers: int, batch: int, kv_heads: int, head_dim: int,
                 dtype=np.float32) -> "KVCache":
        return cls(np.zeros((max_tokens, layers, 2, batch, kv_heads, head_dim), dtype))

    def view(self) -> np.ndarray:
        return self.buffer[:self.length]                                             # contiguous: time-major

    def append(self, present: np.ndarray) -> None:
        s = present.shape[0]
        if self.length + s > self.buffer.shape[0]:
            raise BadInputError(f"KV cache full ({self.buffer.shape[0]} tokens)")
        self.buffer[self.length:self.length + s] = present
        self.length += s

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: row i takes the history of row rows[i]."""
        self.buffer[:self.length] = self.buffer[:self.length][:, :, :, rows]


# ----------------------------------------------------------------------------- the loop
def prefill(model, cache: KVCache, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run the prompt; fill the cache. -> last-position logits [B, V]."""
    logits, present = model(input_ids, mask, position_ids(mask), cache.view())      # [B, S, V], [S, L, 2, B, ..]
    cache.append(present)
    return logits[:, -1]


def decode_one_token(model, cache: KVCache, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Feed one token per row. tokens [B]; mask [B, P+1] already includes it. -> logits [B, V]."""
    pos = (mask.sum(-1, keepdims=True) - 1).astype(np.int64)                        # [B, 1]
    logits, present = model(tokens[:, None], mask, pos, cache.view())               # [B, 1, V], [1, L, 2, B, ..]
    cache.append(present)
    return logits[:, -1]


@dataclass
class StepResult:
    tokens: np.ndarray            # [B] chosen this step (pad for finished rows)
    finished: np.ndarray          # [B] bool


class Generator:
    """Step API (like onnxruntime-genai's Generator): prefill on construction, then `step()` until `done`."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
                 max_context: int | None = None, decode: Callable[[list[int]], str] | None = None):
        self.model, self.cfg, self.pad_id, self.decode = model, cfg, pad_id, decode
        ids, self.mask = left_pad(prompts, pad_id)
        b, s = ids.shape
        if max_context is not None and s + cfg.max_new_tokens > max_context:
            raise BadInputError(f"prompt ({s} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the model's "
                                f"context of {max_context} tokens; shorten the prompt or lower max_new_tokens")
        if cfg.stop_strings and decode is None:
            raise BadInputError("stop strings need a tokenizer to decode with")
        self.cache = KVCache.allocate(s + cfg.max_new_tokens, model.num_layers, b, model.kv_heads, model.head_dim,
                                      model.cache_dtype)
        self.rng = np.random.default_rng(cfg.seed)
        self.seen = np.zeros((b, model.vocab_size), bool)
        for i, p in enumerate(prompts):
            self.seen[i, list(p)] = True
        self.generated: list[list[int]] = [[] for _ in range(b)]
        self.finished = np.zeros(b, bool)
        self.logits = prefill(model, self.cache, ids, self.mask)
        self.steps = 0

    @property
    def done(self) -> bool:
        return bool(self.finished.all()) or self.steps >= self.cfg.max_new_tokens

    def step(self) -> StepResult:
        if self.done:
            raise BadInputError("generation is finished")
        tok = next_tokens(self.logits, self.cfg, self.seen, self.steps, self.rng)
        tok = np.where(self.finished, self.pad_id, tok)
        newly = np.zeros_like(self.finished)
        for i, t in enumerate(tok):
            if self.finished[i]:
                continue
            self.generated[i].append(int(t))
            self.seen[i, t] = True
            if self.steps + 1 >= self.cfg.min_new_tokens and self._stops(i, int(t)):
                newly[i] = True
        self.finished |= newly
        self.steps += 1
        if not self.done:
            self.mask = np.concatenate([self.mask, (~self.finished)[:, None].astype(np.int64)], axis=1)
            self.logits = decode_one_token(self.model, self.cache, tok, self.mask)
        return StepResult(tok, self.finished.copy())

    def _stops(self, row: int, token: int) -> bool:
        if token in self.cfg.stop_token_ids:
            return True
        if self.cfg.stop_strings:
            text = self.decode(self.generated[row][-16:])
            return any(s in text for s in self.cfg.stop_strings)
        return False

    def results(self) -> list[list[int]]:
        """Generated ids per row, without the stop token / text after a stop string."""
        out = []
        for g in self.generated:
            g = list(g)
            if g and g[-1] in self.cfg.stop_token_ids:
                g = g[:-1]
            out.append(g)
        return out


def generate(model, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
             max_context: int | None = None, decode=None,
             streamer: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Batched generation with left padding and per-row finish. streamer(row, token) is called per new token."""
    if cfg.num_beams > 1:
        return [beam_search(model, p, cfg, pad_id, max_context) for p in prompts]
    gen = Generator(model, prompts, cfg, pad_id, max_context, decode)
    while not gen.done:
        before = gen.finished.copy()
        res = gen.step()
        if streamer is not None:
            for i, t in enumerate(res.tokens):
                if not before[i]:
                    streamer(i, int(t))
    return gen.results()


def stream_text(model, tokenizer, prompt_ids: Sequence[int], cfg: GenerationConfig,
                max_context: int | None = None) -> Iterator[str]:
    """Yield text deltas for one prompt as tokens are produced (stop tokens are not printed)."""
    from paddle2ort.tokenization.bpe import StreamDecoder
    gen = Generator(model, [prompt_ids], cfg, tokenizer.pad_token_id, max_context, tokenizer.decode)
    dec = StreamDecoder(tokenizer)
    while not gen.done:
        t = int(gen.step().tokens[0])
        if t in cfg.stop_token_ids:
            break
        delta = dec.push(t)
        if delta:
            yield delta


# ----------------------------------------------------------------------------- beam search
def log_softmax(x: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def beam_search(model, prompt: Sequence[int], cfg: GenerationConfig, pad_id: int,
                max_context: int | None = None) -> list[int]:
    """Beam search for one prompt: num_beams rows share the prompt; finished hypotheses are scored
    sum(logprob) / len ** length_penalty; early_stopping ends once num_beams hypotheses are done."""
    nb = cfg.num_beams
    ids, mask = left_pad([prompt] * nb, pad_id)
    if max_context is not None and ids.shape[1] + cfg.max_new_tokens > max_context:
        raise BadInputError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens exceeds the context of {max_context}")
    cache = KVCache.allocate(ids.shape[1] + cfg.max_new_tokens, model.num_layers, nb, model.kv_heads,
                             model.head_dim, model.cache_dtype)
    logits = prefill(model, cache, ids, mask)
    scores = np.zeros(nb)
    scores[1:] = -np.inf                                  # all beams start identical: expand from the first only
    seqs: list[list[int]] = [[] for _ in range(nb)]
    done: list[tuple[float, list[int]]] = []
    seen = np.zeros((nb, model.vocab_size), bool)
    seen[:, list(prompt)] = True
    for step in range(cfg.max_new_tokens):
        lp = log_softmax(apply_repetition_penalty(logits, seen, cfg.repetition_penalty))
        if step < cfg.min_new_tokens and cfg.stop_token_ids:
            lp[:, list(cfg.stop_token_ids)] = -np.inf
        cand = (scores[:, None] + lp).reshape(-1)                                      # [nb * V]
        top = np.argsort(-cand, kind="stable")[:2 * nb]
        rows, toks, new_scores = [], [], []
        for c in top:
            r, t = divmod(int(c), lp.shape[1])
            if t in cfg.stop_token_ids:
                if step + 1 >= cfg.min_new_tokens:
                    done.append((cand[c] / max(len(seqs[r]) + 1, 1) ** cfg.length_penalty, seqs[r] + [t]))
                continue
            rows.append(r)
            toks.append(t)
            new_scores.append(cand[c])
            if len(rows) == nb:
                break
        if cfg.early_stopping and len(done) >= nb:
            break
        rows_a = np.array(rows)
        cache.reorder(rows_a)
        mask = mask[rows_a]
        seqs = [seqs[r] + [t] for r, t in zip(rows, toks)]
        seen = seen[rows_a]
        seen[np.arange(nb), toks] = True
        scores = np.array(new_scores)
        if step + 1 == cfg.max_new_tokens:
            break
        mask = np.concatenate([mask, np.ones((nb, 1), np.int64)], axis=1)
        logits = decode_one_token(model, cache, np.array(toks, np.int64), mask)
    for s, q in zip(scores, seqs):
        done.append((s / max(len(q), 1) ** cfg.length_penalty, q))
    best = max(done, key=lambda x: x[0])[1]
    return [t for t in best if t not in cfg.stop_token_ids]


__all__ = ["GenerationConfig", "Generator", "KVCache", "apply_repetition_penalty", "beam_search", "decode_one_token",
           "generate", "left_pad", "log_softmax", "logits_to_probs", "next_tokens", "position_ids", "prefill", "sample",
           "stream_text", "top_k_mask", "top_p_mask"]
