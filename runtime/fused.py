"""The on-device decode loop over the fused decoder graph (convert.llm.fused), gpt-fast style.

Everything a step touches lives on the device and is bound once: input_ids [B, 1], seqlens_k [B], the KV buffers
[B, KVH, C, D] (past and present bound to the same memory), logits [B, 1, V]. A step is one onnxruntime run
(replayed from a CUDA graph after the first capture) and one sampler kernel launch on the same stream; the kernel
writes the next ids straight into the bound input_ids and advances seqlens_k. The host reads nothing per step
except the new ids when streaming (and the finished flags every `check_every` steps).

With NumPy arrays (CPU hosts, CI) the same code runs onnxruntime's CPU kernels and the kernels' NumPy twins.

Shapes: B batch rows, S prompt tokens (right-padded), C cache capacity, V vocabulary.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import kernels
from .errors import BadInputError, DeviceError
from .generation import GenerationConfig

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32}


def _oom(e: Exception) -> bool:
    s = str(e).lower()
    return "out of memory" in s or "failed to allocate" in s or "outofmemory" in type(e).__name__.lower()


@dataclass
class DecodeState:
    """Fixed-address buffers of one batch size (a captured CUDA graph refers to them)."""
    batch: int
    kv: list                       # 2L arrays [B, KVH, C, D]: layer i key at 2i, value at 2i+1
    ids: object                    # int64 [B, 1]: the next step's input (the sampler writes it)
    seqlens: object                # int32 [B]
    logits: object                 # [B, 1, V]
    finished: object               # uint8 [B]
    total: np.ndarray = None       # int32 scalar on the host: the capacity, the decode steps' total_sequence_length
    binding: object = None         # decode-step IO binding (built once)


class FusedDecoder:
    """Session + per-batch device state for a fused decoder file. device: "cpu" or "gpu"; cuda_options are extra
    CUDA provider options (e.g. {"sdpa_kernel": 1} to pin an attention kernel)."""

    def __init__(self, model_path: str | Path, spec: dict, device: str = "cpu", device_id: int = 0,
                 max_length: int | None = None, cuda_graph: bool = True, threads: int = 0,
                 cuda_options: dict | None = None):
        import onnxruntime as ort

        from .session import CUDA, gpu_available
        self.spec, self.device, self.device_id = spec, device, device_id
        self.num_layers, self.kv_heads, self.head_dim = spec["num_layers"], spec["kv_heads"], spec["head_dim"]
        self.vocab_size = spec["vocab_size"]
        self.capacity = int(max_length or min(spec["max_positions"], 4096))
        if self.capacity > spec["max_positions"]:
            raise BadInputError(f"max_length {self.capacity} exceeds the model's {spec['max_positions']} positions")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        if device == "gpu":
            if not gpu_available():
                raise DeviceError("--device gpu asked for, but onnxruntime has no usable CUDA provider here "
                                  f"(providers: {', '.join(ort.get_available_providers())}); install "
                                  "onnxruntime-gpu on a host with an NVIDIA GPU, or use --device cpu")
            from .kernels.cuda import cupy
            cp = self.xp = cupy()
            cp.cuda.Device(device_id).use()
            self.stream = cp.cuda.Stream(non_blocking=True)
            opts = {"device_id": str(device_id), "user_compute_stream": str(self.stream.ptr),
                    "has_user_compute_stream": "1", "use_tf32": "0",        # fp32 graphs: full FP32 like the CPU
                    **{k: str(v) for k, v in (cuda_options or {}).items()}}
            if cuda_graph:
                opts["enable_cuda_graph"] = "1"
            providers = [(CUDA, opts)]
        else:
            self.xp, self.stream = np, None
            providers = ["CPUExecutionProvider"]
            cuda_graph = False
        self.cuda_graph = cuda_graph
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        except Exception as e:
            if device == "gpu" and "graph capture" in str(e):
                raise DeviceError(f"{Path(model_path).name} has nodes onnxruntime's CUDA provider does not run (its "
                                  "GroupQueryAttention is float16/bfloat16 only, so a float32 fused decoder is a CPU "
                                  "graph): use the fp16 or int4 fused decoder on the GPU") from e
            raise
        if device == "gpu" and self.session.get_providers()[0] != CUDA:
            raise DeviceError(f"CUDA provider requested but the session runs on {self.session.get_providers()}")
        types = {i.name: i.type for i in self.session.get_inputs()}
        if "past_key_values.0.key" not in types or "seqlens_k" not in types:
            raise BadInputError(f"{model_path} is not a fused decoder (inputs: {', '.join(types)})")
        self.dtype = _ORT_TYPES[types["past_key_values.0.key"]]                       # KV cache
        self.logits_dtype = _ORT_TYPES[{o.name: o.type for o in self.session.get_outputs()}["logits"]]
        self.states: dict[int, DecodeState] = {}
        self._ort = ort

    # ------------------------------------------------------------------ buffers
    def _dev(self) -> str:
        return "cuda" if self.xp is not np else "cpu"

    @staticmethod
    def _ptr(a) -> int:
        return a.data.ptr if not isinstance(a, np.ndarray) else a.ctypes.data

    def state_bytes(self, batch: int, prompt_len: int = 0) -> int:
        it = np.dtype(self.dtype).itemsize
        kv = 2 * self.num_layers * batch * self.kv_heads * self.capacity * self.head_dim * it
        return kv + batch * max(prompt_len, 1) * self.vocab_size * it

    def state(self, batch: int) -> DecodeState:
        if batch in self.states:
            return self.states[batch]
        if not 1 <= batch <= 1024:
            raise BadInputError(f"batch size must be in 1..1024, got {batch}")
        need = self.state_bytes(batch)
        xp = self.xp
        if xp is not np:
            free, _ = xp.cuda.runtime.memGetInfo()
            free += xp.get_default_memory_pool().free_bytes()
            if need > free:
                per_row = self.state_bytes(1)
                raise DeviceError(f"batch {batch} needs {need / 2**30:.2f} GiB on the GPU for its KV cache "
                                  f"(capacity {self.capacity} tokens) and logits, but {free / 2**30:.2f} GiB is free: "
                                  f"use a batch of at most {max(int(free // per_row) - 1, 1)} or a smaller max_length")
        try:
            shape = (batch, self.kv_heads, self.capacity, self.head_dim)
            st = DecodeState(batch=batch, kv=[xp.zeros(shape, self.dtype) for _ in range(2 * self.num_layers)],
                             ids=xp.zeros((batch, 1), np.int64), seqlens=xp.zeros(batch, np.int32),
                             logits=xp.zeros((batch, 1, self.vocab_size), self.logits_dtype),
                             finished=xp.zeros(batch, np.uint8))
        except Exception as e:
            if _oom(e):
                self.release(batch)
                raise DeviceError(f"out of GPU memory allocating batch {batch}: use a smaller batch or max_length") \
                    from e
            raise
        st.total = np.array(self.capacity, np.int32)
        st.binding = self._binding(st, st.ids, st.total, st.logits)
        self.states[batch] = st
        return st

    def release(self, batch: int | None = None) -> None:
        """Free one batch size's buffers (all when None); its CUDA graph is not replayed again."""
        for b in ([batch] if batch is not None else list(self.states)):
            self.states.pop(b, None)
        if self.xp is not np:
            self.xp.get_default_memory_pool().free_all_blocks()

    def _binding(self, st: DecodeState, ids, total: np.ndarray, logits):
        dev, b = self._dev(), self.session.io_binding()
        b.bind_input("input_ids", dev, self.device_id, np.int64, list(ids.shape), self._ptr(ids))
        b.bind_input("seqlens_k", dev, self.device_id, np.int32, [st.batch], self._ptr(st.seqlens))
        b.bind_cpu_input("total_sequence_length", total)
        for i in range(self.num_layers):
            for j, kv in enumerate(("key", "value")):
                buf = st.kv[2 * i + j]
                b.bind_input(f"past_key_values.{i}.{kv}", dev, self.device_id, self.dtype, list(buf.shape),
                             self._ptr(buf))
                b.bind_output(f"present.{i}.{kv}", dev, self.device_id, self.dtype, list(buf.shape), self._ptr(buf))
        b.bind_output("logits", dev, self.device_id, self.logits_dtype, list(logits.shape), self._ptr(logits))
        return b

    def _run(self, binding, graph_id: int) -> None:
        ro = self._ort.RunOptions()
        if self.xp is not np:
            ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
            if self.cuda_graph:
                ro.add_run_config_entry("gpu_graph_id", str(graph_id))
        try:
            self.session.run_with_iobinding(binding, ro)
        except Exception as e:
            if _oom(e):
                raise DeviceError(f"out of GPU memory running the decoder ({e}); use a smaller batch or "
                                  "shorter prompts") from e
            raise

    # ------------------------------------------------------------------ the two graph calls
    def prefill(self, st: DecodeState, prompts: Sequence[Sequence[int]], pad_id: int):
        """Right-padded prompt run: fills the cache. -> (logits [B*S, V], rows int32 [B]: each row's last token)."""
        xp = self.xp
        lens = np.array([len(p) for p in prompts], np.int32)
        s = int(lens.max())
        if s > self.capacity:
            raise BadInputError(f"prompt of {s} tokens exceeds the cache capacity {self.capacity}")
        ids = np.full((st.batch, s), pad_id, np.int64)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
        ids_d = xp.asarray(ids)
        st.seqlens[...] = xp.asarray(lens - 1)
        total = np.array(s, np.int32)
        it = np.dtype(self.logits_dtype).itemsize
        if xp is not np:
            free, _ = xp.cuda.runtime.memGetInfo()
            if st.batch * s * self.vocab_size * it > free:
                raise DeviceError(f"the prompt logits of batch {st.batch} x {s} tokens do not fit in GPU memory; "
                                  "use a smaller batch or shorter prompts")
        try:
            logits = xp.empty((st.batch, s, self.vocab_size), self.logits_dtype)
        except Exception as e:
            if _oom(e):
                raise DeviceError(f"out of GPU memory for the prompt logits of batch {st.batch} x {s}: use a "
                                  "smaller batch or shorter prompts") from e
            raise
        self._run(self._binding(st, ids_d, total, logits), -1)
        rows = xp.asarray(np.arange(st.batch, dtype=np.int32) * s + lens - 1)
        return logits.reshape(st.batch * s, self.vocab_size), rows

    def decode_one_token(self, st: DecodeState):
        """One token per row from st.ids (written by the sampler). -> logits [B, 1, V] (the bound buffer)."""
        self._run(st.binding, st.batch)
        return st.logits

    def prompt_logits(self, st: DecodeState, prompts: Sequence[Sequence[int]], pad_id: int) -> list[np.ndarray]:
        """prefill, then each prompt's logits on the host: float32 [len(prompt), V] per prompt."""
        logits, _ = self.prefill(st, prompts, pad_id)
        got = self.host(logits).reshape(len(prompts), max(len(p) for p in prompts), -1)
        return [got[b, :len(p)].astype(np.float32) for b, p in enumerate(prompts)]

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def on_stream(self):
        """Context in which CuPy work is queued on onnxruntime's stream (a no-op with NumPy)."""
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def host(self, a) -> np.ndarray:
        return a.get(stream=self.stream) if self.xp is not np else np.asarray(a)

    def reorder(self, st: DecodeState, rows: np.ndarray, length: int) -> None:
        """Beam search: batch row i takes the cache of row rows[i] (the first `length` positions)."""
        idx = self.xp.asarray(rows)
        for buf in st.kv:
            buf[:, :, :length] = buf[idx, :, :length]


# ---------------------------------------------------------------------- the loop
def sampler_params(cfg: GenerationConfig, step: int, pad_id: int) -> kernels.SamplerParams:
    return kernels.SamplerParams(do_sample=cfg.sampling, temperature=cfg.temperature if cfg.sampling else 1.0,
                                 top_k=cfg.top_k, top_p=cfg.top_p, penalty=cfg.repetition_penalty,
                                 suppress_stop=step < cfg.min_new_tokens, step=step,
                                 seed=(cfg.seed or 0) & 0xFFFFFFFFFFFFFFFF, pad_id=pad_id)


def check_request(decoder: FusedDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig) -> int:
    """What the fused loop cannot do, as one clear error each. -> the longest prompt's length."""
    if cfg.stop_strings:
        raise BadInputError("stop strings need the host loop; the fused loop stops on token ids")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise BadInputError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest + cfg.max_new_tokens > decoder.capacity:
        raise BadInputError(f"prompt ({longest} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
                            f"cache capacity {decoder.capacity}; raise max_length or shorten the prompt")
    return longest


class FusedGenerator:
    """Step API over the on-device loop: prefill + first token on construction, then `step()` until `done`."""

    def __init__(self, decoder: FusedDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
                 check_every: int = 8):
        if cfg.num_beams > 1:
            raise BadInputError("the step API does greedy and sampling; beam search is runtime.fused.beam_search "
                                "(fused.generate routes num_beams > 1 there)")
        check_request(decoder, prompts, cfg)
        with decoder.on_stream():
            self._start(decoder, prompts, cfg, pad_id, check_every)

    def _start(self, decoder: FusedDecoder, prompts, cfg: GenerationConfig, pad_id: int, check_every: int) -> None:
        xp, b = decoder.xp, len(prompts)
        self.dec, self.cfg, self.pad_id, self.check_every = decoder, cfg, pad_id, check_every
        self.st = decoder.state(b)
        self.st.finished[...] = 0
        self.stop_ids = xp.asarray(np.array(cfg.stop_token_ids, np.int32)) if cfg.stop_token_ids else None
        self.seen = None
        if cfg.repetition_penalty != 1.0:
            seen = np.zeros((b, decoder.vocab_size), np.uint8)
            for i, p in enumerate(prompts):
                seen[i, list(p)] = 1
            self.seen = xp.asarray(seen)
        self.tokens = xp.zeros((b, cfg.max_new_tokens), np.int32)
        self.steps = 0
        self._done = False
        logits, rows = decoder.prefill(self.st, prompts, pad_id)
        self._choose(logits, rows)

    def _choose(self, logits, rows) -> None:
        kernels.sample_rows(logits, rows, sampler_params(self.cfg, self.steps, self.pad_id), self.st.ids,
                            seen=self.seen, stop_ids=self.stop_ids, tokens_out=self.tokens, seqlens=self.st.seqlens,
                            finished=self.st.finished if self.stop_ids is not None else None,
                            stream=self.dec.stream)
        self.steps += 1
        if self.steps >= self.cfg.max_new_tokens:
            self._done = True
        elif self.stop_ids is not None and self.steps % self.check_every == 0:
            self._done = bool(int(self.st.finished.min()))          # the only host read (every few steps)

    @property
    def done(self) -> bool:
        return self._done

    def step(self) -> None:
        if self._done:
            raise BadInputError("generation is finished")
        with self.dec.on_stream():
            self._choose(self.dec.decode_one_token(self.st), None)

    def stream(self) -> Iterator[list[tuple[int, int]]]:
        """Step to the end, yielding each step's new (row, token) pairs, the prompt's first token included; a row's
        stop token (once min_new_tokens are out) ends that row and is not yielded. The host copy a step: the ids."""
        live = np.ones(self.st.batch, bool)
        stops = set(self.cfg.stop_token_ids)
        while True:
            new = []
            for i, t in enumerate(self.last_tokens().tolist()):
                if live[i] and t in stops and self.steps > self.cfg.min_new_tokens:
                    live[i] = False
                elif live[i]:
                    new.append((i, t))
            if new:
                yield new
            if self._done or not live.any():
                return
            self.step()

    def last_tokens(self) -> np.ndarray:
        """The ids chosen by the latest step, on the host [B] (the per-step copy that streaming needs)."""
        return self.dec.host(self.st.ids[:, 0]).copy()

    def results(self) -> list[list[int]]:
        """Generated ids per row, cut after the first stop token (which is not included)."""
        toks = self.dec.host(self.tokens[:, :self.steps])
        stops = set(self.cfg.stop_token_ids)
        out = []
        for row in toks.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
        return out


def generate(decoder: FusedDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
             streamer: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Batched generation on the fused decoder; streamer(row, token) gets each row's new tokens as they come
    (greedy / sampling; beam search returns whole sequences)."""
    if cfg.num_beams > 1:
        if streamer is not None:
            raise BadInputError("beam search cannot stream: the best beam is known only at the end")
        return beam_search(decoder, prompts, cfg, pad_id)
    gen = FusedGenerator(decoder, prompts, cfg, pad_id)
    if streamer is None:
        while not gen.done:
            gen.step()
    else:
        for new in gen.stream():
            for row, tok in new:
                streamer(row, tok)
    decoder.synchronize()
    return gen.results()


# ---------------------------------------------------------------------- beam search
@dataclass
class _Beams:
    """Host bookkeeping of one prompt's beams (the hypotheses are tiny; the cache and logits stay on the device)."""
    seqs: list                     # K token lists
    scores: np.ndarray             # float32 [K] cumulative log-probabilities
    done: list                     # (length-penalized score, tokens) of finished hypotheses
    finished: bool = False


def _advance(beams: _Beams, cand_s: np.ndarray, cand_i: np.ndarray, vocab: int, cfg: GenerationConfig,
             step: int, stops: set) -> list[tuple[int, int, float]] | None:
    """One prompt's step over its 2K best candidates (as runtime.generation.beam_search): a stop token closes a
    hypothesis, the first K others continue. -> (source beam, token, score) x K, or None once finished."""
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
    while len(chosen) < len(beams.seqs):                       # fewer live candidates than beams: dead copies
        chosen.append((chosen[0][0], chosen[0][1], -np.inf) if chosen else (0, 0, -np.inf))
    beams.seqs = [beams.seqs[r] + [t] for r, t, _ in chosen]
    beams.scores = np.array([s for _, _, s in chosen], np.float32)
    return chosen


def beam_search(decoder: FusedDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig,
                pad_id: int) -> list[list[int]]:
    """Beam search for a batch of prompts on the fused decoder: K = num_beams rows per prompt in one batch of
    B * K rows. Per step: the beam kernel (log-softmax + top-2K of each row, on the device) -> K x 2K candidates
    per prompt to the host (the per-step copy), merged to 2K -> the cache rows reordered on the device where beams
    moved -> the next tokens into the bound input_ids -> one decoder step (CUDA graph). Same scoring as
    runtime.generation.beam_search."""
    k = cfg.num_beams
    if k > kernels.MAX_BEAMS:
        raise BadInputError(f"the fused loop's beam kernel handles up to {kernels.MAX_BEAMS} beams, got {k}; use "
                            "fewer beams or the host loop (--graph generic)")
    longest = check_request(decoder, prompts, cfg)
    xp, vocab, stops = decoder.xp, decoder.vocab_size, set(cfg.stop_token_ids)
    rows_prompts = [list(p) for p in prompts for _ in range(k)]
    n = len(rows_prompts)
    state = [_Beams([[] for _ in range(k)], np.array([0.0] + [-np.inf] * (k - 1), np.float32), []) for _ in prompts]
    with decoder.on_stream():
        st = decoder.state(n)
        st.finished[...] = 0
        stop_ids = xp.asarray(np.array(cfg.stop_token_ids, np.int32)) if stops else None
        seen = None
        if cfg.repetition_penalty != 1.0:
            h = np.zeros((n, vocab), np.uint8)
            for i, p in enumerate(rows_prompts):
                h[i, p] = 1
            seen = xp.asarray(h)
        logits, rows = decoder.prefill(st, rows_prompts, pad_id)
        for step in range(cfg.max_new_tokens):
            scores = np.concatenate([b.scores if not b.finished else np.full(k, -np.inf, np.float32)
                                     for b in state])
            cand_s, cand_i = kernels.beam_topk(logits, rows, xp.asarray(scores), k, seen, stop_ids,
                                               cfg.repetition_penalty, step < cfg.min_new_tokens, decoder.stream)
            cand_s, cand_i = kernels.merge_beams(decoder.host(cand_s), decoder.host(cand_i), k)   # [B, 2K]
            src, toks = np.arange(n), np.full(n, pad_id, np.int64)
            for b, beams in enumerate(state):
                if beams.finished:
                    continue
                chosen = _advance(beams, cand_s[b], cand_i[b], vocab, cfg, step, stops)
                if chosen is not None:
                    src[b * k:(b + 1) * k] = [b * k + r for r, _, _ in chosen]
                    toks[b * k:(b + 1) * k] = [t for _, t, _ in chosen]
            if all(b.finished for b in state) or step + 1 == cfg.max_new_tokens:
                break
            if (src != np.arange(n)).any():
                decoder.reorder(st, src, longest + step)
                if seen is not None:
                    seen[...] = seen[xp.asarray(src)]
            if seen is not None:
                seen[xp.arange(n), xp.asarray(toks)] = 1
            st.ids[:, 0] = xp.asarray(toks)
            st.seqlens += 1
            logits, rows = decoder.decode_one_token(st), None
    out = []
    for beams in state:
        hyps = beams.done + [(s / max(len(q), 1) ** cfg.length_penalty, q) for s, q in zip(beams.scores, beams.seqs)]
        best = max(hyps, key=lambda x: x[0])[1]
        out.append([t for t in best if t not in stops])
    return out
