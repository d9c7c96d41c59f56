"""Stage 4: precision variants of the FP32 ONNX model — FP16 (GPU), INT8 dynamic quantization (CPU encoders) and
weight-only INT8 / INT4 (onnxruntime's MatMulNBits, for LLMs)."""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "int4")

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
    weight_only: bool = False                       # LLMs: MatMulNBits with 8-bit weights instead of dynamic INT8
    block_size: int = 32                            # weight-only: quantization block along K
    accuracy_level: int | None = 4                  # weight-only: int8 activations in the CPU kernel (see Int4Options)


@dataclass(frozen=True)
class Int4Options:
    block_size: int = 32                            # MatMulNBits block along K (16..256, power of two)
    symmetric: bool = False                         # asymmetric (zero point) fits trained weight ranges better
    accuracy_level: int | None = 4                  # CPU kernel compute type; 4 = int8 activations. On an AVX2 CPU
                                                    # SmolLM2 decodes 1.3x (int4) / 2x (int8) faster than FP32 with
                                                    # it and 7-10x slower without it; perplexity +0.50% / +0.15%
    head_bits: int = 8                              # the LM head (MatMul feeding the first output) keeps 8 bits:
                                                    # 4-bit head cost +41% perplexity on SmolLM2, 8-bit ~0%


def output_matmul(model) -> str | None:
    """Name of the MatMul that (through shape-only ops) produces the graph's first output — an LM head."""
    producer = {o: n for n in model.graph.node for o in n.output}
    name = model.graph.output[0].name
    for _ in range(8):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node.name or None
        if node.op_type not in ("Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Transpose"):
            return None
        name = node.input[0]
    return None


def constants_to_initializers(model) -> int:
    """paddle2onnx stores weights as Constant nodes; quantizers and most tools look for initializers."""
    from onnx import numpy_helper
    g = model.graph
    keep, moved = [], 0
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = numpy_helper.to_array(node.attribute[0].t)
            g.initializer.append(numpy_helper.from_array(t, node.output[0]))
            moved += 1
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return moved


def to_weight_only(src: Path, dst: Path, bits: int, block_size: int, symmetric: bool = True,
                   accuracy_level: int | None = None, head_bits: int | None = None) -> dict:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ConversionError(f"weight-only block size must be a power of two >= 16, got {block_size}")
    model = onnx.load(str(src))
    constants_to_initializers(model)
    head = output_matmul(model) if head_bits and head_bits != bits else None
    try:
        if head:       # first the head at head_bits, then everything else at bits
            q = MatMulNBitsQuantizer(model, bits=head_bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, nodes_to_include=[head],
                                     op_types_to_quantize=("MatMul",))
            q.process()
            model = q.model.model
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                 accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",),
                                 nodes_to_exclude=[head] if head else None)
        q.process()
        out = q.model.model
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{bits}-bit weight-only quantization failed ({type(e).__name__}: {e})") from e
    quantized = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    if quantized == 0:
        raise ConversionError(f"{bits}-bit weight-only quantization found no MatMul with a constant weight")
    onnx.save(out, str(dst))
    return {"method": "MatMulNBits", "bits": bits, "block_size": block_size, "symmetric": symmetric,
            "accuracy_level": accuracy_level, "quantized_nodes": quantized,
            "head": {"node": head, "bits": head_bits} if head else None}


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


def make_variant(precision: str, fp32_path: Path, dst: Path, fp16: FP16Options, int8: Int8Options,
                 int4: Int4Options = Int4Options()) -> dict:
    if precision == "fp16":
        return to_fp16(fp32_path, dst, fp16)
    if precision == "int8" and int8.weight_only:
        return to_weight_only(fp32_path, dst, 8, int8.block_size, True, int8.accuracy_level)
    if precision == "int8":
        return to_int8(fp32_path, dst, int8)
    if precision == "int4":
        return to_weight_only(fp32_path, dst, 4, int4.block_size, int4.symmetric, int4.accuracy_level,
                              int4.head_bits)
    raise ValueError(precision)
