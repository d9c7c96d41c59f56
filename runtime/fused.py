"""The fused decoder graph (convert.llm.fused) as a `generation.Decoder`: the same decode loop as the generic
graph, its step run on the device.

Everything a step touches lives on the device and is bound once: input_ids [B, 1], seqlens_k [B], the KV buffers
[B, KVH, C, D] (past and present bound to the same memory), logits [B, 1, V]. A step is one onnxruntime run
(replayed from a CUDA graph after the first capture) and one sampler kernel launch on the same stream; the kernel
writes the next ids straight into the bound input_ids and advances seqlens_k. The host reads nothing per step
except the new ids when streaming (and the finished flags every few steps).

With NumPy arrays (CPU hosts, CI) the same code runs onnxruntime's CPU kernels and the kernels' NumPy twins.

Shapes: B batch rows, S prompt tokens (right-padded), C cache capacity, V vocabulary.

Cache sizing: `max_length` is the most positions a row may hold (the model's context by default); a state holds what
its calls need, prompt + new tokens rounded up to a bucket (powers of two from `min_bucket`, capped at max_length),
and grows on demand to the next bucket (the written positions copied, the old buffers freed). On the GPU each
allocated state has its own CUDA graph id (a captured graph refers to its buffers' addresses), so a grown state is
captured anew and the old graph is never replayed.
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
    graph_id: int = -1             # its CUDA graph (one per allocated state: a grown state is a new graph)
    parts: dict = None             # rows joining and leaving, no CUDA graph: first-k-slots bindings (k -> binding)
    picks: np.ndarray = None       # int64 [B, 1] zeros: a step's logit_positions (the CPU graph, head_at_positions)

    @property
    def capacity(self) -> int:
        return int(self.kv[0].shape[2])


class DeviceStateMemory:
    """The memory answers of a decoder whose cache states (self.states: rows -> state, self.state_bytes) live on
    self.xp (CuPy on the GPU, NumPy on the CPU) with room for self.capacity positions: the fused graph and the
    kernel engine."""

    def max_tokens(self) -> int:
        return self.capacity

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        return self.state_bytes(rows, prompt_len) + rows * (self.vocab_size + 4 * new_tokens)

    def held_bytes(self) -> int:
        """Bytes of the states allocated now (reused, or freed by release)."""
        return sum(self.state_bytes(b) for b in self.states)

    def bytes_available(self) -> int:
        if self.xp is np:
            return host_bytes_available()
        free, _ = self.xp.cuda.runtime.memGetInfo()
        # the states already allocated are reused (or freed by release)
        return int(free + self.xp.get_default_memory_pool().free_bytes()) + self.held_bytes()


def check_cache_room(past: np.ndarray, n: np.ndarray, room: int, capacity: int) -> None:
    """BadInputError unless every row's past + new tokens + `room` to generate fit the cache capacity."""
    if int((past + n).max()) + room > capacity:
        raise BadInputError(f"{int((past + n).max())} tokens + {room} new exceed the cache capacity "
                            f"{capacity}; raise max_length or shorten the prompt")


def append_by_steps(dec, st, chunks: Sequence[Sequence[int]], past: np.ndarray, dtype):
    """A later turn onto a filled cache, the decoder's own step fed one position at a time (row b's tokens at
    positions past[b]..; a row whose chunk is done writes a placeholder one past its end, which its next token
    overwrites), so every family's positions come out right; the fused graph and the kernel engine alike.
    -> each row's logits after its chunk's last token [B, V] (dtype); st.seqlens left at those positions."""
    xp = dec.xp
    n = np.array([len(c) for c in chunks], np.int64)
    last = xp.empty((st.batch, dec.vocab_size), dtype)
    for j in range(int(n.max())):
        st.ids[:, 0] = xp.asarray(np.array([c[j] if j < len(c) else 0 for c in chunks], np.int64))
        st.seqlens[...] = xp.asarray(np.where(j < n, past + j, past + n).astype(np.int32))
        logits = dec.decode_one_token(st)[:, 0]
        ends = np.nonzero(n - 1 == j)[0]
        if len(ends):
            idx = xp.asarray(ends)
            last[idx] = logits[idx]
    st.seqlens[...] = xp.asarray((past + n - 1).astype(np.int32))
    return last


def _embedded(model_path: str | Path):
    """The fused decoder's ModelProto, or None where its weights live outside the file (> 2 GB: a serialized proto
    cannot hold them, so the graph is served as it is)."""
    import onnx
    from onnx import TensorProto
    m = onnx.load(str(model_path), load_external_data=False)
    return None if any(t.data_location == TensorProto.EXTERNAL for t in m.graph.initializer) else m


def _lm_head(m, where) -> tuple[object, int]:
    """The node writing "logits" (MatMul, or MatMulNBits for weight-only quantized graphs) and the element type of
    its activation (MatMul's is its weight's; MatMulNBits' is its scales')."""
    head = [n for n in m.graph.node if "logits" in n.output]
    if len(head) != 1 or head[0].op_type not in ("MatMul", "MatMulNBits"):
        raise BadInputError(f"{where}: no single LM head (MatMul / MatMulNBits) writes 'logits'; not a fused "
                            "decoder of convert-llm")
    head = head[0]
    inits = {t.name: t for t in m.graph.initializer}
    return head, inits[head.input[1] if head.op_type == "MatMul" else head.input[2]].data_type


def without_head(model_path: str | Path) -> bytes | None:
    """The fused decoder with its LM head cut off, for a prompt pass whose caller computes the last rows' logits
    itself (the kernel engine): output "logits" becomes the head's input, the final-norm hidden state [B, S, H], so
    the prompt call neither multiplies every position by the vocabulary (2,048 x 151,936 for a Qwen2.5 prompt) nor
    holds B x S x V logits. Cut with onnx by hand (a node and its weights removed, an Identity to the output): no
    library trims a graph at a named node. None where the weights live outside the file (> 2 GB: the full graph
    serves, as a serialized proto cannot exceed 2 GB)."""
    from onnx import helper
    m = _embedded(model_path)
    if m is None:
        return None
    head, elem = _lm_head(m, model_path)
    m.graph.node.remove(head)
    m.graph.node.append(helper.make_node("Identity", [head.input[0]], ["logits"], name="prompt_hidden"))
    used = {i for n in m.graph.node for i in n.input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    out = next(o for o in m.graph.output if o.name == "logits")
    out.CopyFrom(helper.make_tensor_value_info("logits", elem, ["batch", "sequence", "hidden"]))
    return m.SerializeToString()


def _varint(buf, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[i]
        v, i, shift = v | (b & 0x7F) << shift, i + 1, shift + 7
        if b < 0x80:
            return v, i


def _fields(buf, start: int, end: int):
    """The protobuf fields of the message buf[start:end], payloads unread: (number, tag offset, payload offset,
    payload end) each."""
    i = start
    while i < end:
        tag = i
        key, i = _varint(buf, i)
        kind = key & 7
        if kind == 2:
            n, i = _varint(buf, i)
            j = i + n
        elif kind in (1, 5):
            j = i + (8 if kind == 1 else 4)
        elif kind == 0:
            j = _varint(buf, i)[1]
        else:
            raise BadInputError(f"not an ONNX model file (protobuf wire type {kind} at byte {tag})")
        yield key >> 3, tag, i, j
        i = j


def _light_tensor(buf, start: int, end: int, location: str, min_bytes: int):
    """The TensorProto at buf[start:end]; raw data of min_bytes or more stays in the file: an external-data
    reference to its bytes there."""
    from onnx import TensorProto
    fields = list(_fields(buf, start, end))
    raw = next(((at, e) for num, _, at, e in fields if num == 9), None)           # raw_data
    if raw is None or raw[1] - raw[0] < min_bytes:
        return TensorProto.FromString(bytes(buf[start:end]))
    t = TensorProto.FromString(b"".join(bytes(buf[tag:e]) for num, tag, _, e in fields if num != 9))
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", raw[0]), ("length", raw[1] - raw[0])):
        t.external_data.add(key=key, value=str(value))
    return t


def light_model(path: str | Path, min_bytes: int = 4096):
    """The ModelProto of an ONNX file with its weights left in the file (each large initializer an external-data
    reference to its bytes there, relative to the file's real folder: symbolic links resolved), read without loading
    them (the file mapped, only message headers touched): a graph edited at load keeps its weights where they are,
    onnxruntime reads them from the file (SessionOptions.external_data_dir), and neither Python nor the session keeps
    a second copy (onnx.load + SerializeToString held SmolLM2's fp32 weights twice more, and the session kept the
    bytes)."""
    import mmap
    import onnx
    path = Path(path).resolve()                  # its folder: the one onnxruntime checks each location against
    model, graph, inits = [], [], []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for num, tag, at, end in _fields(buf, 0, len(buf)):
            if num != 7:                                                          # ModelProto.graph
                model.append(bytes(buf[tag:end]))
                continue
            for gnum, gtag, gat, gend in _fields(buf, at, end):
                if gnum == 5:                                                     # GraphProto.initializer
                    inits.append(_light_tensor(buf, gat, gend, path.name, min_bytes))
                else:
                    graph.append(bytes(buf[gtag:gend]))
    m = onnx.ModelProto.FromString(b"".join(model))
    m.graph.ParseFromString(b"".join(graph))
    m.graph.initializer.extend(inits)
    return m


def head_at_positions(model: str | Path | bytes) -> bytes:
    """The fused decoder whose LM head runs only at the positions a new input names, in one graph (its weights
    loaded once, one session call a step): "logit_positions" int64 [B, P] (row b's positions, 0..S-1) gathers the
    final-norm hidden state [B, S, H] to [B, P, H] (GatherND, batch_dims 1) before the head, so "logits" is
    [B, P, V]. A prompt pass asks for each row's last position only (llama.cpp's way: the head is ~21% of SmolLM2's
    prompt FLOPs at every position), teacher forcing for all of them, a decode step for its one token. From a file,
    the weights stay there (light_model: load it with external_data_dir = the file's folder)."""
    import onnx
    from onnx import TensorProto, helper
    m = onnx.load_from_string(model) if isinstance(model, bytes) else light_model(model)
    head, _ = _lm_head(m, "the fused decoder" if isinstance(model, bytes) else model)
    hidden, nd, picked = head.input[0], "logit_positions_nd", "logit_positions_hidden"
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "logit_positions_axes"))
    gather = [helper.make_node("Unsqueeze", ["logit_positions", "logit_positions_axes"], [nd], name=nd),
              helper.make_node("GatherND", [hidden, nd], [picked], name=picked, batch_dims=1)]
    moved = onnx.NodeProto()
    moved.CopyFrom(head)
    moved.input[0] = picked
    m.graph.node.remove(head)                  # the head last (it feeds nothing): the nodes stay in order
    m.graph.node.extend(gather + [moved])
    m.graph.input.append(helper.make_tensor_value_info("logit_positions", TensorProto.INT64, ["batch", "positions"]))
    out = next(o for o in m.graph.output if o.name == "logits")
    out.type.tensor_type.shape.dim[1].dim_param = "positions"
    return m.SerializeToString()


class FusedDecoder(DeviceStateMemory):
    """Session + per-batch device state for a fused decoder file. device: "cpu" or "gpu"; cuda_options are extra
    CUDA provider options (e.g. {"sdpa_kernel": 1} to pin an attention kernel).

    On the CPU the graph is loaded with its LM head at chosen positions (head_at_positions): a prompt pass for
    generation computes only each row's last logits; prompt_logits still gets every position's."""

    positions_head = True          # CPU: load the graph through head_at_positions (False: the file's graph as is)

    def __init__(self, model_path: str | Path | bytes, spec: dict, session: SessionOptions = SessionOptions(),
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
            model_path, session = self._positions_graph(model_path, session)
        self.cuda_graph = cuda_graph
        try:
            self.session = create_session(model_path, session)
        except Exception as e:
            if session.wants_cuda and "graph capture" in str(e):
                name = "the fused decoder" if isinstance(model_path, bytes) else Path(model_path).name
                raise DeviceError(f"{name} has nodes onnxruntime's CUDA provider does not run (its "
                                  "GroupQueryAttention is float16/bfloat16 only, so a float32 fused decoder is a CPU "
                                  "graph): use the fp16 or int4 fused decoder on the GPU") from e
            raise
        types = {i.name: i.type for i in self.session.get_inputs()}
        if "past_key_values.0.key" not in types or "seqlens_k" not in types:
            name = "the model" if isinstance(model_path, bytes) else model_path
            raise BadInputError(f"{name} is not a fused decoder (inputs: {', '.join(types)})")
        self.dtype = _ORT_TYPES[types["past_key_values.0.key"]]                       # KV cache
        self.logits_dtype = _ORT_TYPES[{o.name: o.type for o in self.session.get_outputs()}["logits"]]
        self.picked_head = "logit_positions" in types      # the LM head runs at the positions bound there
        self.states: dict[int, DecodeState] = {}
        self.active: DecodeState | None = None
        self.filled = 0                                    # positions written in the active state (host count)
        self._graphs = 0                                   # CUDA graph ids given out (one per allocated state)
        import onnxruntime as ort
        self._ort = ort

    def _positions_graph(self, model_path, session: SessionOptions):
        """The CPU graph and its session options: head_at_positions of the model where it has a head (its weights
        read from its file), else the model as it is."""
        if not self.positions_head:
            return model_path, session
        try:
            graph = head_at_positions(model_path)
        except Exception as e:  # noqa: BLE001 - no head (a graph cut by without_head) or no model: create_session
            log.debug("the graph runs as it is: %s", e)        # says what is wrong with the file
            return model_path, session
        if isinstance(model_path, bytes):
            return graph, session
        return graph, replace(session, external_data_dir=str(Path(model_path).resolve().parent))

    # ------------------------------------------------------------------ buffers
    def _dev(self) -> str:
        return "cuda" if self.xp is not np else "cpu"

    @staticmethod
    def _ptr(a) -> int:
        return a.data.ptr if not isinstance(a, np.ndarray) else a.ctypes.data

    min_bucket = 256               # the smallest cache capacity a state is given (then powers of two), CPU
    # on CUDA: with 256-position slot states, batched greedy text parted from one-at-a-time for 54% of SmolLM2 serve
    # requests on an H200 (onnxruntime 1.31 GQA), with 1,024 none did (benchmarks/results/serve/gpu/README.md)
    gpu_min_bucket = 1024

    def bucket(self, tokens: int) -> int:
        """The capacity a state gets for `tokens` positions: the next power of two >= min_bucket, capped at
        max_length (the caller checks tokens <= max_length)."""
        c = max(int(self.min_bucket if self.xp is np else self.gpu_min_bucket), 1)
        while c < tokens:
            c *= 2
        return min(c, self.capacity)

    def state_bytes(self, batch: int, prompt_len: int = 0, capacity: int | None = None) -> int:
        """A state of `batch` rows with room for `capacity` positions (default max_length) and its generation's
        prompt logits: each row's last position where the head runs at chosen positions (the CPU graph, prefill
        last_only), else every position."""
        it = np.dtype(self.dtype).itemsize
        cap = self.capacity if capacity is None else capacity
        kv = 2 * self.num_layers * batch * self.kv_heads * cap * self.head_dim * it
        at = 1 if self.picked_head else max(prompt_len, 1)
        return kv + batch * at * self.vocab_size * np.dtype(self.logits_dtype).itemsize

    def bytes_needed(self, rows: int, prompt_len: int, new_tokens: int) -> int:
        cap = self.bucket(min(prompt_len + new_tokens, self.capacity))
        return self.state_bytes(rows, prompt_len, cap) + rows * (self.vocab_size + 4 * new_tokens)

    def held_bytes(self) -> int:
        return sum(self.state_bytes(b, 0, st.capacity) for b, st in self.states.items())

    def state(self, batch: int, need: int | None = None, keep: int = 0, shrink: bool = False) -> DecodeState:
        """The state of `batch` rows with room for `need` positions: the one held when it has the room, else a new
        one of capacity bucket(need) (None: max_length, for callers that size nothing) that takes the held one's
        first `keep` positions and replaces it. shrink: also replace a held state larger than bucket(need) (not
        with CUDA graphs: each new state is a new captured graph, so the states only grow there)."""
        old = self.states.get(batch)
        cap = self.capacity if need is None else self.bucket(need)
        if old is not None and (need is None or old.capacity >= need) and not (
                shrink and old.capacity > cap and not self.cuda_graph):
            return old
        if not 1 <= batch <= 1024:
            raise BadInputError(f"batch size must be in 1..1024, got {batch}")
        need_b = self.state_bytes(batch, 0, cap)
        xp = self.xp
        if xp is not np:
            free, _ = xp.cuda.runtime.memGetInfo()
            free += xp.get_default_memory_pool().free_bytes()
            if need_b > free:
                per_row = self.state_bytes(1, 0, cap)
                raise DeviceError(f"batch {batch} needs {need_b / 2**30:.2f} GiB on the GPU for its KV cache "
                                  f"(capacity {cap} tokens) and logits, but {free / 2**30:.2f} GiB is free: "
                                  f"use a batch of at most {max(int(free // per_row) - 1, 1)} or a smaller max_length")
        try:
            with self.on_stream():
                shape = (batch, self.kv_heads, cap, self.head_dim)
                st = DecodeState(batch=batch, kv=[xp.zeros(shape, self.dtype) for _ in range(2 * self.num_layers)],
                                 ids=xp.zeros((batch, 1), np.int64), seqlens=xp.zeros(batch, np.int32),
                                 logits=xp.zeros((batch, 1, self.vocab_size), self.logits_dtype),
                                 picks=np.zeros((batch, 1), np.int64) if self.picked_head else None)
                if old is not None:                    # grown (or shrunk): the written positions and the loop inputs
                    keep = min(keep, cap, old.capacity)
                    if keep:
                        for dst, src in zip(st.kv, old.kv):
                            dst[:, :, :keep] = src[:, :, :keep]
                    st.ids[...] = old.ids
                    st.seqlens[...] = old.seqlens
        except Exception as e:
            if _oom(e):
                self.release(batch)
                raise DeviceError(f"out of GPU memory allocating batch {batch}: use a smaller batch or max_length") \
                    from e
            raise
        st.total = np.array(cap, np.int32)
        st.binding = self._binding(st, st.ids, st.total, st.logits)
        self._graphs += 1
        st.graph_id, st.parts = self._graphs, {}
        if old is not None:
            log.debug("batch %d: cache capacity %d -> %d positions", batch, old.capacity, cap)
            self.synchronize()                         # the copy is done before the old buffers go
            if self.active is old:
                self.active = st
            self.states[batch] = st
            del old                                    # its buffers go (its CUDA graph is never replayed again)
            if xp is not np:
                xp.get_default_memory_pool().free_all_blocks()
        else:
            self.states[batch] = st
        return st

    def release(self, batch: int | None = None) -> None:
        """Free one batch size's buffers (all when None); its CUDA graph is not replayed again."""
        for b in ([batch] if batch is not None else list(self.states)):
            if self.active is self.states.pop(b, None):
                self.active = None
        if self.xp is not np:
            self.xp.get_default_memory_pool().free_all_blocks()

    def _binding(self, st: DecodeState, ids, total: np.ndarray, logits, rows: int | None = None, picks=None):
        """IO binding of st's buffers (rows: its first `rows` rows only, views of the same memory); picks: the
        logit_positions of a graph that has them (default: a step's, st.picks)."""
        dev, b = self._dev(), self.session.io_binding()
        n = st.batch if rows is None else rows
        seqlens = st.seqlens if rows is None else st.seqlens[:rows]
        b.bind_input("input_ids", dev, self.device_id, np.int64, list(ids.shape), self._ptr(ids))
        b.bind_input("seqlens_k", dev, self.device_id, np.int32, [n], self._ptr(seqlens))
        b.bind_cpu_input("total_sequence_length", total)
        if self.picked_head:
            b.bind_cpu_input("logit_positions", st.picks[:n] if picks is None else picks)
        for i in range(self.num_layers):
            for j, kv in enumerate(("key", "value")):
                buf = st.kv[2 * i + j] if rows is None else st.kv[2 * i + j][:rows]
                b.bind_input(f"past_key_values.{i}.{kv}", dev, self.device_id, self.dtype, list(buf.shape),
                             self._ptr(buf))
                b.bind_output(f"present.{i}.{kv}", dev, self.device_id, self.dtype, list(buf.shape), self._ptr(buf))
        b.bind_output("logits", dev, self.device_id, self.logits_dtype, list(logits.shape), self._ptr(logits))
        return b

    def bind_call(self, st: DecodeState, ids, total: np.ndarray, out):
        """A call bound once to fixed buffers (st's cache and seqlens, `ids`, the output `out`; `total` the
        total_sequence_length it always runs at), for replay as its own CUDA graph (with cuda_graph=True): ->
        (binding, graph id) for run_bound. The caller writes new values into the same buffers before each run."""
        self._graphs += 1
        return self._binding(st, ids, total, out), self._graphs

    def run_bound(self, binding, graph_id: int) -> None:
        """Run a bind_call binding: captured as CUDA graph `graph_id` at its first runs, replayed after."""
        self._run(binding, graph_id)

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
    def prefill(self, st: DecodeState, prompts: Sequence[Sequence[int]], pad_id: int, last_only: bool = False):
        """Right-padded prompt run: fills the cache. -> (logits [N, V], rows int32 [B]: logits[rows[b]] is row b's
        last token's). N = B*S, every position; with last_only on a graph whose head runs at chosen positions (the
        CPU's), N = B: only each row's last position went through the LM head (rows 0..B-1)."""
        xp = self.xp
        lens = np.array([len(p) for p in prompts], np.int32)
        s = int(lens.max())
        cap = int(st.kv[0].shape[2])
        if s > cap:
            raise BadInputError(f"prompt of {s} tokens exceeds the cache capacity {cap}")
        ids = np.full((st.batch, s), pad_id, np.int64)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
        ids_d = xp.asarray(ids)
        st.seqlens[...] = xp.asarray(lens - 1)
        total = np.array(s, np.int32)
        last = last_only and self.picked_head
        at = 1 if last else s                              # positions a row through the LM head
        picks = None
        if self.picked_head:                               # the last ones, or all
            picks = (lens[:, None] - 1 if last else np.tile(np.arange(s), (st.batch, 1))).astype(np.int64)
        it = np.dtype(self.logits_dtype).itemsize
        if xp is not np:
            free, _ = xp.cuda.runtime.memGetInfo()
            if st.batch * at * self.vocab_size * it > free:
                raise DeviceError(f"the prompt logits of batch {st.batch} x {s} tokens do not fit in GPU memory; "
                                  "use a smaller batch or shorter prompts")
        try:
            logits = xp.empty((st.batch, at, self.vocab_size), self.logits_dtype)
        except Exception as e:
            if _oom(e):
                raise DeviceError(f"out of GPU memory for the prompt logits of batch {st.batch} x {s}: use a "
                                  "smaller batch or shorter prompts") from e
            raise
        self._run(self._binding(st, ids_d, total, logits, picks=picks), -1)
        rows = xp.asarray(np.arange(st.batch, dtype=np.int32) * at + (0 if last else lens - 1))
        return logits.reshape(st.batch * at, self.vocab_size), rows

    def decode_one_token(self, st: DecodeState):
        """One token per row from st.ids (written by the sampler). -> logits [B, 1, V] (the bound buffer)."""
        self._run(st.binding, st.graph_id)
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
        self.active, self.filled = self.state(batch, min(self.min_bucket, self.capacity)), 0

    # ------------------------------------------------------------------ rows joining and leaving (in-flight batching)
    row_slots = 16                 # cache slots of a batch whose rows join and leave (the server sets its --max-batch)
    slot_of: list | None = None    # live row (batch order) -> its cache slot; None: a fixed batch (start(B))

    @property
    def length(self) -> int:
        """Cached positions of the longest live row (0 when none; rows joining and leaving)."""
        return max(self.slot_pos.values(), default=0) if self.slot_of is not None else self.filled

    # positions (rows x longest prompt, right-padded) a batched prefill of joining rows may run at once: small on the
    # CPU, tuned when its graph still computed logits at every prompt position ([rows*S, V], which dominated a large
    # group's memory traffic; not re-tuned since head_at_positions) (SmolLM2, 16 prompts of 30-60 tokens, 1 thread:
    # alone 3.7 s, groups of ~4 by length 3.05 s, one batch of 16 4.4 s); the GPU takes the whole join at once up to
    # gpu_prefill_positions
    prefill_positions = 256
    gpu_prefill_positions = 8192
    prefill_pad = 0.25             # most padding a group may add (share of its positions)

    def prefill_groups(self, lens: Sequence[int]) -> list[list[int]]:
        """Distinct joining prompts (their lengths) -> groups of indices, each prefilled as one right-padded batch:
        sorted by length, a group grows while its padded positions stay within the budget and its padding within
        prefill_pad (a prompt over the budget runs alone)."""
        budget = self.prefill_positions if self.xp is np else self.gpu_prefill_positions
        groups, cur = [], []
        for i in sorted(range(len(lens)), key=lambda i: (lens[i], i)):
            if cur:
                n, s = len(cur) + 1, lens[i]                     # sorted: the new prompt is the group's longest
                real = sum(lens[j] for j in cur) + s
                if n * s <= budget and n * s - real <= self.prefill_pad * n * s:
                    cur.append(i)
                    continue
                groups.append(cur)
            cur = [i]
        return groups + ([cur] if cur else [])

    def join(self, chunks: Sequence[Sequence[int]], room: int) -> np.ndarray:
        """New rows take free cache slots of the slot state (row_slots rows, its decode step one captured CUDA
        graph; its capacity the longest need of its rows' calls, grown on demand). The distinct prompts are
        prefilled in groups of similar length (prefill_groups), each one right-padded batch: straight into its
        rows' slots when they are consecutive (distinct prompts take the lowest free slots in length order, then
        the other choices), else
        into a group state of the group's length whose positions are then copied into the slots; a request's n
        choices (equal consecutive chunks) share one prefill, copied into their slots. -> float32 [k, V] on the
        host: each new row's last-token logits, in the order of `chunks`."""
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
        need = max(len(c) for c in chunks) + room
        if self.slot_of and self.row_slots in self.states:     # live rows keep their positions (and room)
            need = max(need, self.states[self.row_slots].capacity)
        st = self.state(self.row_slots, need, keep=self.length, shrink=not self.slot_of)
        self.active = st
        xp = self.xp
        chunks = [tuple(c) for c in chunks]
        prim = [i for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]     # a prompt's first row
        rows_of = {p: list(range(p, (prim + [len(chunks)])[j + 1])) for j, p in enumerate(prim)}
        groups = [[prim[j] for j in g] for g in self.prefill_groups([len(chunks[p]) for p in prim])]
        taken = iter(free)                                 # the lowest free slots: the distinct prompts in the
        slot_of = {p: next(taken) for g in groups for p in g}     # groups' (length) order, then the other choices
        slot_of.update({i: next(taken) for p in prim for i in rows_of[p][1:]})
        last: list = [None] * len(chunks)
        for g in groups:
            ps = [chunks[p] for p in g]
            k, s = len(g), max(map(len, ps))
            slots = [slot_of[p] for p in g]
            direct = slots == list(range(slots[0], slots[0] + k))
            kv = ([buf[slots[0]:slots[0] + k] for buf in st.kv] if direct else
                  [xp.zeros((k, self.kv_heads, s, self.head_dim), self.dtype) for _ in st.kv])
            one = DecodeState(batch=k, kv=kv, ids=None, seqlens=xp.zeros(k, np.int32), logits=None)
            logits, rows = self.prefill(one, ps, 0, last_only=True)
            lg = self.host(logits[rows]).astype(np.float32)
            if not direct:
                idx = xp.asarray(np.array(slots, np.int64))
                for buf, src in zip(st.kv, kv):
                    buf[idx, :, :s] = src
            for p, row in zip(g, lg):
                for i in rows_of[p]:
                    last[i] = row
                    if i != p:                             # another choice of the same prompt: its slot a copy
                        for buf in st.kv:
                            buf[slot_of[i], :, :len(chunks[p])] = buf[slot_of[p], :, :len(chunks[p])]
        for i, c in enumerate(chunks):
            self.slot_of.append(slot_of[i])
            self.slot_pos[slot_of[i]] = len(c)
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
        position 0, which a joining row's prefill replaces. Without a CUDA graph the step runs the first k slots
        only, k = the highest live slot + 1 (rows take the lowest free slots): one live row is a batch-1 step.
        -> logits [k, V] of the live rows (the device)."""
        st, xp = self.active, self.xp
        slots = np.array(self.slot_of, np.int64)
        k = st.batch if self.cuda_graph or not len(slots) else int(slots.max()) + 1
        ids = np.zeros((k, 1), np.int64)
        pos = np.zeros(k, np.int32)
        ids[slots] = self.row_next
        pos[slots] = [self.slot_pos[s] for s in self.slot_of]
        st.ids[:k] = xp.asarray(ids)
        st.seqlens[:k] = xp.asarray(pos)
        if k == st.batch:
            logits = self.decode_one_token(st)[:, 0]
        else:
            if k not in st.parts:
                st.parts[k] = self._binding(st, st.ids[:k], st.total, st.logits[:k], rows=k)
            self._run(st.parts[k], -1)
            logits = st.logits[:k, 0]
        fed = np.ones(len(slots), bool) if fed is None else np.asarray(fed, bool)
        for s in slots[fed]:
            self.slot_pos[int(s)] += 1
        return logits[xp.asarray(slots)], None

    def append(self, chunks: Sequence[Sequence[int]], past: np.ndarray, room: int):
        """The first call (empty cache): one right-padded prefill. Later turns: the chunks fed as decode steps
        (row b's tokens at positions past[b]..; a row whose chunk is done writes a placeholder one past its end,
        which its next token overwrites), so every family's positions come out right. -> (logits, rows)."""
        n = np.array([len(c) for c in chunks], np.int64)
        past = np.asarray(past, np.int64)
        check_cache_room(past, n, room, self.capacity)
        fresh = not past.any()
        st = self.active = self.state(self.active.batch, int((past + n).max()) + room,
                                      keep=0 if fresh else self.filled, shrink=fresh)
        if fresh:
            logits, rows = self.prefill(st, chunks, 0, last_only=True)
            self.filled = int(n.max())
            return logits, rows
        last = append_by_steps(self, st, chunks, past, self.logits_dtype)
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
        """Beam search: batch row i takes the cache of row src[i] (the positions written so far), on the decoder's
        stream (the next step waits for it whoever calls)."""
        with self.on_stream():
            idx = self.xp.asarray(src)
            for buf in self.active.kv:
                buf[:, :, :self.filled] = buf[idx, :, :self.filled]

    limit_name = "the cache capacity"
    limit_fix = "raise the capacity up to the model's positions (generate --max-context N; max_length=N)"

