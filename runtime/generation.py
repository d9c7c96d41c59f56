"""The decode loop: one step API (`Generator`, in the manner of onnxruntime-genai's) and one beam search over any
`Decoder`, built from small pure functions in the manner of gpt-fast's generate.py.

A decoder keeps one batch's KV cache and exposes four moves (the `Decoder` protocol below): `append` tokens
(prefill, and any later turn), `step` (one token a row from its `next_ids` buffer), `reorder` cache rows (beam
search) and `host` (a device array to NumPy). Two engines implement it:
  - `CacheDecoder` (here) over any callable with the exported graph's contract `model(input_ids, attention_mask,
    position_ids, past) -> (logits, present)` (past [P, L, 2, B, KVH, D] time-major, present holding the new
    positions only): onnxruntime's generic export (runtime.llm.OrtDecoder) and, in the converter, Paddle itself.
    Batches are left-padded; padding is masked.
  - `runtime.fused.FusedDecoder`: the fused graph, right-padded, its cache, ids and logits on the device (CuPy) or
    in NumPy on CPU hosts.
Token choice is the same for both: `kernels.sample_rows` / `kernels.beam_topk` run the CUDA kernels on device
arrays and their NumPy twins (kernels/reference.py, the one logits-processing module) on host arrays, so one seed
draws the same Philox uniforms on every engine (counter = (turn step, batch row), key = seed).

Shapes: B batch rows, S new tokens this call, P cached tokens, V vocabulary.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from . import kernels
from .errors import BadInputError
from .numeric import log_softmax  # noqa: F401  (re-exported: the scorers import it from here)

log = logging.getLogger(__name__)

MAX_SEED = 2 ** 64
SAMPLING_EPS = 1e-5        # a temperature below this decodes greedily (as vLLM): logits / 1e-300 overflow to NaN
PENALTY_RANGE = (0.01, 100.0)   # repetition_penalty: logits divided or multiplied by it stay finite in float32
BEAM_RULES = ("default", "paddlenlp")
CACHE_HEADROOM = 64        # positions of KV room added when rows that joined a running batch outgrow the buffer


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
    seed: int | None = None          # Philox key: in [0, 2**64); None: fresh entropy for each generation (seeded())
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    no_repeat_ngram_size: int = 0    # 0: off; n: no n-gram occurs twice in a row's decoded sequence (host arrays)
    beam_rules: str = "default"      # "paddlenlp": PaddleNLP's BeamSearchScorer scoring and stopping (advance_beams)
    forced_bos_token_id: int | None = None   # the first generated token where the prefix is one token (forced_token)
    forced_eos_token_id: int | None = None   # the token at max_new_tokens (forced_token)

    def __post_init__(self):
        # one stop string or id given bare is that one, not its letters (stop_strings="Paris" stopped at "P")
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        if isinstance(self.stop_token_ids, (int, np.integer)) and not isinstance(self.stop_token_ids, bool):
            object.__setattr__(self, "stop_token_ids", (int(self.stop_token_ids),))
        for name in ("stop_strings", "stop_token_ids"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)):
                raise BadInputError(f"{name} must be a tuple (or list), got {type(v).__name__} {v!r}")
            object.__setattr__(self, name, tuple(v))
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "num_beams", "no_repeat_ngram_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise BadInputError(f"{name} must be an integer, got {v!r}")
        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise BadInputError(f"{name} must be a finite number, got {v!r}")
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
        if self.no_repeat_ngram_size < 0:
            raise BadInputError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if self.beam_rules not in BEAM_RULES:
            raise BadInputError(f"beam_rules must be one of {', '.join(BEAM_RULES)}, got {self.beam_rules!r}")
        if not PENALTY_RANGE[0] <= self.repetition_penalty <= PENALTY_RANGE[1]:
            raise BadInputError(f"repetition_penalty must be in {PENALTY_RANGE[0]}..{PENALTY_RANGE[1]:g} (1.0 = off; "
                                "past that range logits divided or multiplied by it leave float32), got "
                                f"{self.repetition_penalty}")
        if not 1 <= self.num_beams <= kernels.MAX_BEAMS:
            raise BadInputError(f"num_beams must be in 1..{kernels.MAX_BEAMS} (the beam kernel's limit; memory may "
                                f"bound it lower), got {self.num_beams}")
        if self.num_beams > 1 and self.sampling:
            raise BadInputError("beam search is deterministic: use num_beams > 1 without sampling options")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or not 0 <= self.seed < MAX_SEED):
            raise BadInputError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        for s in self.stop_strings:
            if not isinstance(s, str) or not s:
                raise BadInputError(f"stop strings must be non-empty text, got {s!r} (an empty stop string would "
                                    "stop before the first token)")
        for t in self.stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
                raise BadInputError(f"stop token ids must be integers >= 0, got {t!r}")
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            t = getattr(self, name)
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0):
                raise BadInputError(f"{name} must be an integer >= 0 (or None: off), got {t!r}")

    def cut(self, text: str) -> str:
        """`text` up to its first stop string (the stop string itself is not part of the answer)."""
        for s in self.stop_strings:
            if s in text:
                text = text[:text.index(s)]
        return text

    def seeded(self) -> "GenerationConfig":
        """This config with a seed where it samples: its own, else a fresh one drawn now (a generation without a
        seed must not repeat the last one's draws; the job key still sees seed None, so a resumed job matches)."""
        if self.seed is not None or not self.sampling:
            return self
        import secrets
        return replace(self, seed=secrets.randbits(63))

    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature >= SAMPLING_EPS and self.top_k != 1

    def sampler_params(self, step: int, pad_id: int) -> kernels.SamplerParams:
        """The kernels' view of this config at `step` of a turn (the Philox counter and min_new_tokens)."""
        return kernels.SamplerParams(do_sample=self.sampling, temperature=self.temperature if self.sampling else 1.0,
                                     top_k=self.top_k, top_p=self.top_p, penalty=self.repetition_penalty,
                                     suppress_stop=step < self.min_new_tokens, step=step, seed=self.seed or 0,
                                     pad_id=pad_id)


# ----------------------------------------------------------------------------- the decoder protocol
@runtime_checkable
class Decoder(Protocol):
    """What the loop needs from an engine. One generation at a time per decoder (it owns the batch's cache).

    xp: numpy or cupy (where logits, next_ids and the loop state live); stream: the device stream or None.
    After `start(batch)`: next_ids int64 [B, 1] is the next `step`'s input (the chooser writes it); seqlens is
    int32 [B] of per-row positions that the chooser advances by one with each token (or None when `step` tracks
    positions itself).

    Rows joining and leaving a running batch (Generator.add_rows / remove_rows, the server's in-flight batching)
    take two more moves, outside the protocol since not every engine has them: `join(chunks, room) -> logits
    [k, V]` (prefill new rows, which join the batch) and `leave(keep)` (the other rows' cache is freed)."""

    vocab_size: int
    xp: Any
    stream: Any
    next_ids: Any
    seqlens: Any

    def start(self, batch: int) -> None:
        """Begin a generation of `batch` rows with an empty cache."""

    def append(self, chunks: Sequence[Sequence[int]], past: np.ndarray, room: int) -> tuple[Any, Any]:
        """Feed chunk b (>= 1 token) to row b, whose cache holds past[b] real tokens; keep room for `room` more
        tokens. -> (logits, rows): rows[b] picks the logits row of row b's last token (None: row b itself)."""

    def step(self, real: np.ndarray | None) -> tuple[Any, Any]:
        """Feed next_ids (one token a row); real[b] False marks row b's token as padding (None: all real)."""

    def reorder(self, src: np.ndarray) -> None:
        """Beam search: cache row i takes the history of row src[i]."""

    def host(self, a) -> np.ndarray:
        """A loop array on the host."""

    def max_tokens(self) -> int | None:
        """The most tokens a row can hold (context or cache capacity); None: unbounded."""

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        """Memory a generation of `rows` rows takes: KV cache, logits and loop state."""

    def bytes_available(self) -> int:
        """Memory free where the cache lives (RAM or the device)."""


def host_bytes_available() -> int:
    """Free physical RAM (os.sysconf pages)."""
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# ----------------------------------------------------------------------------- the generic engine
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

    def reserve(self, tokens: int) -> None:
        """Room for `tokens` more positions (a later turn may outgrow the first allocation)."""
        if self.length + tokens > self.buffer.shape[0]:
            grown = np.zeros((self.length + tokens, *self.buffer.shape[1:]), self.buffer.dtype)
            grown[:self.length] = self.view()
            self.buffer = grown

    def append(self, present: np.ndarray) -> None:
        s = present.shape[0]
        if self.length + s > self.buffer.shape[0]:
            raise BadInputError(f"KV cache full ({self.buffer.shape[0]} tokens)")
        self.buffer[self.length:self.length + s] = present
        self.length += s

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: row i takes the history of row rows[i]."""
        self.buffer[:self.length] = self.buffer[:self.length][:, :, :, rows]


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


class CacheDecoder:
    """The Decoder protocol over `forward`, a callable with the exported graph's contract (module docstring).
    Chunks are left-padded and padding is masked, so rows of any length continue one cache."""

    xp, stream, seqlens, next_ids = np, None, None, None

    def __init__(self, forward: Callable, num_layers: int, kv_heads: int, head_dim: int, vocab_size: int,
                 cache_dtype=np.float32, max_context: int | None = None, pad_id: int = 0):
        self.forward, self.pad_id = forward, pad_id
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.vocab_size, self.cache_dtype, self.context = vocab_size, np.dtype(cache_dtype), max_context
        self.cache: KVCache | None = None
        self.prefix, self.prefix_len = None, 0       # PTuning prefix rows every row starts with (set_prefix)

    @classmethod
    def wrap(cls, model: Callable, pad_id: int = 0) -> "CacheDecoder":
        """Over a callable that carries num_layers, kv_heads, head_dim, vocab_size, cache_dtype (max_context)."""
        return cls(model, model.num_layers, model.kv_heads, model.head_dim, model.vocab_size, model.cache_dtype,
                   getattr(model, "max_context", None), pad_id)

    def set_prefix(self, rows: np.ndarray | None) -> None:
        """PTuning v2 prefix (runtime.prefix): cache rows [P, L, 2, 1, KVH, D] each row starts with, attended to
        and taking no positions (real tokens count from 0). None: no prefix."""
        if rows is not None:
            want = (self.num_layers, 2, 1, self.kv_heads, self.head_dim)
            if rows.ndim != 6 or rows.shape[1:] != want:
                raise BadInputError(f"prefix rows are {list(rows.shape)}, not [P, {', '.join(map(str, want))}]")
            rows = np.ascontiguousarray(rows, self.cache_dtype)
        self.prefix, self.prefix_len = rows, 0 if rows is None else rows.shape[0]

    def start(self, batch: int) -> None:
        p = self.prefix_len
        self.cache = KVCache.allocate(p, self.num_layers, batch, self.kv_heads, self.head_dim, self.cache_dtype)
        if p:
            self.cache.buffer[:] = self.prefix                                       # broadcast over the batch
            self.cache.length = p
        self.mask = np.ones((batch, p), np.int64)
        self.next_ids = np.zeros((batch, 1), np.int64)

    def _positions(self, mask: np.ndarray) -> np.ndarray:
        """position_ids of every column of mask: real tokens counted, the prefix rows not."""
        return np.maximum(np.cumsum(mask, axis=-1) - 1 - self.prefix_len, 0).astype(np.int64)

    def append(self, chunks, past, room):
        ids, chunk_mask = left_pad(chunks, self.pad_id)
        self.cache.reserve(ids.shape[1] + room)
        self.mask = np.concatenate([self.mask, chunk_mask], axis=1)
        pos = self._positions(self.mask)[:, -ids.shape[1]:]
        logits, present = self.forward(ids, self.mask, pos, self.cache.view())      # [B, S, V], [S, L, 2, B, ..]
        self.cache.append(present)
        return np.ascontiguousarray(logits[:, -1]), None                            # left padding: last = real

    def step(self, real):
        if self.cache.length == self.cache.buffer.shape[0]:                          # rows that joined: grow
            self.cache.reserve(CACHE_HEADROOM)
        col = np.ones((self.mask.shape[0], 1), np.int64) if real is None else np.asarray(real, np.int64)[:, None]
        self.mask = np.concatenate([self.mask, col], axis=1)
        pos = (self.mask.sum(-1, keepdims=True) - 1 - self.prefix_len).astype(np.int64)    # [B, 1]
        logits, present = self.forward(self.next_ids, self.mask, pos, self.cache.view())
        self.cache.append(present)
        return logits[:, -1], None

    def reorder(self, src):
        self.cache.reorder(src)
        self.mask = self.mask[src]

    def join(self, chunks: Sequence[Sequence[int]], room: int) -> np.ndarray:
        """In-flight batching: prefill each new row alone (equal prompts once, so a row's cache and logits are
        what it gets alone), then the rows join the batch at the step boundary, right-aligned (the shorter side
        left-padded and masked). -> logits [k, V] of each new row's last token."""
        layers, kvh, d, p = self.num_layers, self.kv_heads, self.head_dim, self.prefix_len
        alone: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        for c in map(tuple, chunks):
            if c not in alone:
                ids = np.array([c], np.int64)
                past = self.prefix if p else np.zeros((0, layers, 2, 1, kvh, d), self.cache_dtype)
                logits, present = self.forward(ids, np.ones((1, p + len(c)), np.int64),
                                               np.arange(len(c), dtype=np.int64)[None], past)
                alone[c] = np.array(logits[0, -1]), present
        old, t = self.mask.shape
        t2, k = max([t] + [p + len(c) for c in chunks]), len(chunks)
        cache = KVCache.allocate(t2 + max(room, 1), layers, old + k, kvh, d, self.cache_dtype)
        cache.length = t2
        cache.buffer[t2 - t:t2, :, :, :old] = self.cache.view()
        mask = np.zeros((old + k, t2), np.int64)
        mask[:old, t2 - t:] = self.mask
        for j, c in enumerate(map(tuple, chunks)):
            cache.buffer[t2 - len(c):t2, :, :, old + j] = alone[c][1][:, :, :, 0]
            if p:
                cache.buffer[t2 - len(c) - p:t2 - len(c), :, :, old + j] = self.prefix[:, :, :, 0]
            mask[old + j, t2 - len(c) - p:] = 1
        self.cache, self.mask = cache, mask
        self.next_ids = np.concatenate([self.next_ids, np.full((k, 1), self.pad_id, np.int64)])
        return np.stack([alone[tuple(c)][0] for c in chunks])

    def leave(self, keep: np.ndarray) -> None:
        """Rows not in `keep` leave at the step boundary: their cache is freed (the buffer is compacted to the kept
        rows) and time columns no kept row uses are trimmed from the left."""
        keep = np.asarray(keep, np.int64)
        if keep.size == 0:
            self.start(0)
            return
        mask = self.mask[keep]
        lead = int(np.argmax(mask.any(0))) if mask.shape[1] else 0
        t, cap = self.cache.length, self.cache.buffer.shape[0]
        cache = KVCache.allocate(cap - lead, self.num_layers, keep.size, self.kv_heads, self.head_dim,
                                 self.cache_dtype)
        cache.length = t - lead
        cache.buffer[:t - lead] = self.cache.buffer[lead:t][:, :, :, keep]
        self.cache, self.mask, self.next_ids = cache, mask[:, lead:], self.next_ids[keep]

    @staticmethod
    def host(a) -> np.ndarray:
        return np.asarray(a)

    def max_tokens(self) -> int | None:
        return self.context

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        # the cache buffer plus the graph's concatenation of past and present (one more copy) and the prompt logits
        kv = (self.prefix_len + prompt_len + new_tokens) * self.num_layers * 2 * self.kv_heads * self.head_dim * \
            self.cache_dtype.itemsize
        return rows * (2 * kv + prompt_len * self.vocab_size * 4 + 2 * self.vocab_size)

    @staticmethod
    def bytes_available() -> int:
        return host_bytes_available()


def as_decoder(model, pad_id: int = 0) -> Decoder:
    """An engine implementing the protocol as is; a graph-contract callable wrapped in CacheDecoder."""
    if isinstance(model, Decoder):
        return model
    if callable(model):
        return CacheDecoder.wrap(model, pad_id)
    raise BadInputError(f"{type(model).__name__} is neither a Decoder nor a graph-contract callable")


# ----------------------------------------------------------------------------- request checks (before model work)
def check_tokens(rows: Sequence[Sequence[int]], vocab: int, what: str = "prompt") -> list[list[int]]:
    if not rows or any(len(r) == 0 for r in rows):
        raise BadInputError(f"every {what} needs at least one token (an empty {what} has nothing to continue)")
    out = [[int(t) for t in r] for r in rows]
    bad = sorted({t for r in out for t in r if not 0 <= t < vocab})
    if bad:
        raise BadInputError(f"{what} token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    return out


def check_memory(dec: Decoder, batch: int, beams: int, prompt_len: int, new_tokens: int) -> None:
    """Refuse (before any allocation) a batch x beams that does not fit, naming the largest count that does."""
    rows = batch * beams
    need, free = dec.bytes_needed(rows, prompt_len, new_tokens), dec.bytes_available()
    if need <= free:
        return
    fit = int(free // max(dec.bytes_needed(1, prompt_len, new_tokens), 1))
    what = f"batch {batch} x {beams} beams = {rows} rows" if beams > 1 else f"batch {batch}"
    if fit < 1:
        raise BadInputError(f"one row of {prompt_len} + {new_tokens} tokens needs {need / rows / 2**30:.2f} GiB (KV "
                            f"cache, logits, attention), but {free / 2**30:.2f} GiB is available: shorten the prompt "
                            "(source) or lower the new tokens")
    fix = (f"use num_beams <= {max(fit // batch, 0)}" if beams > 1 else f"use a batch of at most {fit}")
    raise BadInputError(f"{what} of {prompt_len} + {new_tokens} tokens need {need / 2**30:.2f} GiB for the KV cache "
                        f"and logits, but {free / 2**30:.2f} GiB is available: at most {fit} rows fit; {fix}, fewer "
                        "new tokens or a shorter prompt")


def _check_room(dec: Decoder, longest: int, new_tokens: int, max_context: int | None) -> None:
    limit = min(x for x in (dec.max_tokens(), max_context, 1 << 62) if x is not None)
    if longest + new_tokens > limit:
        what = getattr(dec, "limit_name", "the model's context")
        fix = getattr(dec, "limit_fix", None) if limit == dec.max_tokens() else None
        raise BadInputError(f"prompt ({longest} tokens) + max_new_tokens ({new_tokens}) exceeds {what} of {limit} "
                            f"tokens; shorten the prompt, lower max_new_tokens{', or ' + fix if fix else ''}")


def _stop_array(dec: Decoder, cfg: GenerationConfig):
    bad = [t for t in cfg.stop_token_ids if t >= dec.vocab_size]
    if bad:
        raise BadInputError(f"stop token ids {bad} are outside the vocabulary [0, {dec.vocab_size})")
    return dec.xp.asarray(np.array(cfg.stop_token_ids, np.int32)) if cfg.stop_token_ids else None


def _seen(dec: Decoder, cfg: GenerationConfig, rows: Sequence[Sequence[int]]):
    """uint8 [B, V] bitmap of tokens in each row (repetition penalty), None when the penalty is off."""
    if cfg.repetition_penalty == 1.0:
        return None
    seen = np.zeros((len(rows), dec.vocab_size), np.uint8)
    for i, r in enumerate(rows):
        seen[i, list(r)] = 1
    return dec.xp.asarray(seen)


def advance(dec: Decoder, tokens: np.ndarray) -> None:
    """A chooser's state update outside the sampler kernel (beam search, teacher forcing): tokens become the next
    input and the decoder's positions move one on. Written on the decoder's own stream (a GPU decoder's stream does
    not wait for CuPy's default one: written there, the next step could read the old ids), whoever calls it."""
    with _on_stream(dec):
        dec.next_ids[:, 0] = dec.xp.asarray(tokens)
        seqlens = dec.seqlens
        if seqlens is not None:
            seqlens += 1                               # in place: the decoder's bound buffer


# ----------------------------------------------------------------------------- logits processors (host)
def banned_ngram_tokens(seq: Sequence[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram of `seq` (fairseq's / PaddleNLP's NoRepeatNGram): those that followed
    an earlier occurrence of seq's last n-1 tokens. Nothing is banned before seq holds n-1 tokens."""
    if n <= 0 or len(seq) + 1 < n:
        return []
    tail = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
    return sorted({seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail})


def ngram_ban_mask(seqs: Sequence[Sequence[int]], n: int, vocab: int) -> np.ndarray | None:
    """bool [B, V]: True where row b may not choose the token (banned_ngram_tokens); None when nothing is."""
    mask = np.zeros((len(seqs), vocab), bool)
    for b, s in enumerate(seqs):
        mask[b, banned_ngram_tokens(s, n)] = True
    return mask if mask.any() else None


def ban_tokens(logits: np.ndarray, rows, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
    """Each batch row's logits (rows picks them, as in kernels.sample_rows) with banned tokens at -inf."""
    lg = logits.reshape(-1, logits.shape[-1])
    lg = np.array(lg[np.asarray(rows)] if rows is not None else lg[:len(mask) if mask is not None else None])
    if mask is not None:
        lg[mask] = -np.inf
    return lg, None


def forced_token(cfg: GenerationConfig, step: int, prefix_len: int) -> int | None:
    """The token step `step` (0-based, of this turn) must choose, None when free: PaddleNLP 2.8.1's
    ForcedBOSTokenLogitsProcessor (the processors' sequence, prefix_len + step tokens, is one token long: an
    encoder-decoder's first choice) and ForcedEOSTokenLogitsProcessor (the choice at max_new_tokens; it runs
    after the BOS one, so it wins where both apply)."""
    if cfg.forced_eos_token_id is not None and step == cfg.max_new_tokens - 1:
        return int(cfg.forced_eos_token_id)
    if cfg.forced_bos_token_id is not None and prefix_len + step == 1:
        return int(cfg.forced_bos_token_id)
    return None


def force_logits(xp, rows: int, vocab: int, token: int):
    """float32 [rows, V]: -inf but 0 at `token` (greedy picks it; sampling draws it with probability 1)."""
    out = xp.full((rows, vocab), -np.inf, np.float32)
    out[:, token] = 0.0
    return out


def forced_candidates(scores: np.ndarray, beams: int, vocab: int, token: int) -> tuple[np.ndarray, np.ndarray]:
    """A forced step's merged beam candidates [G, 2K] (merge_beams' layout, flat index beam * V + token, -1 none):
    every live beam continues with `token` at an unchanged score (PaddleNLP forces after the log-softmax: the
    token's log-probability is 0), best first."""
    s = scores.reshape(-1, beams)
    cand_s = np.full((len(s), 2 * beams), -np.inf, np.float32)
    cand_i = np.full((len(s), 2 * beams), -1, np.int64)
    for g, row in enumerate(s):
        live = [j for j in np.argsort(-row, kind="stable") if np.isfinite(row[j])]
        cand_s[g, :len(live)] = row[live]
        cand_i[g, :len(live)] = [j * vocab + token for j in live]
    return cand_s, cand_i


def _check_forced(dec, cfg: GenerationConfig) -> None:
    bad = [t for t in (cfg.forced_bos_token_id, cfg.forced_eos_token_id) if t is not None and t >= dec.vocab_size]
    if bad:
        raise BadInputError(f"forced token ids {bad} are outside the vocabulary [0, {dec.vocab_size})")


def _check_host_processors(dec, cfg: GenerationConfig) -> None:
    if cfg.no_repeat_ngram_size and dec.xp is not np:
        raise BadInputError("no_repeat_ngram_size runs on host arrays: use the generic graph (or the fused graph on "
                            "CPU), not the on-device loop")


# ----------------------------------------------------------------------------- the step API
@dataclass
class RowState:
    """One row of a generator whose rows join and leave (Generator.add_rows): its own settings and progress."""
    id: int
    cfg: GenerationConfig
    prompt: list
    seen: np.ndarray | None = None                   # uint8 [1, V] (repetition penalty), None when off
    stop_arr: np.ndarray | None = None
    ids: list = field(default_factory=list)          # generated ids (the stop token excluded)
    step: int = 0
    finish_reason: str | None = None                 # "stop" (stop id or string) or "length"
    stop_at: int | None = None                       # where a stop string starts in decode(ids)
    fresh: Any = None                                # prefill logits [1, V] the next choice reads (just joined)


class Generator:
    """One generation over a Decoder, in onnxruntime-genai's manner:

        gen = Generator(decoder, cfg, pad_id)
        gen.append_tokens(prompts)              # prefill: an explicit step
        while not gen.is_done():
            gen.generate_next_token()           # runs the model on the previous token (if any), then chooses
            gen.get_next_tokens()               # [B] on the host (streaming)
        gen.results()                           # this turn's tokens per row, without the stop token
        gen.append_tokens(next_turn)            # multi-turn: the same cache continues (a new turn of max_new_tokens)

    In-flight batching (the server) is the same step with rows joining and leaving at step boundaries, each row
    with its own GenerationConfig (sampling settings, seed, stops, lengths):

        ids = gen.add_rows(prompts, cfgs)       # prefill of the new rows, which join the batch
        gen.generate_next_token()               # one model step for the rows already decoding + every row's choice
        gen.row(i)                              # RowState: ids, finish_reason, stop_at
        gen.remove_rows(done_ids)               # finished or cancelled rows leave; their cache is freed
        gen.remove_finished()                   # the same for every finished row; returns them

    Each row chooses alone (row 0 of its own kernels.sample_rows call: the Philox counter is (its step, 0), the
    key its seed), so its tokens do not depend on which other rows share the batch. Rows joining need a decoder
    with `join`/`leave` (CacheDecoder, the generic graph; FusedDecoder, rows in cache slots on the device).

    Per row: a stop token id (once min_new_tokens are out) or a stop string finishes the row; finished rows emit
    pad. On a device decoder the finished flags are read every `check_every` steps (the only per-step host read
    is the streamed ids)."""

    def __init__(self, decoder, cfg: GenerationConfig | None = None, pad_id: int = 0,
                 decode: Callable[[list[int]], str] | None = None, max_context: int | None = None,
                 check_every: int | None = None):
        cfg = GenerationConfig() if cfg is None else cfg
        if cfg.num_beams > 1:
            raise BadInputError("the step API does greedy and sampling; beam search is generation.beam_search "
                                "(generate routes num_beams > 1 there)")
        if cfg.stop_strings and decode is None:
            raise BadInputError("stop strings need a tokenizer to decode with")
        self.dec, self.cfg, self.pad_id, self.decode = as_decoder(decoder, pad_id), cfg.seeded(), pad_id, decode
        self.max_context = max_context
        _check_host_processors(self.dec, cfg)
        _check_forced(self.dec, cfg)
        self.on_device = self.dec.xp is not np
        self.check_every = check_every or (8 if self.on_device else 1)
        self.batch = 0
        self.steps = 0
        self._logits = None
        self._pending = False
        self._rows: list[RowState] | None = None         # set by add_rows: rows join and leave
        self._next_row = 0
        self.model_steps = 0                              # decoder steps run (prefill not counted)

    # ------------------------------------------------------------------ turns
    def append_tokens(self, tokens: Sequence[Sequence[int]]) -> None:
        """Feed tokens to every row: the prompts (first call: prefill, fixes the batch) or a later turn's text
        (after the previous turn's tokens, which stay in the cache); the next generate_next_token chooses from the
        last one. Checked before any model work: ids in the vocabulary, context, memory."""
        dec, cfg = self.dec, self.cfg
        if self._rows is not None:
            raise BadInputError("this generator's rows join and leave (add_rows): add rows, not a turn")
        rows = check_tokens(tokens, dec.vocab_size, "prompt" if not self.batch else "appended sequence")
        if not self.batch:
            stop_ids = _stop_array(dec, cfg)
            longest = max(map(len, rows))
            _check_room(dec, longest, cfg.max_new_tokens, self.max_context)
            check_memory(dec, len(rows), 1, longest, cfg.max_new_tokens)
            self.batch, self.stop_ids = len(rows), stop_ids
            self.history: list[list[int]] = [[] for _ in rows]      # every real token of each row, in order
            self.cached = np.zeros(len(rows), np.int64)              # how many of them the cache holds
            with _on_stream(dec):
                dec.start(self.batch)
                self.seen = _seen(dec, cfg, rows)
            chunks = rows
        else:
            if len(rows) != self.batch:
                raise BadInputError(f"append_tokens got {len(rows)} rows for a batch of {self.batch}")
            fed = max(self.steps - 1, 0)                             # the last chosen token is not in the cache yet
            for b, g in enumerate(self._real_generated()):
                self.history[b] += g
                self.cached[b] += min(len(g), fed)
            chunks = [self.history[b][self.cached[b]:] + r for b, r in enumerate(rows)]
            _check_room(dec, max(len(h) + len(r) for h, r in zip(self.history, rows)), cfg.max_new_tokens,
                        self.max_context)
        with _on_stream(dec):
            self._logits = dec.append(chunks, self.cached.copy(), cfg.max_new_tokens)
            if self.seen is not None and self.history[0]:             # later turns (the prompts are in already)
                for b, r in enumerate(rows):
                    self.seen[b, dec.xp.asarray(np.array(r, np.int64))] = 1
            self.finished = dec.xp.zeros(self.batch, np.uint8)
            self.tokens = dec.xp.zeros((self.batch, cfg.max_new_tokens), np.int32)
        for b, r in enumerate(rows):
            self.history[b] += r
        self.cached += [len(c) for c in chunks]
        pre = dec.target_prefix(self.batch) if hasattr(dec, "target_prefix") else self.history
        self._prefix_len = max(map(len, pre))                       # the processors' sequence before this turn
        self.steps, self._pending, self._done, self._real = 0, False, False, None
        self._string_stop = np.full(self.batch, -1)                  # step at which a stop string ended the row

    def generate_next_token(self) -> None:
        """Run the model on the previous step's tokens (none after append_tokens), then choose the next ones."""
        if self._rows is not None:
            return self._step_rows()
        if self._logits is None:
            raise BadInputError("append_tokens first: the prompt is the first step")
        if self.is_done():
            raise BadInputError("generation is finished (append_tokens to continue)")
        dec = self.dec
        with _on_stream(dec):
            logits, rows = dec.step(self._real) if self._pending else self._logits
            if self.cfg.no_repeat_ngram_size:
                mask = ngram_ban_mask(self._ngram_rows(), self.cfg.no_repeat_ngram_size, dec.vocab_size)
                logits, rows = ban_tokens(logits, rows, mask)
            params = self.cfg.sampler_params(self.steps, self.pad_id)
            forced = forced_token(self.cfg, self.steps, self._prefix_len)
            if forced is not None:                      # after every other processor, as PaddleNLP orders them
                logits, rows = force_logits(dec.xp, self.batch, dec.vocab_size, forced), None
                params = replace(params, suppress_stop=False)
            self._real = None if self.on_device else self.finished == 0             # before this choice
            kernels.sample_rows(logits, rows, params, dec.next_ids,
                                seen=self.seen, stop_ids=self.stop_ids, tokens_out=self.tokens, seqlens=dec.seqlens,
                                finished=self.finished, stream=dec.stream)
        self.steps += 1
        self._pending = True
        if self.cfg.stop_strings:
            self._check_strings()
        if self.steps >= self.cfg.max_new_tokens:
            self._done = True
        elif (self.stop_ids is not None or self.cfg.stop_strings) and self.steps % self.check_every == 0:
            self._done = bool(int(dec.host(self.finished).min()))        # the only host read (every few steps)

    def is_done(self) -> bool:
        if self._rows is not None:
            return all(r.finish_reason is not None for r in self._rows)
        return self._done

    def get_next_tokens(self) -> np.ndarray:
        """The ids chosen by the latest step, on the host [B] (pad for finished rows)."""
        if self._rows is not None:
            return self.dec.host(self.dec.next_ids[:, 0]).copy()
        if not self.steps:
            raise BadInputError("no token generated yet: call generate_next_token")
        return self.dec.host(self.dec.next_ids[:, 0]).copy()

    def results(self) -> list[list[int]]:
        """This turn's generated ids per row, cut before the first stop token (after a stop string's token)."""
        if self._rows is not None:
            return [list(r.ids) for r in self._rows]
        out = []
        for g in self._real_generated():
            if g and g[-1] in self.cfg.stop_token_ids:
                g = g[:-1]
            out.append(g)
        return out

    def stream(self) -> Iterator[list[tuple[int, int]]]:
        """Step to the end, yielding each step's new (row, token) pairs; a row's stop token (once min_new_tokens
        are out) ends that row and is not yielded. The host copy a step: the ids."""
        live = np.ones(self.batch, bool)
        stops = set(self.cfg.stop_token_ids)
        while not self.is_done() and live.any():
            self.generate_next_token()
            new = []
            for i, t in enumerate(self.get_next_tokens().tolist()):
                if not live[i]:
                    continue
                if t in stops and self.steps > self.cfg.min_new_tokens:
                    live[i] = False
                    continue
                new.append((i, t))
                if 0 <= self._string_stop[i]:
                    live[i] = False
            if new:
                yield new

    # ------------------------------------------------------------------ rows joining and leaving
    def add_rows(self, prompts: Sequence[Sequence[int]],
                 cfgs: Sequence[GenerationConfig] | None = None) -> list[int]:
        """New rows join at the step boundary: each prompt is prefilled (alone), the next generate_next_token
        chooses its first token. cfgs: one per prompt (default: the generator's). Checked before any model work.
        -> the rows' ids (stable while the row lives; batch order is join order)."""
        dec = self.dec
        if self._rows is None and self.batch:
            raise BadInputError("add_rows: this generator runs a fixed batch (append_tokens); use a new Generator")
        if not (hasattr(dec, "join") and hasattr(dec, "leave")):
            raise BadInputError(f"{type(dec).__name__} cannot take rows joining a running batch (its cache slots are "
                                "fixed at start); in-flight batching runs on CacheDecoder or FusedDecoder")
        cfgs = [self.cfg] * len(prompts) if cfgs is None else [c.seeded() for c in cfgs]
        if len(cfgs) != len(prompts):
            raise BadInputError(f"add_rows got {len(prompts)} prompts but {len(cfgs)} configs")
        rows = check_tokens(prompts, dec.vocab_size)
        for r, c in zip(rows, cfgs):
            if c.num_beams > 1:
                raise BadInputError("rows joining a batch decode greedily or by sampling; beam search is "
                                    "generation.beam_search")
            if c.stop_strings and self.decode is None:
                raise BadInputError("stop strings need a tokenizer to decode with")
            if c.no_repeat_ngram_size:
                raise BadInputError("rows joining a batch do not take no_repeat_ngram_size; use append_tokens")
            _stop_array(dec, c)
            _check_room(dec, len(r), c.max_new_tokens, self.max_context)
        live = self._rows or []
        check_memory(dec, len(live) + len(rows), 1, max(map(len, rows)), max(c.max_new_tokens for c in cfgs))
        if self._rows is None:
            self._rows = []
            dec.start(0)
        with _on_stream(dec):
            logits = dec.join(rows, max(c.max_new_tokens for c in cfgs))
        ids = []
        for j, (r, c) in enumerate(zip(rows, cfgs)):
            st = RowState(self._next_row, c, r, fresh=logits[j:j + 1])
            st.stop_arr = np.array(c.stop_token_ids, np.int32) if c.stop_token_ids else None
            if c.repetition_penalty != 1.0:
                st.seen = np.zeros((1, dec.vocab_size), np.uint8)
                st.seen[0, r] = 1
            self._rows.append(st)
            ids.append(st.id)
            self._next_row += 1
        self.batch = len(self._rows)
        return ids

    def remove_rows(self, ids: Sequence[int]) -> None:
        """Rows leave at the step boundary (finished or cancelled): the decoder frees their cache."""
        if self._rows is None:
            raise BadInputError("remove_rows: no rows were added (add_rows)")
        gone = set(ids)
        unknown = gone - {r.id for r in self._rows}
        if unknown:
            raise BadInputError(f"remove_rows: no live rows {sorted(unknown)}")
        keep = [i for i, r in enumerate(self._rows) if r.id not in gone]
        self.dec.leave(np.array(keep, np.int64))
        self._rows = [self._rows[i] for i in keep]
        self.batch = len(self._rows)

    def remove_finished(self) -> list[RowState]:
        """The rows that finished (a stop or the length limit) leave at the step boundary, as remove_rows does;
        returns them (their ids and finish_reason)."""
        done = [r for r in self._rows or [] if r.finish_reason is not None]
        if done:
            self.remove_rows([r.id for r in done])
        return done

    def row(self, row_id: int) -> RowState:
        for r in self._rows or []:
            if r.id == row_id:
                return r
        raise BadInputError(f"no live row {row_id}")

    @property
    def rows(self) -> list[RowState]:
        """The live rows in batch order."""
        return list(self._rows or [])

    def _step_rows(self) -> None:
        """One step of a batch whose rows join and leave: the model runs on the last tokens of the rows that are
        decoding (rows that just joined or finished are masked), then every live row chooses with its own
        settings (greedy rows without a penalty grouped: one twin call per stop setting, the result is the same)."""
        dec = self.dec
        fed = np.array([r.fresh is None and r.finish_reason is None and r.step > 0 for r in self._rows], bool)
        logits = None
        if fed.any():
            with _on_stream(dec):
                logits, _ = dec.step(fed)                # stays where the decoder computed it (greedy: argmax there)
            self.model_steps += 1
        greedy: dict[tuple, list[int]] = {}
        for b, r in enumerate(self._rows):
            if r.finish_reason is not None:
                dec.next_ids[b, 0] = self.pad_id
                continue
            if r.fresh is None and not fed[b]:
                continue
            forced = forced_token(r.cfg, r.step, len(r.prompt))
            if forced is not None:
                self._accept_row(b, r, forced)
                continue
            if not r.cfg.sampling and r.seen is None:
                greedy.setdefault((r.step < r.cfg.min_new_tokens, r.cfg.stop_token_ids), []).append(b)
                continue
            lg = r.fresh if r.fresh is not None else dec.host(logits[b:b + 1])
            nxt = np.zeros((1, 1), np.int64)
            kernels.sample_rows(lg, None, r.cfg.sampler_params(r.step, self.pad_id), nxt, seen=r.seen,
                                stop_ids=r.stop_arr)
            self._accept_row(b, r, int(nxt[0, 0]))
        for (suppress, _), idx in greedy.items():
            # greedy without a penalty is the argmax of the logits (stop ids masked while suppressed), as the
            # twin computes it: taken where the logits are, so only the chosen ids reach the host
            stops = self._rows[idx[0]].stop_arr if suppress else None
            live = [b for b in idx if self._rows[b].fresh is None]
            toks = dict(zip(live, _argmax_rows(dec, logits, live, stops))) if live else {}
            new = [b for b in idx if self._rows[b].fresh is not None]
            if new:
                toks.update(zip(new, _argmax_rows(dec, np.concatenate([self._rows[b].fresh for b in new]),
                                                  None, stops, host=True)))
            for b in idx:
                self._accept_row(b, self._rows[b], toks[b])
        self.steps += 1

    def _accept_row(self, b: int, r: RowState, tok: int) -> None:
        """A row's chosen token: a stop id (after min_new_tokens), a stop string or its length ends it."""
        r.fresh = None
        r.step += 1
        self.dec.next_ids[b, 0] = tok
        if tok in r.cfg.stop_token_ids and r.step > r.cfg.min_new_tokens:
            r.finish_reason = "stop"
            return
        r.ids.append(tok)
        if r.cfg.stop_strings:
            text = self.decode(r.ids)
            hits = [i for i in (text.find(s) for s in r.cfg.stop_strings) if i >= 0]
            if hits:
                r.finish_reason, r.stop_at = "stop", min(hits)
                return
        if r.step >= r.cfg.max_new_tokens:
            r.finish_reason = "length"

    # ------------------------------------------------------------------ helpers
    def _ngram_rows(self) -> list[list[int]]:
        """Each row's sequence as no-repeat-ngram sees it: the decoder's own prefix (an encoder-decoder's start
        token: `target_prefix`) or every real token so far, then this turn's choices."""
        toks = self.dec.host(self.tokens[:, :self.steps]).tolist() if self.steps else [[] for _ in range(self.batch)]
        pre = self.dec.target_prefix(self.batch) if hasattr(self.dec, "target_prefix") else self.history
        return [list(p) + t for p, t in zip(pre, toks)]

    def _real_generated(self) -> list[list[int]]:
        """Per row, this turn's tokens up to and including the one that finished it (pads dropped)."""
        toks = self.dec.host(self.tokens[:, :self.steps]).tolist() if self.steps else [[] for _ in range(self.batch)]
        stops = set(self.cfg.stop_token_ids)
        out = []
        for b, row in enumerate(toks):
            end = next((i + 1 for i, t in enumerate(row) if t in stops and i >= self.cfg.min_new_tokens), len(row))
            if self._string_stop[b] >= 0:
                end = min(end, int(self._string_stop[b]) + 1)
            out.append(row[:end])
        return out

    def _check_strings(self) -> None:
        """Rows still live after this step whose recent text holds a stop string finish (host read a step)."""
        fin = self.dec.host(self.finished).astype(bool)
        toks = self.dec.host(self.tokens[:, max(0, self.steps - 16):self.steps])
        for b in np.nonzero(~fin)[0]:
            if any(s in self.decode(toks[b].tolist()) for s in self.cfg.stop_strings):
                self._string_stop[b] = self.steps - 1
                self.finished[b] = 1


def _argmax_rows(dec: Decoder, logits, rows: list[int] | None, stops, host: bool = False) -> list[int]:
    """Greedy ids of logits' rows (all when None), stop ids masked when given; on the decoder's device unless
    `host` (then NumPy), one small copy of the ids to the host."""
    xp = np if host else dec.xp
    with _on_stream(dec):
        whole = rows is None or (len(rows) == len(logits) and rows == list(range(len(rows))))
        x = logits if whole else logits[xp.asarray(np.asarray(rows, np.int64))]
        if stops is not None and len(stops):
            x = x.astype(np.float32)
            x[:, xp.asarray(stops)] = -np.inf
        ids = x.argmax(-1)
    return [int(t) for t in (ids if host else dec.host(ids))]


def _on_stream(dec: Decoder):
    import contextlib
    return dec.stream if dec.stream is not None else contextlib.nullcontext()


def generate(model, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
             max_context: int | None = None, decode=None,
             streamer: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Batched generation (greedy, sampling or beam search) on any decoder; streamer(row, token) is called per
    new token (stop tokens are not streamed)."""
    if cfg.num_beams > 1:
        if streamer is not None:
            raise BadInputError("beam search cannot stream: the best beam is known only at the end")
        return beam_search(model, prompts, cfg, pad_id, max_context)
    gen = Generator(model, cfg, pad_id, decode, max_context)
    gen.append_tokens(prompts)
    if streamer is None:
        while not gen.is_done():
            gen.generate_next_token()
    else:
        for new in gen.stream():
            for row, tok in new:
                streamer(row, tok)
    return gen.results()


# ----------------------------------------------------------------------------- beam search
@dataclass
class Beams:
    """Host bookkeeping of one prompt's beams (the hypotheses are tiny; the cache and logits stay on the device)."""
    seqs: list                     # K token lists
    scores: np.ndarray             # float32 [K] cumulative log-probabilities
    done: list                     # (length-penalized score, tokens) of finished hypotheses
    finished: bool = False

    def best(self, stops: set, length_penalty: float, rules: str = "default") -> list[int]:
        if rules == "paddlenlp":      # a finished prompt keeps only its closed hypotheses (BeamSearchScorer.finalize)
            live = [] if self.finished else [(gnmt_score(s, len(q), length_penalty), q)
                                             for s, q in zip(self.scores, self.seqs)]
            hyps = self.done + live
        else:
            hyps = self.done + [(s / max(len(q), 1) ** length_penalty, q) for s, q in zip(self.scores, self.seqs)]
        return [t for t in max(hyps, key=lambda x: x[0])[1] if t not in stops]


def gnmt_score(logprob_sum: float, length: int, length_penalty: float) -> float:
    """PaddleNLP's BeamHypotheses score: sum(logprob) / ((length + 5) / 6) ** length_penalty (GNMT's form), length
    = generated tokens before the stop token."""
    return logprob_sum / ((length + 5) / 6) ** length_penalty


def _advance_paddlenlp(beams: Beams, cand_s: np.ndarray, cand_i: np.ndarray, vocab: int, cfg: GenerationConfig,
                       step: int, stops: set) -> list[tuple[int, int, float]] | None:
    """PaddleNLP 2.8.1's BeamSearchScorer.process: a stop token closes a hypothesis only when ranked among the K
    best candidates; at most K closed hypotheses are kept (the best); the prompt is done once K are kept and
    (early_stopping, or the best candidate, scored at the current length, cannot beat the worst kept)."""
    k, lp, chosen = len(beams.seqs), cfg.length_penalty, []
    for rank, (s, c) in enumerate(zip(cand_s.tolist(), cand_i.tolist())):
        if c < 0:
            break
        r, t = divmod(c, vocab)
        if t in stops:
            if rank < k and step + 1 >= cfg.min_new_tokens:
                score = gnmt_score(s, len(beams.seqs[r]), lp)
                if len(beams.done) < k or score > min(d[0] for d in beams.done):
                    beams.done.append((score, beams.seqs[r] + [t]))
                    if len(beams.done) > k:
                        beams.done.remove(min(beams.done, key=lambda d: d[0]))
            continue
        chosen.append((r, t, s))
        if len(chosen) == k:
            break
    while len(chosen) < k:
        chosen.append((chosen[0][0], chosen[0][1], -np.inf) if chosen else (0, 0, -np.inf))
    if len(beams.done) >= k and (cfg.early_stopping or
                                 min(d[0] for d in beams.done) >= gnmt_score(float(cand_s[0]), step, lp)):
        beams.finished = True
        return None
    beams.seqs = [beams.seqs[r] + [t] for r, t, _ in chosen]
    beams.scores = np.array([s for _, _, s in chosen], np.float32)
    return chosen


def advance_beams(beams: Beams, cand_s: np.ndarray, cand_i: np.ndarray, vocab: int, cfg: GenerationConfig,
                  step: int, stops: set) -> list[tuple[int, int, float]] | None:
    """One prompt's step over its 2K best candidates (best first; -1 marks none): a stop token closes a
    hypothesis (scored sum(logprob) / len ** length_penalty), the first K others continue; when fewer than K are
    live the rest are dead copies (score -inf, never expanded). -> (source beam, token, score) x K, or None once
    early stopping has K finished hypotheses. cfg.beam_rules "paddlenlp": _advance_paddlenlp."""
    if cfg.beam_rules == "paddlenlp":
        return _advance_paddlenlp(beams, cand_s, cand_i, vocab, cfg, step, stops)
    chosen = []
    for s, c in zip(cand_s.tolist(), cand_i.tolist()):
        if c < 0:
            break
        r, t = divmod(c, vocab)
        if t in stops:
            if step + 1 >= cfg.min_new_tokens:
                beams.done.append((s / max(len(beams.seqs[r]) + 1, 1) ** cfg.length_penalty, beams.seqs[r] + [t]))
            continue
        chosen.append((r, t, s))
        if len(chosen) == len(beams.seqs):
            break
    if cfg.early_stopping and len(beams.done) >= len(beams.seqs):
        beams.finished = True
        return None
    while len(chosen) < len(beams.seqs):
        chosen.append((chosen[0][0], chosen[0][1], -np.inf) if chosen else (0, 0, -np.inf))
    beams.seqs = [beams.seqs[r] + [t] for r, t, _ in chosen]
    beams.scores = np.array([s for _, _, s in chosen], np.float32)
    return chosen


def beam_search(model, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
                max_context: int | None = None) -> list[list[int]]:
    """Beam search for a batch of prompts on any decoder: K = num_beams rows per prompt in one batch of B * K.
    Per step: the beam kernel (its twin on host arrays: log-softmax + each row's 2K best) -> K x 2K candidates per
    prompt to the host, merged to 2K -> cache rows reordered where beams moved -> the next tokens -> one step."""
    dec, k = as_decoder(model, pad_id), cfg.num_beams
    _check_host_processors(dec, cfg)
    _check_forced(dec, cfg)
    prompts = check_tokens(prompts, dec.vocab_size)
    stop_ids = _stop_array(dec, cfg)
    longest = max(map(len, prompts))
    _check_room(dec, longest, cfg.max_new_tokens, max_context)
    check_memory(dec, len(prompts), k, longest, cfg.max_new_tokens)
    xp, vocab, stops = dec.xp, dec.vocab_size, set(cfg.stop_token_ids)
    rows = [p for p in prompts for _ in range(k)]
    n = len(rows)
    state = [Beams([[] for _ in range(k)], np.array([0.0] + [-np.inf] * (k - 1), np.float32), []) for _ in prompts]
    with _on_stream(dec):
        dec.start(n)
        seen = _seen(dec, cfg, rows)
        logits, ridx = dec.append(rows, np.zeros(n, np.int64), cfg.max_new_tokens)
        prefix_len = max(map(len, dec.target_prefix(n) if hasattr(dec, "target_prefix") else rows))
        for step in range(cfg.max_new_tokens):
            scores = np.concatenate([b.scores if not b.finished else np.full(k, -np.inf, np.float32) for b in state])
            banned, forced = None, forced_token(cfg, step, prefix_len)
            if forced is not None:
                cand_s, cand_i = forced_candidates(scores, k, vocab, forced)
            elif cfg.no_repeat_ngram_size:          # after the log-softmax, as PaddleNLP's processors see log-probs
                pre = dec.target_prefix(n) if hasattr(dec, "target_prefix") else rows
                banned = ngram_ban_mask([list(pre[b * k + j]) + state[b].seqs[j] for b in range(len(state))
                                         for j in range(k)], cfg.no_repeat_ngram_size, vocab)
            if forced is None:
                cand_s, cand_i = kernels.beam_topk(logits, ridx, xp.asarray(scores), k, seen, stop_ids,
                                                   cfg.repetition_penalty, step < cfg.min_new_tokens, dec.stream,
                                                   banned=banned)
                cand_s, cand_i = kernels.merge_beams(dec.host(cand_s), dec.host(cand_i), k)     # [B, 2K]
            src, toks = np.arange(n), np.full(n, pad_id, np.int64)
            for b, beams in enumerate(state):
                if beams.finished:
                    continue
                chosen = advance_beams(beams, cand_s[b], cand_i[b], vocab, cfg, step, stops)
                if chosen is not None:
                    src[b * k:(b + 1) * k] = [b * k + r for r, _, _ in chosen]
                    toks[b * k:(b + 1) * k] = [t for _, t, _ in chosen]
            if all(b.finished for b in state) or step + 1 == cfg.max_new_tokens:
                break
            if (src != np.arange(n)).any():
                dec.reorder(src)
                if seen is not None:
                    seen[...] = seen[xp.asarray(src)]
            if seen is not None:
                seen[xp.arange(n), xp.asarray(toks)] = 1
            advance(dec, toks)
            logits, ridx = dec.step(None)
    return [beams.best(stops, cfg.length_penalty, cfg.beam_rules) for beams in state]


__all__ = ["BEAM_RULES", "Beams", "CacheDecoder", "Decoder", "GenerationConfig", "Generator", "KVCache", "RowState",
           "advance", "advance_beams", "as_decoder", "ban_tokens", "banned_ngram_tokens", "beam_search",
           "check_memory", "check_tokens", "force_logits", "forced_candidates", "forced_token", "generate",
           "gnmt_score", "host_bytes_available", "left_pad", "ngram_ban_mask", "position_ids"]
