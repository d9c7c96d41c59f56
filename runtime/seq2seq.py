"""Encoder-decoder bundles (T5, BART) on the one decode loop: `Seq2SeqDecoder` implements the Decoder protocol of
runtime.generation, so the one Generator (greedy, sampling) and the one beam search drive it unchanged.

append (the prefill) runs the encoder once on the sources (right-padded) — it returns every decoder layer's
cross-attention K/V, which stay fixed for the generation (reordered only with the beams) — then the decoder on each
row's start token; each step feeds one token a row and writes its self-attention K/V into the preallocated
time-major cache (runtime.generation.KVCache). All rows share the target length, so the decoder needs no padding.

`Text2TextGenerator` is the bundle-driven pipeline (tokenizer + sessions + the loop), the `--task
text2text-generation` side of `paddle2ort generate`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import BadInputError, BundleError
from .generation import GenerationConfig, KVCache, generate, host_bytes_available
from .manifest import load_bundle
from .session import SessionOptions, create_session

log = logging.getLogger(__name__)

TASK = "text2text-generation"
ENCODER_DIR = "encoder"          # the encoder's own (nested, gated) bundle inside a text2text bundle


@dataclass(frozen=True)
class Seq2SeqSpec:
    """The geometry the loop needs (manifest extra.seq2seq)."""
    num_layers: int
    heads: int
    head_dim: int
    vocab_size: int
    decoder_start_id: int
    eos_id: int
    pad_id: int
    max_source: int | None = None           # longest source (learned positions); None: unbounded
    max_target: int | None = None           # decoder positions (start token included); None: unbounded
    forced_bos_token_id: int | None = None  # the model config's (PaddleNLP generate() applies them): defaults
    forced_eos_token_id: int | None = None

    @classmethod
    def from_json(cls, d: dict) -> "Seq2SeqSpec":
        try:
            return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})
        except TypeError as e:
            raise BundleError(f"manifest extra.seq2seq is malformed ({e})") from e

    def defaults(self, cfg: GenerationConfig) -> GenerationConfig:
        return forced_defaults(self, cfg)


def forced_defaults(spec, cfg: GenerationConfig) -> GenerationConfig:
    """cfg with the bundle's forced BOS/EOS ids where cfg leaves them unset (None), as PaddleNLP's generate()
    falls back to the model config."""
    kw = {n: getattr(spec, n) for n in ("forced_bos_token_id", "forced_eos_token_id")
          if getattr(cfg, n) is None and getattr(spec, n, None) is not None}
    return replace(cfg, **kw) if kw else cfg


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> ids [B, T], mask [B, T] (0 on the right padding): learned absolute positions (BART) need the real
    tokens first."""
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


class Seq2SeqDecoder:
    """The Decoder protocol over two callables with the exported graphs' contracts:
    encode(input_ids, attention_mask) -> cross [L, 2, B, H, T, D];
    decode(ids, encoder_mask, past, cross) -> (logits [B, S, V], present [S, L, 2, B, H, D])."""

    xp, stream, seqlens, next_ids = np, None, None, None
    limit_name = "the decoder's positions"

    def __init__(self, encode: Callable, decode: Callable, spec: Seq2SeqSpec, cache_dtype=np.float32):
        self.encode, self.decode, self.spec = encode, decode, spec
        self.vocab_size, self.cache_dtype = spec.vocab_size, np.dtype(cache_dtype)
        self.cache: KVCache | None = None
        self.cross = None

    # the prefix the decoder has seen before its first generated token (no-repeat-ngram counts it, as PaddleNLP's
    # processors see decoder_input_ids)
    def target_prefix(self, rows: int) -> list[list[int]]:
        return [[self.spec.decoder_start_id] for _ in range(rows)]

    def start(self, batch: int) -> None:
        s = self.spec
        self.cache = KVCache.allocate(0, s.num_layers, batch, s.heads, s.head_dim, self.cache_dtype)
        self.cross, self.enc_mask = None, None
        self.next_ids = np.zeros((batch, 1), np.int64)

    def append(self, chunks, past, room):
        if self.cross is not None:
            raise BadInputError("an encoder-decoder generation has one source a row; multi-turn continuation is "
                                "for causal LMs (start a new generation with the new source)")
        s = self.spec
        longest = max(len(c) for c in chunks)
        if s.max_source is not None and longest > s.max_source:
            raise BadInputError(f"source of {longest} tokens exceeds the encoder's {s.max_source} positions; "
                                f"shorten it (a --data-file job: --src-length {s.max_source})")
        if s.max_target is not None and room + 1 > s.max_target:
            raise BadInputError(f"max_new_tokens ({room}) + the start token exceeds the decoder's {s.max_target} "
                                f"positions; lower max_new_tokens to at most {s.max_target - 1}")
        ids, self.enc_mask = right_pad(chunks, s.pad_id)
        self.cross = np.ascontiguousarray(self.encode(ids, self.enc_mask), dtype=self.cache_dtype)
        self.cache.reserve(1 + room)
        self.next_ids[:, 0] = s.decoder_start_id
        return self._run()

    def _run(self):
        logits, present = self.decode(self.next_ids, self.enc_mask, self.cache.view(), self.cross)
        self.cache.append(present)
        return np.ascontiguousarray(logits[:, -1]), None

    def step(self, real):
        return self._run()              # finished rows decode their pad token; the chooser ignores their logits

    def reorder(self, src):
        src = np.asarray(src)
        self.cache.reorder(src)
        self.cross = self.cross[:, :, src]
        self.enc_mask = self.enc_mask[src]

    @staticmethod
    def host(a) -> np.ndarray:
        return np.asarray(a)

    def max_tokens(self) -> int | None:
        return None                     # source and target limits are checked apart (append)

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        s = self.spec
        per_pos = s.num_layers * 2 * s.heads * s.head_dim * self.cache_dtype.itemsize
        # the encoder's attention over the source: a [heads, S, S] float32 score matrix a row, held with its
        # softmax and (T5) the position bias: quadratic in S (a 10k-token source needs GBs; it was OOM-killed)
        attention = ENCODER_SCORE_COPIES * s.heads * prompt_len * prompt_len * 4
        return rows * (2 * (1 + new_tokens) * per_pos + prompt_len * per_pos + 2 * s.vocab_size * 4 + attention)

    @staticmethod
    def bytes_available() -> int:
        return host_bytes_available()


ENCODER_SCORE_COPIES = 3     # scores, softmax, position bias: what onnxruntime holds at once for one encoder layer


class OrtSeq2Seq(Seq2SeqDecoder):
    """The bundle's two onnxruntime sessions as a Seq2SeqDecoder."""

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path, spec: Seq2SeqSpec,
                 session: SessionOptions = SessionOptions()):
        self.enc_session = create_session(encoder_path, session)
        self.dec_session = create_session(decoder_path, session)
        names = [i.name for i in self.dec_session.get_inputs()]
        want = ["decoder_input_ids", "encoder_attention_mask", "past_key_values", "cross_key_values"]
        if names != want:
            raise BundleError(f"decoder inputs are {names}, not the encoder-decoder contract {want}")
        super().__init__(self._encode, self._decode, spec)

    def _encode(self, ids, mask):
        return self.enc_session.run(["cross_key_values"], {"input_ids": ids, "attention_mask": mask})[0]

    def _decode(self, ids, enc_mask, past, cross):
        return self.dec_session.run(["logits", "present_key_values"], {
            "decoder_input_ids": ids, "encoder_attention_mask": enc_mask,
            "past_key_values": np.ascontiguousarray(past, dtype=self.cache_dtype), "cross_key_values": cross})


@dataclass(frozen=True)
class PrefixLMSpec:
    """A prefix LM's geometry (manifest extra.prefix_lm): UNIMO-text, ChatGLM v1."""
    num_layers: int
    heads: int
    head_dim: int
    vocab_size: int
    bos_id: int                              # the target's start token, fed after the source
    pad_id: int
    eos_id: int
    max_positions: int | None = None
    suppress_ids: tuple = ()                 # the model's own never-generated ids (UNIMO: unk, pad, bos)
    positions: str = "count"                 # "count": token types + counted positions (UNIMO); "glm": ChatGLM v1's
    mask_ids: tuple = ()                     # 2-D positions, the second input block positions (glm_positions)
    source_end_id: int | None = None         # the id ending each source (None: eos; ChatGLM v1: [gMASK])
    forced_bos_token_id: int | None = None   # the model config's (Seq2SeqSpec's): the bundle's defaults
    forced_eos_token_id: int | None = None
    role_type_size: int | None = None        # UnifiedTransformer's role embeddings: the step graph takes role_ids

    @classmethod
    def from_json(cls, d: dict) -> "PrefixLMSpec":
        try:
            kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
            return cls(**{**kw, "suppress_ids": tuple(kw.get("suppress_ids", ())),
                          "mask_ids": tuple(kw.get("mask_ids", ()))})
        except TypeError as e:
            raise BundleError(f"manifest extra.prefix_lm is malformed ({e})") from e


def prefix_lm_inputs(rows: Sequence[Sequence[int]], bos_id: int, pad_id: int):
    """A prefix LM's prefill: each row's source (token type 0, bidirectional among its real tokens) then the
    target's start token (type 1, sees every real token before it), left-padded; positions count real tokens.
    -> ids, token types, positions int64 [B, T], additive mask float32 [B, 1, T, T], real int64 [B, T]."""
    full = [list(r) + [bos_id] for r in rows]
    t = max(map(len, full))
    ids = np.full((len(full), t), pad_id, np.int64)
    real = np.zeros((len(full), t), np.int64)
    types = np.zeros((len(full), t), np.int64)
    for b, r in enumerate(full):
        ids[b, t - len(r):], real[b, t - len(r):] = r, 1
        types[b, -1] = 1
    pos = np.maximum(np.cumsum(real, -1) - 1, 0)
    src = (types == 0)
    causal = np.tril(np.ones((t, t), bool))
    allowed = real[:, None, :].astype(bool) & ((src[:, :, None] & src[:, None, :]) | (~src[:, :, None] & causal))
    allowed |= np.eye(t, dtype=bool)                              # padding rows see themselves: finite softmax
    return ids, types, pos, ((1.0 - allowed) * -1e4).astype(np.float32)[:, None], real


NO_ROLE = -1       # a role id that adds no role embedding (PaddleNLP's generate() without role_ids)


def role_rows(roles: Sequence[Sequence[int]] | None, rows: Sequence[Sequence[int]],
              size: int | None) -> list[list[int]]:
    """Each row's role ids over source + start token, checked: a request gives one role a source token (the start
    token then takes role 0, as UnifiedTransformerTokenizer's add_start_token_as_response does) or one more (the
    start token's too); None: NO_ROLE everywhere (Paddle's default: no role term). Rows may repeat a request's
    (beam search: K rows a source, source-major)."""
    if roles is None:
        return [[NO_ROLE] * (len(r) + 1) for r in rows]
    if not size:
        raise BadInputError("role ids were given but this model has no role embeddings (role_type_size unset); "
                            "drop role_ids")
    roles = [list(x) for x in roles]
    if not roles or len(rows) % len(roles):
        raise BadInputError(f"{len(roles)} role-id rows for {len(rows)} sources; give one role-id row a source")
    k = len(rows) // len(roles)
    out = []
    for i, r in enumerate(rows):
        x = roles[i // k]
        if len(x) == len(r):
            x = x + [0]
        if len(x) != len(r) + 1:
            raise BadInputError(f"source {i // k}: {len(x)} role ids for {len(r)} tokens; give one a source token "
                                "(optionally one more for the start token)")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < size for v in x):
            raise BadInputError(f"source {i // k}: role ids must be integers in [0, {size}) (the model's "
                                f"role_type_size), got {x}")
        out.append([int(v) for v in x])
    return out


def glm_positions(rows: Sequence[Sequence[int]], t: int, mask_ids: Sequence[int]):
    """ChatGLM v1's 2-D positions of a prefill laid out as prefix_lm_inputs lays it (left-padded to t, the start
    token last): source tokens count 0.., the start token sits at the row's first mask_ids[0] ([gMASK]), else its
    first mask_ids[1] ([MASK]), with block position 1; padding 0 (ChatGLMTokenizer._pad's position_ids).
    -> positions, block positions int64 [B, t]."""
    pos, block = np.zeros((len(rows), t), np.int64), np.zeros((len(rows), t), np.int64)
    for b, r in enumerate(rows):
        r = list(r)
        mark = next((m for m in mask_ids if m in r), None)
        if mark is None:
            raise BadInputError(f"a ChatGLM source needs a mask token (ids {list(mask_ids)}) to generate at; end it "
                                "with [gMASK]")
        pos[b, t - 1 - len(r):t - 1] = np.arange(len(r))
        pos[b, -1], block[b, -1] = r.index(mark), 1
    return pos, block


class PrefixLMDecoder:
    """The Decoder protocol over a prefix-LM step graph `step(ids, token_types, positions, mask, past) -> (logits,
    present)`: append feeds the sources and the start token (prefix_lm_inputs), each step one target token (type
    1) that sees every real token before it. The model's suppressed ids get -1e9, as its
    adjust_logits_during_generation does."""

    xp, stream, seqlens, next_ids = np, None, None, None
    limit_name = "the model's positions"

    def __init__(self, step: Callable, spec: PrefixLMSpec, cache_dtype=np.float32):
        self.step_fn, self.spec, self.vocab_size = step, spec, spec.vocab_size
        self.cache_dtype = np.dtype(cache_dtype)
        self.cache: KVCache | None = None
        self.roles = None            # the request's role ids a source (role_rows); None: no role term

    def set_roles(self, roles: Sequence[Sequence[int]] | None) -> None:
        """The next generation's role ids (one row a source; the model's role_type_size bounds them)."""
        if roles is not None and not self.spec.role_type_size:
            raise BadInputError("role ids were given but this model has no role embeddings (role_type_size "
                                "unset); drop role_ids")
        self.roles = None if roles is None else [list(r) for r in roles]

    def target_prefix(self, rows: int) -> list[list[int]]:
        return self._prefix                     # PaddleNLP's processors see source + start token (decoder-only)

    def start(self, batch: int) -> None:
        s = self.spec
        self.cache = KVCache.allocate(0, s.num_layers, batch, s.heads, s.head_dim, self.cache_dtype)
        self.real = None
        self.next_ids = np.zeros((batch, 1), np.int64)

    def append(self, chunks, past, room):
        if self.real is not None:
            raise BadInputError("a prefix-LM generation has one source a row; start a new one for a new source")
        s = self.spec
        ids, types, pos, mask, self.real = prefix_lm_inputs(chunks, s.bos_id, s.pad_id)
        glm = s.positions == "glm"
        if glm:                                   # the second input: block positions; targets at the [gMASK]
            pos, types = glm_positions(chunks, ids.shape[1], s.mask_ids)
        self._prefix = [list(c) + [s.bos_id] for c in chunks]
        self.cache.reserve(ids.shape[1] + room)
        self.pos, self.types = pos[:, -1:] + (not glm), types[:, -1:] + glm    # the first target step's
        roles = None
        if s.role_type_size:                      # left-padded as the ids; targets keep the start token's role
            roles = np.full(ids.shape, NO_ROLE, np.int64)
            for b, r in enumerate(role_rows(self.roles, chunks, s.role_type_size)):
                roles[b, ids.shape[1] - len(r):] = r
            self.role = roles[:, -1:]
        return self._run(ids, types, pos, mask, roles)

    def _run(self, ids, types, pos, mask, roles=None):
        extra = () if roles is None else (roles,)
        logits, present = self.step_fn(ids, types, pos, mask, self.cache.view(), *extra)
        self.cache.append(present)
        out = np.array(logits[:, -1])
        if self.spec.suppress_ids:
            out[:, list(self.spec.suppress_ids)] = -1e9
        return out, None

    def step(self, real):
        b = self.real.shape[0]
        self.real = np.concatenate([self.real, np.ones((b, 1), np.int64)], 1)
        mask = ((1.0 - self.real) * -1e4).astype(np.float32)[:, None, None, :]
        out = self._run(self.next_ids, self.types, self.pos, mask, self.role if self.spec.role_type_size else None)
        if self.spec.positions == "glm":
            self.types = self.types + 1           # GLM: the block position counts, the position stays
        else:
            self.pos = self.pos + 1
        return out

    def reorder(self, src):
        src = np.asarray(src)
        self.cache.reorder(src)
        self.real, self.pos, self.types = self.real[src], self.pos[src], self.types[src]
        if self.spec.role_type_size:
            self.role = self.role[src]
        self._prefix = [self._prefix[i] for i in src]

    @staticmethod
    def host(a) -> np.ndarray:
        return np.asarray(a)

    def max_tokens(self) -> int | None:
        return None if self.spec.max_positions is None else self.spec.max_positions - 1   # the start token

    @property
    def max_context(self) -> int | None:
        """Source + new tokens at most (the JSONL job checks every line against it before the first batch)."""
        return self.max_tokens()

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        s = self.spec
        per_pos = s.num_layers * 2 * s.heads * s.head_dim * self.cache_dtype.itemsize
        return rows * (2 * (prompt_len + 1 + new_tokens) * per_pos + (prompt_len + 1) ** 2 * 4
                       + (prompt_len + 1) * s.vocab_size * 4)

    @staticmethod
    def bytes_available() -> int:
        return host_bytes_available()


class OrtPrefixLM(PrefixLMDecoder):
    """A prefix-LM bundle's onnxruntime session as a PrefixLMDecoder."""

    NAMES = ("input_ids", "token_type_ids", "position_ids", "attention_mask", "past_key_values")
    GLM_NAMES = ("input_ids", "block_position_ids", "position_ids", "attention_mask", "past_key_values")

    def __init__(self, model_path: str | Path, spec: PrefixLMSpec, session: SessionOptions = SessionOptions()):
        self.session = create_session(model_path, session)
        names = tuple(i.name for i in self.session.get_inputs())
        self.names = (self.GLM_NAMES if spec.positions == "glm" else self.NAMES) + (
            ("role_ids",) if spec.role_type_size else ())
        if names != self.names:
            raise BundleError(f"step graph inputs are {list(names)}, not the prefix-LM contract {list(self.names)}")
        super().__init__(self._step, spec)

    def _step(self, ids, types, pos, mask, past, *roles):
        return self.session.run(["logits", "present_key_values"], dict(zip(self.names, (
            ids, types, pos, mask, np.ascontiguousarray(past, dtype=self.cache_dtype), *roles))))


class Text2TextGenerator:
    """Bundle-driven seq2seq generation: tokenizer + encoder/decoder sessions + the decode loop. Duck-compatible
    with runtime.llm.TextGenerator where the JSONL job runner needs it (prompt_ids, stop_ids,
    generate_token_ids, tokenizer)."""

    graph = "generic"

    def __init__(self, bundle_dir: str | Path, precision: str = "fp32", session: SessionOptions = SessionOptions(),
                 src_length: int | None = None):
        """src_length: a longer source keeps its first src_length - 1 tokens and its end token (the head: a T5 task
        prefix such as "summarize:" stays, as the model's tokenizer truncates); None: sources are not cut."""
        from paddle2ort.tokenization.bpe import BPETokenizer

        if src_length is not None and (isinstance(src_length, bool) or not isinstance(src_length, int)
                                       or src_length < 2):
            raise BadInputError(f"src_length must be >= 2 for a text2text model (a source token and the end token), "
                                f"got {src_length}")
        self.src_length = src_length

        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        if m.task != TASK or not ({"seq2seq", "prefix_lm"} & set(m.extra)):
            raise BundleError(f"bundle {bundle_dir} is not a {TASK} bundle (task={m.task!r})")
        self.precision = precision
        if "prefix_lm" in m.extra:                                   # UNIMO-text: one step graph
            self.spec = PrefixLMSpec.from_json(m.extra["prefix_lm"])
            self.model = OrtPrefixLM(self.bundle.model_path(precision, verify=True), self.spec, session)
        else:
            self.spec = Seq2SeqSpec.from_json(m.extra["seq2seq"])
            encoder = load_bundle(self.bundle.path / ENCODER_DIR)
            self.model = OrtSeq2Seq(encoder.model_path(precision, verify=True),
                                    self.bundle.model_path(precision, verify=True), self.spec, session)
        self.tokenizer = BPETokenizer.load(self.bundle.path / "tokenizer")

    # what a JSONL job (runtime.jobs.prepare) says of a list "src" line, and checks every source against first
    conversation_fix = 'a text2text model takes one source text a line: give "src" as a string'

    @property
    def source_limit(self) -> int | None:
        """The encoder's positions: most tokens a source may have (None: no bound known, e.g. a prefix LM)."""
        return getattr(self.spec, "max_source", None)

    def prompt_ids(self, text: str, chat: bool = False) -> list[int]:
        if chat:
            raise BadInputError("--chat renders a chat template for causal LMs; a text2text model takes the source "
                                "text as it is")
        if not isinstance(text, str) or not text.strip():
            raise BadInputError("empty source text: give some text to transform")
        end = getattr(self.spec, "source_end_id", None)
        # encode_batch: the tokenizers library releases the GIL there (not in encode), so a server's event loop
        # runs while a long source is tokenized on its worker thread
        ids = self.tokenizer.encode_batch([text])[0]
        keep = getattr(self, "src_length", None)
        if keep is not None:
            ids = ids[:keep - 1]                  # the head; the end token follows, as the tokenizer truncates
        return ids + [self.spec.eos_id if end is None else end]   # as in training

    def stop_ids(self, cfg: GenerationConfig) -> GenerationConfig:
        """cfg with the model's defaults: eos stops (unless stop ids are given), the forced BOS/EOS ids."""
        cfg = cfg if cfg.stop_token_ids else replace(cfg, stop_token_ids=(self.spec.eos_id,))
        return forced_defaults(self.spec, cfg)

    def generate_token_ids(self, ids: Sequence[Sequence[int]], cfg: GenerationConfig,
                           role_ids: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
        """role_ids: one row a source (a role a source token, optionally one more for the start token) for a model
        with role embeddings (UnifiedTransformer with role_type_size); None: none, as Paddle's generate()."""
        if role_ids is not None:
            if not isinstance(self.model, PrefixLMDecoder):
                raise BadInputError("role ids are for prefix LMs with role embeddings (UnifiedTransformer), not an "
                                    "encoder-decoder; drop role_ids")
            if len(role_ids) != len(ids):
                raise BadInputError(f"{len(role_ids)} role-id rows for {len(ids)} sources; give one a source")
            role_rows(role_ids, ids, self.spec.role_type_size)          # checked before any graph runs
        if isinstance(self.model, PrefixLMDecoder):
            self.model.set_roles(role_ids)
        try:
            return generate(self.model, ids, self.stop_ids(cfg), self.spec.pad_id, decode=self.tokenizer.decode)
        finally:
            if isinstance(self.model, PrefixLMDecoder):
                self.model.set_roles(None)

    def __call__(self, texts: Sequence[str] | str, cfg: GenerationConfig = GenerationConfig(),
                 role_ids: Sequence[Sequence[int]] | None = None) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        outs = self.generate_token_ids([self.prompt_ids(t) for t in texts], cfg, role_ids)
        return [cfg.cut(self.tokenizer.decode(o)) for o in outs]


__all__ = ["NO_ROLE", "OrtPrefixLM", "OrtSeq2Seq", "PrefixLMDecoder", "PrefixLMSpec", "Seq2SeqDecoder", "Seq2SeqSpec",
           "TASK", "Text2TextGenerator", "glm_positions", "prefix_lm_inputs", "right_pad", "role_rows"]
