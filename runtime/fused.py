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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
    steps_run: int = 0


class FusedDecoder:
    """Session + per-batch device state for a fused decoder file. device: "cpu" or "gpu"."""

    def __init__(self, model_path: str | Path, spec: dict, device: str = "cpu", device_id: int = 0,
                 max_length: int | None = None, cuda_graph: bool = True, threads: int = 0):
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
                    "has_user_compute_stream": "1"}
            if cuda_graph:
                opts["enable_cuda_graph"] = "1"
            providers = [(CUDA, opts)]
        else:
            self.xp, self.stream = np, None
            providers = ["CPUExecutionProvider"]
            cuda_graph = False
        self.cuda_graph = cuda_graph
        self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
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
        st.steps_run += 1
        return st.logits

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()


# ---------------------------------------------------------------------- the loop
def sampler_params(cfg: GenerationConfig, step: int, pad_id: int) -> kernels.SamplerParams:
    return kernels.SamplerParams(do_sample=cfg.sampling, temperature=cfg.temperature if cfg.sampling else 1.0,
                                 top_k=cfg.top_k, top_p=cfg.top_p, penalty=cfg.repetition_penalty,
                                 suppress_stop=step < cfg.min_new_tokens, step=step,
                                 seed=(cfg.seed or 0) & 0xFFFFFFFFFFFFFFFF, pad_id=pad_id)


class FusedGenerator:
    """Step API over the on-device loop: prefill + first token on construction, then `step()` until `done`."""

    def __init__(self, decoder: FusedDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
                 check_every: int = 8):
        if cfg.num_beams > 1:
            raise BadInputError("beam search runs in the CPU loop (runtime.generation.beam_search); the fused "
                                "loop does greedy and sampling")
        if cfg.stop_strings:
            raise BadInputError("stop strings need the host loop; the fused loop stops on token ids")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise BadInputError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest + cfg.max_new_tokens > decoder.capacity:
            raise BadInputError(f"prompt ({longest} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
                                f"cache capacity {decoder.capacity}; raise max_length or shorten the prompt")
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
        self._choose(self.dec.decode_one_token(self.st), None)

    def last_tokens(self) -> np.ndarray:
        """The ids chosen by the latest step, on the host [B] (the per-step copy that streaming needs)."""
        ids = self.st.ids[:, 0]
        return ids.get() if self.dec.xp is not np else ids.copy()

    def results(self) -> list[list[int]]:
        """Generated ids per row, cut after the first stop token (which is not included)."""
        toks = self.tokens[:, :self.steps]
        toks = toks.get() if self.dec.xp is not np else toks
        stops = set(self.cfg.stop_token_ids)
        out = []
        for row in toks.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
        return out


def generate(decoder: FusedDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, pad_id: int,
             streamer: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Batched generation on the fused decoder; streamer(row, token) gets each row's new tokens as they come."""
    gen = FusedGenerator(decoder, prompts, cfg, pad_id)
    live = np.ones(len(prompts), bool)
    stops = set(cfg.stop_token_ids)

    def emit():
        for i, t in enumerate(gen.last_tokens()):
            if live[i]:
                if int(t) in stops and gen.steps > cfg.min_new_tokens:
                    live[i] = False
                else:
                    streamer(i, int(t))

    if streamer is not None:
        emit()
    while not gen.done:
        gen.step()
        if streamer is not None:
            emit()
    decoder.synchronize()
    return gen.results()
