"""Static-shape fast path for encoders: shape buckets, IO binding and, on CUDA, one captured CUDA graph per bucket.

A batch of n token rows of length L runs in the smallest bucket (batch >= n, sequence >= L), padded to it:
sequence positions with the model's pad values (pad id, mask 0: the model masks them), extra rows as copies of the
last real row (never an all-padding row, whose masked pooling would divide by zero); results are cut back to n rows.
Each bucket is its own static-shape session (symbolic dims fixed through the session factory's `free_dimensions`,
so onnxruntime folds the shape arithmetic away and every node can run on CUDA) with inputs and outputs bound once to
fixed buffers; on CUDA that session captures a graph on its first run and replays it after. The per-call work is one
host-to-device copy per input into the bound buffers and one copy of the (small) output back; `run_bound` skips both
(benchmarks time the device path with it).

The bucketing itself (bucket choice, length-sorted plans, padding) is pure functions, tested on any host.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .session import SessionOptions, create_session

log = logging.getLogger(__name__)

SEQ_BUCKETS = (16, 32, 64, 128, 256)
BATCH_BUCKETS = (1, 8, 32)


def _check_buckets(name: str, values: tuple[int, ...]) -> None:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values) \
            or list(values) != sorted(set(values)):
        raise BadInputError(f"{name} buckets must be increasing positive integers, got {list(values)}")


@dataclass(frozen=True)
class BucketSpec:
    seq: tuple[int, ...] = SEQ_BUCKETS
    batch: tuple[int, ...] = BATCH_BUCKETS

    def __post_init__(self):
        object.__setattr__(self, "seq", tuple(self.seq))
        object.__setattr__(self, "batch", tuple(self.batch))
        _check_buckets("sequence", self.seq)
        _check_buckets("batch", self.batch)

    @classmethod
    def for_max_length(cls, max_length: int, batch: tuple[int, ...] = BATCH_BUCKETS,
                       seq: tuple[int, ...] = SEQ_BUCKETS) -> "BucketSpec":
        """The sequence buckets below `max_length`, then `max_length` itself (every tokenized row fits)."""
        if max_length < 1:
            raise BadInputError(f"max_length must be >= 1, got {max_length}")
        return cls(tuple(b for b in seq if b < max_length) + (max_length,), batch)


@dataclass(frozen=True)
class PlannedBatch:
    indices: np.ndarray      # rows of the input, in run order
    batch: int               # batch bucket
    seq: int                 # sequence bucket


def batch_buckets(max_batch: int, base: tuple[int, ...] = BATCH_BUCKETS) -> tuple[int, ...]:
    """The batch buckets below `max_batch`, then `max_batch` itself."""
    if max_batch < 1:
        raise BadInputError(f"batch size must be >= 1, got {max_batch}")
    return tuple(b for b in base if b < max_batch) + (max_batch,)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n."""
    if n < 1:
        raise BadInputError(f"cannot bucket a size of {n}")
    for b in buckets:
        if b >= n:
            return b
    raise BadInputError(f"size {n} is larger than the largest bucket {buckets[-1]}; add a bucket or split the input")


def length_sorted_batches(lengths, max_batch: int) -> list[np.ndarray]:
    """Row indices grouped shortest-first into batches of <= max_batch (stable: equal lengths keep their order)."""
    if max_batch < 1:
        raise BadInputError(f"batch size must be >= 1, got {max_batch}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[s:s + max_batch] for s in range(0, len(order), max_batch)]


def plan_batches(lengths, spec: BucketSpec) -> list[PlannedBatch]:
    """Length-sorted batches of at most the largest batch bucket, each with its (batch, sequence) bucket."""
    lengths = np.asarray(lengths)
    return [PlannedBatch(idx, bucket_for(len(idx), spec.batch), bucket_for(int(lengths[idx].max()), spec.seq))
            for idx in length_sorted_batches(lengths, spec.batch[-1])]


def pad_to_bucket(feeds: dict[str, np.ndarray], batch: int, seq: int,
                  pad_values: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Pad every [n, L] feed to [batch, seq]: positions with the input's pad value (0 unless given), extra rows as
    copies of the last real row."""
    pad_values = pad_values or {}
    out = {}
    for name, a in feeds.items():
        if a.ndim != 2:
            raise BadInputError(f"input {name!r} has shape {a.shape}; bucketing takes [batch, sequence] inputs")
        n, length = a.shape
        if n > batch or length > seq or n == 0:
            raise BadInputError(f"input {name!r} of shape {a.shape} does not fit the bucket ({batch}, {seq})")
        p = np.full((batch, seq), pad_values.get(name, 0), dtype=a.dtype)
        p[:n, :length] = a
        p[n:] = p[n - 1]
        out[name] = p
    return out


def row_lengths(feeds: dict[str, np.ndarray], pad_values: dict[str, int] | None = None) -> np.ndarray | None:
    """Each row's length up to its last real position (right padding): from `attention_mask` when it is fed, else
    from the last `input_ids` entry that is not the pad id; None when neither is fed. An all-padding row counts 1."""
    if "attention_mask" in feeds:
        keep = np.asarray(feeds["attention_mask"]) != 0
    elif "input_ids" in feeds:
        keep = np.asarray(feeds["input_ids"]) != (pad_values or {}).get("input_ids", 0)
    else:
        return None
    last = keep.shape[1] - np.argmax(keep[:, ::-1], axis=1)
    return np.where(keep.any(axis=1), last, 1)


def split_by_length(lengths, spec: BucketSpec, call_cost_tokens: int = 0) -> list[PlannedBatch] | None:
    """Rows of one batch (<= the largest batch bucket) grouped by their own sequence bucket, when running the groups
    in their buckets computes fewer (padded) tokens than one bucket for all, counting `call_cost_tokens` per extra
    call; None when one bucket is as cheap. E.g. 16 rows of 128 tokens + 16 of 64 with a 16-row batch bucket: 3,072
    tokens in two calls instead of 4,096 in one."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    seqs = np.array([bucket_for(int(x), spec.seq) for x in lengths])
    single = bucket_for(n, spec.batch) * int(seqs.max())
    groups = [PlannedBatch(np.flatnonzero(seqs == s), bucket_for(int((seqs == s).sum()), spec.batch), int(s))
              for s in np.unique(seqs)]
    cost = sum(g.batch * g.seq for g in groups) + call_cost_tokens * (len(groups) - 1)
    return groups if len(groups) > 1 and cost < single else None


def sequence_length(feeds: dict[str, np.ndarray]) -> int:
    lengths = {a.shape[1] for a in feeds.values()}
    if len(lengths) != 1:
        raise BadInputError(f"inputs disagree on the sequence length: { {k: a.shape for k, a in feeds.items()} }")
    return lengths.pop()


class StaticBucket:
    """One static-shape session with its inputs and outputs bound to fixed buffers (a CUDA graph on CUDA)."""

    def __init__(self, model: Path | bytes, opts: SessionOptions, dims: tuple[str, str], batch: int, seq: int,
                 output_names: list[str], cuda_graph: bool, device_inputs: dict[str, tuple] | None = None):
        """device_inputs: {name: (pointer, shape, numpy dtype)}, inputs read in place from device memory that
        outlives the bucket at a fixed address (a CUDA graph replays the address it captured)."""
        import onnxruntime as ort
        self.session = create_session(model, replace(opts, enable_cuda_graph=cuda_graph,
                                                     free_dimensions=((dims[0], batch), (dims[1], seq))))
        device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.binding = self.session.io_binding()
        self.inputs = {}
        for name, (ptr, shape, dtype) in (device_inputs or {}).items():
            self.binding.bind_input(name, "cuda", opts.device_id, dtype, list(shape), ptr)
        for i in self.session.get_inputs():
            if i.name in (device_inputs or {}):
                continue
            dtype = np.int64 if i.type == "tensor(int64)" else np.int32 if i.type == "tensor(int32)" else np.float32
            v = ort.OrtValue.ortvalue_from_shape_and_type([batch, seq], dtype, device, opts.device_id)
            self.binding.bind_ortvalue_input(i.name, v)
            self.inputs[i.name] = v
        self.outputs = []
        for name in output_names:
            shape = [batch if d == dims[0] else seq if d == dims[1] else d
                     for d in next(o.shape for o in self.session.get_outputs() if o.name == name)]
            if not all(isinstance(d, int) for d in shape):
                raise BadInputError(f"output {name!r} has a dynamic shape {shape} other than batch/sequence; "
                                    "run it without buckets")
            otype = next(o.type for o in self.session.get_outputs() if o.name == name)
            v = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float16 if otype == "tensor(float16)"
                                                          else np.float32, device, opts.device_id)
            self.binding.bind_ortvalue_output(name, v)
            self.outputs.append(v)
        self.runs, self.cuda_graph = 0, cuda_graph

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.runs += 1

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, v in self.inputs.items():
            v.update_inplace(np.ascontiguousarray(feeds[name]))
        self.run()
        return [np.array(o.numpy(), copy=True) for o in self.outputs]   # the buffers are reused


def static_bucket(model: Path | bytes, opts: SessionOptions, dims: tuple[str, str], batch: int, seq: int,
                  output_names: list[str], cuda_graph: bool, device_inputs: dict[str, tuple] | None = None
                  ) -> StaticBucket:
    """A StaticBucket, in a CUDA graph where asked and onnxruntime accepts the capture (it refuses when a node is not
    on CUDA: then without one, logged; the bucket's .cuda_graph says which)."""
    try:
        return StaticBucket(model, opts, dims, batch, seq, output_names, cuda_graph, device_inputs)
    except Exception as e:  # noqa: BLE001  (onnxruntime's own pybind error types)
        if not cuda_graph:
            raise
        log.warning("CUDA graph capture refused for %s (%s); its buckets run with IO binding only",
                    model.name if isinstance(model, Path) else "the model", str(e).splitlines()[0][:200])
        return StaticBucket(model, opts, dims, batch, seq, output_names, False, device_inputs)


class BucketRunner:
    """Runs [batch, sequence] feeds through per-bucket static sessions (same call shape as session.Runner).

    `pad_values`: each input's pad value (the tokenizer's pad id for input_ids; 0 for masks and type ids).
    `seq_outputs`: outputs with a sequence axis (cut back to the real length); the others are cut on rows only.
    `split_lengths`: a batch whose rows fall in several sequence buckets runs as one call per bucket when that
    computes fewer padded tokens (`split_by_length`; right padding; models without sequence outputs only): rows are
    independent in an encoder with masked attention, so the results are those of one padded call.
    """

    def __init__(self, model: str | Path, output_names: list[str], opts: SessionOptions = SessionOptions(),
                 spec: BucketSpec = BucketSpec(), pad_values: dict[str, int] | None = None,
                 dims: tuple[str, str] = ("batch", "sequence"), seq_outputs: tuple[str, ...] = (),
                 cuda_graph: bool | None = None, split_lengths: bool = False, call_cost_tokens: int = 0):
        self.model = Path(model)
        self.split_lengths = split_lengths
        self.call_cost_tokens = call_cost_tokens
        self.output_names = list(output_names)
        self.opts = opts
        self.spec = spec
        self.pad_values = dict(pad_values or {})
        self.dims = dims
        self.seq_outputs = set(seq_outputs)
        self.cuda_graph = opts.wants_cuda if cuda_graph is None else cuda_graph
        self.buckets: dict[tuple[int, int], StaticBucket] = {}

    def bucket(self, batch: int, seq: int) -> StaticBucket:
        """The (batch, seq) bucket's bound session, created on first use."""
        key = (batch, seq)
        if key not in self.buckets:
            log.debug("bucket batch=%d seq=%d: static session%s", batch, seq, " + CUDA graph" * self.cuda_graph)
            self.buckets[key] = static_bucket(self.model, self.opts, self.dims, batch, seq, self.output_names,
                                              self.cuda_graph)
            self.cuda_graph = self.buckets[key].cuda_graph
        return self.buckets[key]

    def run_bound(self, batch: int, seq: int) -> None:
        """Run a bucket on whatever its bound input buffers hold: the device path with no host copies."""
        self.bucket(batch, seq).run()

    def _split(self, chunk: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        """The chunk's outputs from one call per sequence bucket, or None when one padded call is as cheap."""
        if not self.split_lengths or self.seq_outputs:
            return None
        lengths = row_lengths(chunk, self.pad_values)
        groups = None if lengths is None else split_by_length(lengths, self.spec, self.call_cost_tokens)
        if groups is None:
            return None
        outs = None
        for g in groups:
            part = {k: v[g.indices, :g.seq] for k, v in chunk.items()}
            got = self.bucket(g.batch, g.seq)(pad_to_bucket(part, g.batch, g.seq, self.pad_values))
            if outs is None:
                outs = [np.empty((len(lengths), *o.shape[1:]), o.dtype) for o in got]
            for o, x in zip(outs, got):
                o[g.indices] = x[:len(g.indices)]
        return outs

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n, length = next(iter(feeds.values())).shape[0], sequence_length(feeds)
        seq = bucket_for(length, self.spec.seq)
        parts = []
        for s in range(0, n, self.spec.batch[-1]):
            chunk = {k: v[s:s + self.spec.batch[-1]] for k, v in feeds.items()}
            rows = next(iter(chunk.values())).shape[0]
            split = self._split(chunk)
            if split is not None:
                parts.append(split)
                continue
            batch = bucket_for(rows, self.spec.batch)
            outs = self.bucket(batch, seq)(pad_to_bucket(chunk, batch, seq, self.pad_values))
            parts.append([o[:rows, :length] if name in self.seq_outputs else o[:rows]
                          for name, o in zip(self.output_names, outs)])
        return [np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i]
                for i in range(len(self.output_names))]
