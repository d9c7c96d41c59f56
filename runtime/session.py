"""ONNX Runtime session creation with explicit providers and no silent CPU fallback."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import BadInputError, DeviceError

log = logging.getLogger(__name__)

_OPT_LEVELS = ("disable", "basic", "extended", "all")
OPT_LEVELS = _OPT_LEVELS                     # onnxruntime's graph optimization levels, lowest first
_EXEC_MODES = ("sequential", "parallel")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# onnxruntime's CUDA provider options (those it accepts as strings; it fails on any other name)
CUDA_OPTION_NAMES = frozenset({
    "device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search", "do_copy_in_default_stream",
    "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d", "enable_cuda_graph",
    "enable_skip_layer_norm_strict_mode", "use_tf32", "prefer_nhwc", "use_ep_level_unified_stream",
    "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms", "sdpa_kernel",
    "fuse_conv_bias", "gpu_external_alloc", "gpu_external_free", "gpu_external_empty_cache"})
_SET_ELSEWHERE = {"device_id": "device_id", "enable_cuda_graph": "enable_cuda_graph", "use_tf32": "use_tf32",
                  "user_compute_stream": "user_compute_stream", "has_user_compute_stream": "user_compute_stream"}


@dataclass(frozen=True)
class SessionOptions:
    """Everything that shapes an onnxruntime session; create_session honours every field."""
    device: str = "cpu"                  # "cpu" | "gpu"
    device_id: int = 0
    intra_op_threads: int = 0            # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 0            # used by execution_mode "parallel"
    execution_mode: str = "sequential"   # sequential | parallel (independent branches on inter_op_threads)
    intra_op_spinning: bool | None = None   # CPU threads busy-wait between ops (None: onnxruntime's default, on);
    # off is faster on a host shared with other jobs (benchmarks/results/encoder/)
    disabled_optimizers: tuple[str, ...] = ()   # onnxruntime graph optimizers not to run, e.g. ("SkipLayerNormFusion",)
    graph_optimization: str = "all"      # disable | basic | extended | all
    providers: tuple[str, ...] | None = None   # explicit provider names, in priority order; overrides `device`
    allow_fallback: bool = False         # CUDA asked for but unavailable -> CPU with a warning instead of an error
    enable_cuda_graph: bool = False      # CUDA: capture the graph once, replay it (fixed-address IO binding needed)
    use_tf32: bool = False               # CUDA: TF32 matmuls (off: FP32 graphs compute as on the CPU)
    cuda_options: tuple[tuple[str, str], ...] = ()  # more CUDA provider options, e.g. (("sdpa_kernel", "1"),)
    user_compute_stream: int | None = None          # CUDA: run on this stream (a cudaStream_t address)
    log_severity: int = 3                # onnxruntime's log level: 0 verbose .. 4 fatal
    free_dimensions: tuple[tuple[str, int], ...] = ()   # symbolic dims fixed, e.g. (("batch", 8),): static shapes
    profile_prefix: str | None = None    # onnxruntime's profiler on: a JSON trace at PREFIX_<time>.json (end_profiling)
    external_data_dir: str | None = None  # a model given as bytes: the folder its external-data locations are in

    def __post_init__(self):
        if isinstance(self.cuda_options, dict):
            object.__setattr__(self, "cuda_options", tuple(sorted(self.cuda_options.items())))
        object.__setattr__(self, "disabled_optimizers", tuple(self.disabled_optimizers))
        if self.providers is not None and not isinstance(self.providers, tuple):
            object.__setattr__(self, "providers", tuple(self.providers))
        if self.device not in ("cpu", "gpu"):
            raise BadInputError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise BadInputError(f"graph_optimization must be one of {_OPT_LEVELS}, got {self.graph_optimization!r}")
        if self.execution_mode not in _EXEC_MODES:
            raise BadInputError(f"execution_mode must be one of {_EXEC_MODES}, got {self.execution_mode!r}")
        for name in ("device_id", "intra_op_threads", "inter_op_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInputError(f"{name} must be an integer >= 0 (threads: 0 means onnxruntime's default), "
                                    f"got {v!r}")
            if name != "device_id" and v > max_threads():
                raise BadInputError(f"{name}={v} is more than this host takes ({max_threads()}: {THREADS_PER_CPU} "
                                    f"per CPU, at least 64; it has {os.cpu_count()} CPUs): threads past the cores only "
                                    f"wait on each other, and thousands exhaust the host's thread limit; pass at most "
                                    f"{max_threads()} (0: onnxruntime's default, one per physical core)")
        if not isinstance(self.log_severity, int) or not 0 <= self.log_severity <= 4:
            raise BadInputError(f"log_severity must be in 0..4, got {self.log_severity!r}")
        if not all(isinstance(n, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
                   for n, v in self.free_dimensions):
            raise BadInputError(f"free_dimensions must be (name, size > 0) pairs, got {self.free_dimensions!r}")
        if self.user_compute_stream is not None and (not isinstance(self.user_compute_stream, int)
                                                     or self.user_compute_stream <= 0):
            raise BadInputError(f"user_compute_stream must be a stream address (int > 0), got "
                                f"{self.user_compute_stream!r}")
        for item in self.cuda_options:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise BadInputError(f"cuda_options must be (name, value) pairs, got {item!r}")
            if item[0] in _SET_ELSEWHERE:
                raise BadInputError(f"cuda option {item[0]!r} has its own field: use SessionOptions."
                                    f"{_SET_ELSEWHERE[item[0]]}")
            if item[0] not in CUDA_OPTION_NAMES:
                raise BadInputError(f"unknown CUDA provider option {item[0]!r}; known: "
                                    f"{', '.join(sorted(CUDA_OPTION_NAMES))}")
        if self.providers is not None:
            if not self.providers or not all(isinstance(p, str) for p in self.providers):
                raise BadInputError(f"providers must be a non-empty list of provider names, got {self.providers!r}")
            import onnxruntime as ort
            unknown = [p for p in self.providers if p not in ort.get_all_providers()]
            if unknown:
                raise BadInputError(f"unknown execution provider(s) {unknown}; onnxruntime knows "
                                    f"{', '.join(ort.get_all_providers())}")

    @property
    def wants_cuda(self) -> bool:
        return CUDA in self.providers if self.providers else self.device == "gpu"


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


THREADS_PER_CPU = 8          # a thread count past this many per logical CPU is a typo, not a setting


def max_threads() -> int:
    """The most threads a session option accepts on this host (generous: oversubscription is the user's choice)."""
    return max(64, THREADS_PER_CPU * (os.cpu_count() or 1))


def gpu_available() -> bool:
    """True when onnxruntime has the CUDA provider and a CUDA device is visible."""
    if CUDA not in available_providers():
        return False
    try:
        import ctypes
        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def cuda_provider_options(opts: SessionOptions) -> dict[str, str]:
    """The CUDA provider's options for `opts` (all strings, as onnxruntime takes them)."""
    out = {"device_id": str(opts.device_id), "use_tf32": "1" if opts.use_tf32 else "0"}
    if opts.enable_cuda_graph:
        out["enable_cuda_graph"] = "1"
    if opts.user_compute_stream is not None:
        out.update(has_user_compute_stream="1", user_compute_stream=str(opts.user_compute_stream))
    out.update({k: str(v) for k, v in opts.cuda_options})
    return out


def providers_for(opts: SessionOptions) -> list:
    """onnxruntime's `providers` argument: names with their options, in priority order."""
    names = list(opts.providers) if opts.providers else ([CUDA, CPU] if opts.device == "gpu" else [CPU])
    return [(n, cuda_provider_options(opts)) if n == CUDA else n for n in names]


def ort_session_options(opts: SessionOptions):
    """onnxruntime.SessionOptions for `opts`."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opts.graph_optimization]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if opts.execution_mode == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = opts.inter_op_threads
    if opts.intra_op_spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.intra_op_spinning else "0")
    so.log_severity_level = opts.log_severity
    for name, size in opts.free_dimensions:
        so.add_free_dimension_override_by_name(name, size)
    if opts.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(opts.profile_prefix)
    if opts.external_data_dir:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(opts.external_data_dir))
    return so


def create_session(model: str | Path | bytes, opts: SessionOptions = SessionOptions()):
    """The one place an onnxruntime.InferenceSession is built. Raises DeviceError when CUDA is asked for but not
    active (or falls back to CPU with a warning when allow_fallback is set)."""
    import onnxruntime as ort

    wants_cuda = opts.wants_cuda
    if wants_cuda and not gpu_available():
        msg = (f"--device gpu asked for, but the CUDA execution provider is not usable here "
               f"(onnxruntime {ort.__version__} providers: {', '.join(available_providers())}). "
               "Install onnxruntime-gpu on a host with an NVIDIA GPU, or use --device cpu")
        if not opts.allow_fallback:
            raise DeviceError(msg)
        log.warning("%s; falling back to CPU because allow_fallback is set", msg)
        rest = tuple(p for p in opts.providers or () if p != CUDA)
        opts = replace(opts, device="cpu", providers=rest or None)
        wants_cuda = False
    src = model if isinstance(model, bytes) else str(model)
    try:
        sess = ort.InferenceSession(src, sess_options=ort_session_options(opts), providers=providers_for(opts),
                                    disabled_optimizers=list(opts.disabled_optimizers) or None)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own pybind error types
        if isinstance(model, bytes) or type(e).__name__ not in ("InvalidProtobuf", "InvalidGraph", "NoSuchFile"):
            raise
        from .errors import BundleError
        raise BundleError(f"onnxruntime cannot load the model file {model} ({type(e).__name__}: "
                          f"{str(e).strip()[:300]}); it is not a valid ONNX model: re-convert the bundle") from e
    active = sess.get_providers()
    if wants_cuda and (not active or active[0] != CUDA):
        msg = f"CUDA provider requested but the session runs on {active}: CUDA libraries failed to load"
        if not opts.allow_fallback:
            raise DeviceError(msg + "; check the CUDA/cuDNN install or use --device cpu")
        log.warning("%s; continuing on CPU because allow_fallback is set", msg)
    return sess


class Runner:
    """Runs a session; on CUDA every input and output goes through IO binding.

    Inputs are copied to the device once per call (one H2D per tensor, no staging through onnxruntime's
    feed path), outputs are allocated on the device by onnxruntime and copied back only when asked for.
    """

    def __init__(self, session, output_names: list[str] | None = None, device_id: int = 0):
        self.session = session
        self.output_names = output_names or [o.name for o in session.get_outputs()]
        self.on_cuda = session.get_providers()[0] == CUDA
        self.device_id = device_id

    def __call__(self, feeds: dict) -> list:
        if not self.on_cuda:
            return self.session.run(self.output_names, feeds)
        import onnxruntime as ort
        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self.device_id))
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
