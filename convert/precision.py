"""Stage 4: precision variants of the FP32 ONNX model — FP16 (GPU) and INT8 dynamic quantization (CPU)."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")

# Ops kept in FP32 on top of onnxruntime's own default block list: their FP16 results overflow or lose too much
# (x**2 and sums of squares in decomposed layer norms exceed 65504; exp/log/sqrt of large values).
FP16_UNSAFE_OPS = ("Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "Sqrt", "Reciprocal", "Exp", "Log")


@dataclass(frozen=True)
class FP16Options:
    keep_io_types: bool = True                      # FP32 inputs/outputs, FP16 inside
    op_block_list: tuple[str, ...] = FP16_UNSAFE_OPS


@dataclass(frozen=True)
class Int8Options:
    per_channel: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # dynamic quantization pays off on GEMMs


def to_fp16(src: Path, dst: Path, opts: FP16Options = FP16Options()) -> dict:
    # onnxruntime.transformers.float16 rather than onnxconverter-common: the latter can emit Cast nodes whose
    # types do not match and the model no longer loads.
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(opts.op_block_list))
    try:
        m16 = convert_float_to_float16(model, keep_io_types=opts.keep_io_types, op_block_list=block)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"FP16 conversion failed ({type(e).__name__}: {e})") from e
    OnnxModel(m16).topological_sort()   # the converter appends its input Casts after their consumers
    onnx.save(m16, str(dst))
    return {"keep_io_types": opts.keep_io_types, "op_block_list": list(opts.op_block_list)}


def to_int8(src: Path, dst: Path, opts: Int8Options = Int8Options()) -> dict:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnxruntime.set_default_logger_severity(3)   # pre-processing sessions warn about every unused initializer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="p2o-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            # symbolic shape inference fails on paddle2onnx graphs; ONNX shape inference is enough here
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=opts.per_channel,
                             reduce_range=opts.reduce_range, op_types_to_quantize=list(opts.op_types))
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"INT8 dynamic quantization failed ({type(e).__name__}: {e})") from e
    import onnx
    quantized = sum(1 for n in onnx.load(str(dst), load_external_data=False).graph.node
                    if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "QLinearMatMul"))
    if quantized == 0:
        log.warning("int8: the model has no %s nodes to quantize; model.int8.onnx computes in FP32 "
                    "(try --int8-op-types with other op types, and let the gate judge)", "/".join(opts.op_types))
    return {"weight_type": "QInt8", "per_channel": opts.per_channel, "reduce_range": opts.reduce_range,
            "op_types": list(opts.op_types), "quantized_nodes": quantized}


def make_variant(precision: str, fp32_path: Path, dst: Path, fp16: FP16Options, int8: Int8Options) -> dict:
    if precision == "fp16":
        return to_fp16(fp32_path, dst, fp16)
    if precision == "int8":
        return to_int8(fp32_path, dst, int8)
    raise ValueError(precision)
