"""The fused decoder graph (convert.llm.fused) as a `generation.Decoder`: the same decode loop as the generic
graph, its step run on the device.

Everything a step touches lives on the device and is bound once: input_ids [B, 1], seqlens_k [B], the KV buffers
[B, KVH, C, D] (past and present bound to the same memory), logits [B, 1, V]. A step is one onnxruntime run
(replayed from a CUDA graph after the first capture) and one sampler kernel launch on the same stream; the kernel
writes the next ids straight into the bound input_ids and advances seqlens_k. The host reads nothing per step
except the new ids when streaming (and the finished flags every few steps).

With NumPy arrays (CPU hosts, CI) the same code runs onnxruntime's CPU kernels and the kernels' NumPy twins.

Shapes: B batch rows, S prompt tokens (right-padded), C cache capacity, V vocabulary.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BadInputError, DeviceError
from .generation import host_bytes_available
from .session import CUDA, SessionOptions, create_session, gpu_available

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
    total: np.ndarray = None       # int32 scalar on the host: the capacity, the decode steps' total_sequence_length
    binding: object = None         # decode-step IO binding (built once)


class DeviceStateMemory:
    """The memory answers of a decoder whose cache states (self.states: rows -> state, self.state_bytes) live on
    self.xp (CuPy on the GPU, NumPy on the CPU) with room for self.capacity positions: the fused graph and the
    kernel engine."""

    def max_tokens(self) -> int:
        return self.capacity

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        return self.state_bytes(rows, prompt_len) + rows * (self.vocab_size + 4 * new_tokens)

    def bytes_available(self) -> int:
        if self.xp is np:
            return host_bytes_available()
        free, _ = self.xp.cuda.runtime.memGetInfo()
        # the states already allocated are reused (or freed by release)
        return int(free + self.xp.get_default_memory_pool().free_bytes()) + sum(
            self.state_bytes(b) for b in self.states)


class FusedDecoder(DeviceStateMemory):
    """Session + per-batch device state for a fused decoder file. device: "cpu" or "gpu"; cuda_options are extra
    CUDA provider options (e.g. {"sdpa_kernel": 1} to pin an attention kernel)."""

    def __init__(self, model_path: str | Path, spec: dict, session: SessionOptions = SessionOptions(),
                 max_length: int | None = None, cuda_graph: bool = True):
        self.spec, self.device_id = spec, session.device_id
        self.num_layers, self.kv_heads, self.head_dim = spec["num_layers"], spec["kv_heads"], spec["head_dim"]
        self.vocab_size = spec["vocab_size"]
        self.capacity = int(max_length or min(spec["max_positions"], 4096))
        if self.capacity > spec["max_positions"]:
            raise BadInputError(f"max_length {self.capacity} exceeds the model's {spec['max_positions']} positions")
        if session.wants_cuda and not gpu_available() and session.allow_fallback:
            log.warning("no usable CUDA provider here: the fused decoder runs on the CPU (allow_fallback is set)")
            session = replace(session, device="cpu", providers=None)
        if session.wants_cuda:
            if not gpu_available():
                create_session(model_path, session)                  # raises the one DeviceError for this
            from .kernels.cuda import cupy
            cp = self.xp = cupy()
            cp.cuda.Device(session.device_id).use()
            self.stream = cp.cuda.Stream(non_blocking=True)
            session = replace(session, providers=(CUDA,), enable_cuda_graph=cuda_graph,
                              user_compute_stream=self.stream.ptr)
        else:
            self.xp, self.stream = np, None
            cuda_graph = False
        self.cuda_graph = cuda_graph
        try:
            self.session = create_session(model_path, session)
        except Exception as e:
            if session.wants_cuda and "graph capture" in str(e):
                raise DeviceError(f"{Path(model_path).name} has nodes onnxruntime's CUDA provider does not run (its "
                                  "GroupQueryAttention is float16/bfloat16 only, so a float32 fused decoder is a CPU "
                                  "graph): use the fp16 or int4 fused decoder on the GPU") from e
            raise
        types = {i.name: i.type for i in self.session.get_inputs()}
        if "past_key_values.0.key" not in types or "seqlens_k" not in types:
            raise BadInputError(f"{model_path} is not a fused decoder (inputs: {', '.join(types)})")
        self.dtype = _ORT_TYPES[types["past_key_values.0.key"]]                       # KV cache
        self.logits_dtype = _ORT_TYPES[{o.name: o.type for o in self.session.get_outputs()}["logits"]]
        self.states: dict[int, DecodeState] = {}
        self.active: DecodeState | None = None
        self.filled = 0                                    # positions written in the active state (host count)
        import onnxruntime as ort
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
                             logits=xp.zeros((batch, 1, self.vocab_size), self.logits_dtype))
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
            if self.active is self.states.pop(b, None):
                self.active = None
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

    # ------------------------------------------------------------------ the Decoder protocol (runtime.generation)
    @property
    def next_ids(self):
        if self.slot_of is not None:                     # rows joining and leaving: the live rows' ids, on the host
            return self.row_next
        return self.active.ids if self.active is not None else None

    @property
    def seqlens(self):
        return self.active.seqlens if self.active is not None and self.slot_of is None else None

    def start(self, batch: int) -> None:
        """A fixed batch of `batch` rows; 0: a batch whose rows join and leave (join / leave, cache slots)."""
        if batch == 0:
            self.active, self.filled = None, 0
            self.slot_of, self.row_next, self.slot_pos = [], np.zeros((0, 1), np.int64), {}
            return
        self.slot_of = None
        self.active, self.filled = self.state(batch), 0

    # ------------------------------------------------------------------ rows joining and leaving (in-flight batching)
    row_slots = 16                 # cache slots of a batch whose rows join and leave (the server sets its --max-batch)
    slot_of: list | None = None    # live row (batch order) -> its cache slot; None: a fixed batch (start(B))

    @property
    def length(self) -> int:
        """Cached positions of the longest live row (0 when none; rows joining and leaving)."""
        return max(self.slot_pos.values(), default=0) if self.slot_of is not None else self.filled

    def join(self, chunks: Sequence[Sequence[int]], room: int) -> np.ndarray:
        """New rows take free cache slots of the slot state (row_slots rows, allocated once, its decode step one
        captured CUDA graph): each distinct prompt is prefilled alone (a batch-1 state), its cache copied into the
        row's slot on the device. -> float32 [k, V] on the host: each new row's last-token logits."""
        if self.slot_of is None:
            raise BadInputError("join: this decoder runs a fixed batch; start(0) begins one whose rows join")
        free = [s for s in range(self.row_slots) if s not in set(self.slot_of)]
        if len(chunks) > len(free):
            raise BadInputError(f"{len(chunks)} rows cannot join: {len(free)} of the {self.row_slots} cache slots "
                                "are free (raise row_slots / --max-batch)")
        for c in chunks:
            if len(c) + room > self.capacity:
                raise BadInputError(f"{len(c)} tokens + {room} new exceed the cache capacity {self.capacity}; "
                                    "raise max_length or shorten the prompt")
        st, one = self.state(self.row_slots), self.state(1)
        self.active = st
        last, prev = [], None
        for slot, c in zip(free, map(tuple, chunks)):
            if c != prev:                                # a request's n choices: one prefill, n slots
                logits, _ = self.prefill(one, [c], 0)
                prev, lg = c, self.host(logits[len(c) - 1]).astype(np.float32)
            last.append(lg)
            for buf, src in zip(st.kv, one.kv):
                buf[slot, :, :len(c)] = src[0, :, :len(c)]
            self.slot_of.append(slot)
            self.slot_pos[slot] = len(c)
        self.row_next = np.concatenate([self.row_next, np.zeros((len(chunks), 1), np.int64)])
        return np.stack(last)

    def leave(self, keep: np.ndarray) -> None:
        """Rows not in `keep` (indices into the live rows) leave: their slots are free for the next joining rows
        (nothing is copied: a slot's stale positions are never read, each row attends up to its own length)."""
        keep = [int(i) for i in np.asarray(keep, np.int64)]
        for i, slot in enumerate(self.slot_of):
            if i not in keep:
                self.slot_pos.pop(slot, None)
        self.slot_of = [self.slot_of[i] for i in keep]
        self.row_next = self.row_next[keep]

    def _step_slots(self, fed):
        """One decode step of the slot state: every live row's id at its own position; only rows that are decoding
        (fed) advance (the others write a placeholder that their next real token overwrites). Free slots write at
        position 0, which a joining row's prefill copy replaces. -> logits [k, V] of the live rows (the device)."""
        st, xp = self.active, self.xp
        slots = np.array(self.slot_of, np.int64)
        ids = np.zeros((st.batch, 1), np.int64)
        pos = np.zeros(st.batch, np.int32)
        ids[slots] = self.row_next
        pos[slots] = [self.slot_pos[s] for s in self.slot_of]
        st.ids[...] = xp.asarray(ids)
        st.seqlens[...] = xp.asarray(pos)
        logits = self.decode_one_token(st)[:, 0]
        fed = np.ones(len(slots), bool) if fed is None else np.asarray(fed, bool)
        for s in slots[fed]:
            self.slot_pos[int(s)] += 1
        return logits[xp.asarray(slots)], None

    def append(self, chunks: Sequence[Sequence[int]], past: np.ndarray, room: int):
        """The first call (empty cache): one right-padded prefill. Later turns: the chunks fed as decode steps
        (row b's tokens at positions past[b]..; a row whose chunk is done writes a placeholder one past its end,
        which its next token overwrites), so every family's positions come out right. -> (logits, rows)."""
        st, xp = self.active, self.xp
        n = np.array([len(c) for c in chunks], np.int64)
        past = np.asarray(past, np.int64)
        if int((past + n).max()) + room > self.capacity:
            raise BadInputError(f"{int((past + n).max())} tokens + {room} new exceed the cache capacity "
                                f"{self.capacity}; raise max_length or shorten the prompt")
        if not past.any():
            logits, rows = self.prefill(st, chunks, 0)
            self.filled = int(n.max())
            return logits, rows
        last = xp.empty((st.batch, self.vocab_size), self.logits_dtype)
        for j in range(int(n.max())):
            ids = np.array([c[j] if j < len(c) else 0 for c in chunks], np.int64)
            st.ids[:, 0] = xp.asarray(ids)
            st.seqlens[...] = xp.asarray(np.where(j < n, past + j, past + n).astype(np.int32))
            logits = self.decode_one_token(st)[:, 0]
            ends = np.nonzero(n - 1 == j)[0]
            if len(ends):
                idx = xp.asarray(ends)
                last[idx] = logits[idx]
        st.seqlens[...] = xp.asarray((past + n - 1).astype(np.int32))
        self.filled = int((past + n).max())
        return last, None

    def step(self, real=None):
        """One token a row from next_ids (the fused graph attends every written position, so `real` is unused:
        a finished row's pads are never read by its real tokens). Rows joining and leaving: `real` marks the rows
        that are decoding (see _step_slots)."""
        if self.slot_of is not None:
            return self._step_slots(real)
        self.filled += 1
        return self.decode_one_token(self.active), None

    def reorder(self, src: np.ndarray) -> None:
        """Beam search: batch row i takes the cache of row src[i] (the positions written so far)."""
        idx = self.xp.asarray(src)
        for buf in self.active.kv:
            buf[:, :, :self.filled] = buf[idx, :, :self.filled]

    limit_name = "the cache capacity (raise max_length)"

