"""The one session factory: every SessionOptions field reaches onnxruntime (read back from the built session or the
provider list it is given); every bad option is one BadInputError naming it."""
import logging

import numpy as np
import pytest

from paddle2ort.runtime.errors import BadInputError, DeviceError
from paddle2ort.runtime.session import (CPU, CUDA, SessionOptions, create_session, gpu_available, providers_for)

pytestmark = pytest.mark.unit


def tiny_model() -> bytes:
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_session_options_reach_onnxruntime():
    import onnxruntime as ort
    opts = SessionOptions(intra_op_threads=2, inter_op_threads=3, execution_mode="parallel",
                          graph_optimization="basic", log_severity=2, providers=(CPU,))
    sess = create_session(tiny_model(), opts)
    so = sess.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level) == (2, 3, 2)
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert sess.get_providers() == [CPU]
    assert sess.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]
    so = create_session(tiny_model()).get_session_options()                 # defaults
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for level, name in (("disable", "ORT_DISABLE_ALL"), ("extended", "ORT_ENABLE_EXTENDED")):
        so = create_session(tiny_model(), SessionOptions(graph_optimization=level)).get_session_options()
        assert so.graph_optimization_level.name == name


def test_cuda_provider_options_carry_every_cuda_field():
    opts = SessionOptions(device="gpu", device_id=1, enable_cuda_graph=True, use_tf32=True, user_compute_stream=4096,
                          cuda_options={"sdpa_kernel": 1, "gpu_mem_limit": 2 ** 30})
    (name, cuda), cpu = providers_for(opts)
    assert name == CUDA and cpu == CPU
    assert cuda == {"device_id": "1", "use_tf32": "1", "enable_cuda_graph": "1", "has_user_compute_stream": "1",
                    "user_compute_stream": "4096", "sdpa_kernel": "1", "gpu_mem_limit": str(2 ** 30)}
    plain = dict(providers_for(SessionOptions(device="gpu"))[0][1])
    assert plain == {"device_id": "0", "use_tf32": "0"}                  # FP32 matmuls by default: GPU == CPU
    assert providers_for(SessionOptions(providers=(CUDA,)))[0][0] == CUDA   # explicit providers win over device
    assert providers_for(SessionOptions()) == [CPU]


@pytest.mark.skipif(gpu_available(), reason="checks the no-GPU path")
def test_gpu_without_cuda_is_an_error_or_an_explicit_fallback(caplog):
    with pytest.raises(DeviceError, match="use --device cpu"):
        create_session(tiny_model(), SessionOptions(device="gpu"))
    with pytest.raises(DeviceError):
        create_session(tiny_model(), SessionOptions(providers=(CUDA, CPU)))
    with caplog.at_level(logging.WARNING):
        sess = create_session(tiny_model(), SessionOptions(device="gpu", allow_fallback=True, intra_op_threads=1))
    assert sess.get_providers() == [CPU] and "falling back to CPU" in caplog.text
    assert sess.get_session_options().intra_op_num_threads == 1                # the other options survive


@pytest.mark.skipif(not gpu_available(), reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_options_reach_the_provider():
    sess = create_session(tiny_model(), SessionOptions(device="gpu", cuda_options={"sdpa_kernel": 1}))
    got = sess.get_provider_options()[CUDA]
    assert got["use_tf32"] == "0" and got["sdpa_kernel"] == "1" and got["device_id"] == "0"


@pytest.mark.parametrize("kw,msg", [
    ({"device": "tpu"}, "device"), ({"graph_optimization": "max"}, "graph_optimization"),
    ({"execution_mode": "async"}, "execution_mode"), ({"intra_op_threads": -1}, "intra_op_threads"),
    ({"inter_op_threads": 1.5}, "inter_op_threads"), ({"device_id": True}, "device_id"),
    ({"providers": ("FooExecutionProvider",)}, "unknown execution provider"), ({"providers": ()}, "providers"),
    ({"cuda_options": {"bogus": 1}}, "unknown CUDA provider option 'bogus'"),
    ({"cuda_options": {"enable_cuda_graph": "1"}}, "SessionOptions.enable_cuda_graph"),
    ({"user_compute_stream": -5}, "user_compute_stream"), ({"log_severity": 9}, "log_severity"),
    ({"intra_op_threads": 99999}, "intra_op_threads=99999 is more than"), ({"inter_op_threads": 10**6}, "at most")])
def test_bad_options_are_one_clear_error(kw, msg):
    with pytest.raises(BadInputError, match=msg):
        SessionOptions(**kw)


def test_thread_counts_up_to_the_cap_are_kept():
    """Oversubscription is the user's choice up to the cap; only counts past it (a typo that would start thousands of
    threads and hang the host) are refused."""
    from paddle2ort.runtime.session import max_threads
    assert SessionOptions(intra_op_threads=max_threads()).intra_op_threads == max_threads() >= 64


def test_spinning_and_disabled_optimizers_reach_onnxruntime():
    so = create_session(tiny_model(), SessionOptions(intra_op_spinning=False)).get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert SessionOptions(disabled_optimizers=["SkipLayerNormFusion"]).disabled_optimizers == ("SkipLayerNormFusion",)
    sess = create_session(tiny_model(), SessionOptions(disabled_optimizers=("SkipLayerNormFusion",)))
    assert sess.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]
