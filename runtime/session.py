"""ONNX Runtime session creation with explicit providers and no silent CPU fallback."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError, DeviceError

log = logging.getLogger(__name__)

_OPT_LEVELS = ("disable", "basic", "extended", "all")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionOptions:
    device: str = "cpu"                  # "cpu" | "gpu"
    device_id: int = 0
    intra_op_threads: int = 0            # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 0
    graph_optimization: str = "all"      # disable | basic | extended | all
    providers: tuple[str, ...] | None = None   # explicit provider list; overrides `device`
    allow_fallback: bool = False         # gpu asked for but unavailable -> CPU with a warning instead of an error
    enable_cuda_graph: bool = False

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise BadInputError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        if self.graph_optimization not in _OPT_LEVELS:
            raise BadInputError(f"graph_optimization must be one of {_OPT_LEVELS}, got {self.graph_optimization!r}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise BadInputError("thread counts must be >= 0 (0 means onnxruntime's default)")


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


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


def _providers_for(opts: SessionOptions) -> list:
    if opts.providers:
        return list(opts.providers)
    if opts.device == "cpu":
        return [CPU]
    cuda_opts = {"device_id": opts.device_id, "use_tf32": "0"}     # full FP32 matmuls: GPU == CPU tokens
    if opts.enable_cuda_graph:
        cuda_opts["enable_cuda_graph"] = "1"
    return [(CUDA, cuda_opts), CPU]


def create_session(model: str | Path | bytes, opts: SessionOptions = SessionOptions()):
    """Create an onnxruntime.InferenceSession; raise DeviceError when CUDA is asked for but not active."""
    import onnxruntime as ort

    wants_cuda = opts.device == "gpu" or (opts.providers and CUDA in opts.providers)
    if wants_cuda and not gpu_available():
        msg = (f"--device gpu asked for, but the CUDA execution provider is not usable here "
               f"(onnxruntime {ort.__version__} providers: {', '.join(available_providers())}). "
               "Install onnxruntime-gpu on a host with an NVIDIA GPU, or use --device cpu")
        if not opts.allow_fallback:
            raise DeviceError(msg)
        log.warning("%s; falling back to CPU because allow_fallback is set", msg)
        opts = SessionOptions(device="cpu", intra_op_threads=opts.intra_op_threads,
                              inter_op_threads=opts.inter_op_threads, graph_optimization=opts.graph_optimization)
        wants_cuda = False

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opts.graph_optimization]
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = opts.inter_op_threads
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, sess_options=so, providers=_providers_for(opts))
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
