"""Stage 4: precision variants of the FP32 ONNX model — FP16 (GPU), INT8 dynamic quantization (CPU encoders) and
weight-only INT8 / INT4 (onnxruntime's MatMulNBits, for LLMs)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, NothingToQuantizeError
from .export import save_onnx
from .graph import outputs_from_nodes
from .repair._shapes import all_graphs

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
    # 7-bit weights: a CPU without VNNI (AVX2, AVX-512 without VNNI) multiplies u8 x s8 pairs with vpmaddubsw, whose
    # 16-bit pair sums saturate at full range (a tiny BERT's logits off by rel. RMSE 0.70 on AVX2 vs 0.02 with 7 bits;
    # VNNI never saturates). With 7 bits no host saturates, so one bundle's INT8 results are the same on every ISA.
    reduce_range: bool = True
    op_types: tuple[str, ...] = ("MatMul", "Gemm")  # dynamic quantization pays off on GEMMs
    weight_only: bool = False                       # LLMs: MatMulNBits with 8-bit weights instead of dynamic INT8
    block_size: int = 32                            # weight-only: quantization block along K
    accuracy_level: int | None = 4                  # weight-only: int8 activations in the CPU kernel (see Int4Options)


@dataclass(frozen=True)
class Int4Options:
    block_size: int = 32                            # MatMulNBits block along K (16..256, power of two)
    accuracy_level: int | None = 4                  # CPU kernel compute type; 4 = int8 activations (int8 weights:
                                                    # SmolLM2 decodes 1.5x faster than FP32 on an AVX2 CPU; int4's
                                                    # float zero points have no such path: 0.38x). Perplexity vs
                                                    # FP32: int8 +0.32%, int4 -0.07% (benchmarks/results/llm)
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


def rtn_blocks(w: np.ndarray, bits: int, block: int):
    """Round-to-nearest, asymmetric, per block of `block` rows of K, for one [K, N] weight.
    -> (packed uint8 [N, k_blocks, block * bits / 8], scales [N, k_blocks], zero points).
    4 bits: float zero points (min-max grid kept exactly: a model that already was 4-bit, like SmolLM2's Q4_1
    GGUF, loses nothing); 8 bits: uint8 zero points (what onnxruntime's CPU kernel takes at 8 bits)."""
    k, n = w.shape
    kb = -(-k // block)
    padded = np.zeros((kb * block, n), np.float32)
    padded[:k] = w
    x = padded.T.reshape(n, kb, block)
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    if bits == 8:
        zp = np.clip(np.rint(-lo / scale), 0, levels)
        q = np.clip(np.rint(x / scale + zp), 0, levels).astype(np.uint8)
        zp = zp[..., 0].astype(np.uint8)
    else:
        q = np.clip(np.rint((x - lo) / scale), 0, levels).astype(np.uint8)
        zp = (-lo / scale)[..., 0]
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else q
    return packed, scale[..., 0], zp


def quantize_matmuls(model, bits: int, block_size: int, accuracy_level: int | None,
                     head: str | None = None, head_bits: int | None = None):
    """Every MatMul with a constant weight -> com.microsoft MatMulNBits at `bits` (the MatMul named `head` at
    `head_bits`). -> (model, number of quantized nodes). Written by hand rather than onnxruntime's
    MatMulNBitsQuantizer: that one rounds zero points to integers, which shifts every 4-bit block (SmolLM2 logits
    cosine 0.16 against FP32), and its include list cannot single out the head."""
    from onnx import helper, numpy_helper

    if bits not in (4, 8) or (head_bits or bits) not in (4, 8):
        raise ConversionError(f"weight-only quantization supports 4 or 8 bits, got {bits}/{head_bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConversionError(f"weight-only block size must be a power of two >= 16, got {block_size}")
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    uses = {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    nodes, drop, quantized = [], set(), 0
    for node in g.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        t = inits.get(w_name) if w_name else None
        w = numpy_helper.to_array(t) if t is not None else None
        if w is None or w.ndim != 2 or w.dtype not in (np.float32, np.float16):
            nodes.append(node)
            continue
        b = head_bits if (head and node.name == head and head_bits) else bits
        packed, scale, zp = rtn_blocks(w.astype(np.float32), b, block_size)
        stem = f"{node.name or w_name}.q{b}"
        g.initializer.extend([numpy_helper.from_array(packed, stem + ".weight"),
                              numpy_helper.from_array(scale.astype(w.dtype), stem + ".scales"),
                              numpy_helper.from_array(zp if zp.dtype == np.uint8 else zp.astype(w.dtype),
                                                      stem + ".zero_points")])
        if uses.get(w_name) == 1:
            drop.add(w_name)
        attrs = {"K": int(w.shape[0]), "N": int(w.shape[1]), "bits": b, "block_size": block_size}
        if accuracy_level is not None:
            attrs["accuracy_level"] = accuracy_level
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], stem + ".weight", stem + ".scales",
                                                      stem + ".zero_points"], list(node.output),
                                      name=f"{node.name}_Q{b}", domain="com.microsoft", **attrs))
        quantized += 1
    if quantized == 0:
        raise ConversionError(f"{bits}-bit weight-only quantization found no MatMul with a constant weight")
    keep = [t for t in g.initializer if t.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, quantized


def nbits_of(model) -> dict[str, int]:
    """MatMulNBits node name -> its bits attribute (what the quantizer actually wrote)."""
    return {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node
            if n.op_type == "MatMulNBits"}


def to_weight_only(src: Path, dst: Path, bits: int, block_size: int, accuracy_level: int | None = None,
                   head_bits: int | None = None) -> dict:
    import onnx

    model = onnx.load(str(src))
    constants_to_initializers(model)
    head = output_matmul(model) if head_bits and head_bits != bits else None
    out, quantized = quantize_matmuls(model, bits, block_size, accuracy_level, head, head_bits)
    save_onnx(out, dst)                 # external data past 2 GiB
    return {"method": "MatMulNBits (RTN, asymmetric)", "bits": bits, "block_size": block_size,
            "zero_points": "float" if bits == 4 else "uint8",
            "accuracy_level": accuracy_level, "quantized_nodes": quantized,
            "head": {"node": head, "bits": head_bits} if head else None}


def fused_types(model) -> bool:
    """Give every tensor of a fused graph its element type (value_info, shapes left out) from onnxruntime's symbolic
    shape inference, which knows the com.microsoft ops the fusion pass writes; True when it did. The FP16 converter
    types tensors with ONNX shape inference otherwise, which stops at the first com.microsoft op: it then put no
    Cast around the ops it keeps in FP32 downstream (a SimCSE head's Max(norm, eps) got an FP16 norm and an FP32
    eps, and onnxruntime refused the model). False (nothing changed) for a graph without such ops, or where the
    inference fails (the converter's own typing then, and the load check after it)."""
    import onnx
    if not any(n.domain == "com.microsoft" for n in model.graph.node):
        return False
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
    except Exception as e:  # noqa: BLE001 - its failures are of any type
        log.info("fp16: symbolic shape inference failed (%s: %s); typing with ONNX shape inference",
                 type(e).__name__, e)
        return False
    if inferred is None:
        return False
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    for vi in inferred.graph.value_info:
        if vi.name and vi.name not in known and vi.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED:
            typed = onnx.helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, None)
            model.graph.value_info.append(typed)
    return True


def to_fp16(src: Path, dst: Path, opts: FP16Options = FP16Options()) -> dict:
    # onnxruntime.transformers.float16 rather than onnxconverter-common: the latter can emit Cast nodes whose
    # types do not match and the model no longer loads.
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from .export import EXTERNAL_DATA_BYTES, model_bytes
    # past protobuf's 2 GiB the converter gets the path: it then infers shapes with infer_shapes_path, where
    # infer_shapes would serialize the whole proto
    model = str(src) if model_bytes(src) > EXTERNAL_DATA_BYTES else onnx.load(str(src))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(opts.op_block_list))
    if not isinstance(model, str):
        outputs_from_nodes(model.graph)
    typed = not isinstance(model, str) and fused_types(model)
    try:
        m16 = convert_float_to_float16(model, keep_io_types=opts.keep_io_types, op_block_list=block,
                                       disable_shape_infer=typed)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"FP16 conversion failed ({type(e).__name__}: {e})") from e
    dropped = drop_cast_round_trips(m16.graph, _float32_tensors(m16))
    if dropped:
        log.info("fp16: %d float32 -> float16 -> float32 Cast round trip(s) between blocked ops removed", dropped)
    OnnxModel(m16).topological_sort()   # the converter appends its input Casts after their consumers
    save_onnx(m16, dst)
    return {"keep_io_types": opts.keep_io_types, "op_block_list": list(opts.op_block_list)}


def _float32_tensors(model) -> set[str]:
    """Names of the float32 tensors of the main graph that can be told without running it: initializers, inputs,
    Cast(to=FLOAT) outputs and what onnx's type inference finds (none where it cannot run: a model past 2 GiB)."""
    import onnx
    from onnx import TensorProto
    g = model.graph
    out = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    out |= {v.name for v in g.input if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    out |= {n.output[0] for n in g.node if n.op_type == "Cast"
            and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)}
    try:
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - too large to serialize, or an op it cannot type: fewer round trips dropped
        return out
    return out | {v.name for v in typed.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}


def drop_cast_round_trips(graph, float32: set[str]) -> int:
    """Cast(to=FLOAT) of a Cast(to=FLOAT16) of a float32 tensor -> that tensor. onnxruntime's float16 converter
    casts around each blocked op on its own, so a tensor between two blocked ops (a decomposed LayerNorm's Pow ->
    ReduceMean) went through float16 and back: a ConvNeXt's Pow of 3.1e5 became inf, which onnxruntime's CPU
    provider hid by dropping the pair and a native-FP16 provider would not. Only where the first Cast's input is
    known float32 (types from `float32`); the casts' outputs that are graph outputs or read by a subgraph stay.
    -> the number of round trips removed."""
    from onnx import TensorProto

    def to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None)
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    inner = {x for sub in list(all_graphs(graph))[1:] for n in sub.node for x in n.input}   # read by a subgraph
    rename = {}
    for n in graph.node:
        if n.op_type != "Cast" or to(n) != TensorProto.FLOAT or n.output[0] in outputs | inner:
            continue
        first = producer.get(n.input[0])
        if first is not None and first.op_type == "Cast" and to(first) == TensorProto.FLOAT16 \
                and first.input[0] in float32:
            rename[n.output[0]] = first.input[0]
    if not rename:
        return 0
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    read = {x for n in graph.node for x in n.input} | outputs | inner
    keep = [n for n in graph.node if n.op_type != "Cast" or n.output[0] in read]    # the pairs' casts now unread
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def check_quantizable(model, opts: Int8Options) -> None:
    """Before any quantization: dynamic INT8 rewrites only opts.op_types nodes with a constant weight (onnxruntime's
    quantizer leaves a product of two activations in FP32); a graph with none would come out as its FP32 self under
    the name int8 (a conv net at the default MatMul/Gemm; a segmenter whose MatMuls are attention products)."""
    from collections import Counter
    if opts.weight_only:
        return
    graphs = list(all_graphs(model.graph))
    consts = {t.name for g in graphs for t in g.initializer}   # and what is computed from constants alone
    nodes = [n for g in graphs for n in g.node]                 # (Transpose(W), Cast(W)): the pre-processing
    for n in nodes:                                             # before quantization folds those into weights
        if n.op_type == "Constant" or (n.input and all(i in consts or not i for i in n.input)):
            consts.update(n.output)
    ops = Counter(n.op_type for n in model.graph.node)
    weighted = lambda ns: [n for n in ns if n.op_type in opts.op_types and any(i in consts for i in n.input)]  # noqa
    if weighted(model.graph.node):
        return
    kinds = "/".join(opts.op_types)
    inner = weighted(nodes)
    if inner:                                   # onnxruntime's dynamic INT8 leaves Loop/If bodies in FP32 (its
        raise NothingToQuantizeError(           # EnableSubgraph writes an invalid graph for paddle2onnx's loops)
            f"int8: this model's {len(inner)} {kinds} node(s) with a constant weight are all inside Loop/If bodies "
            "(a decoding loop), which onnxruntime's dynamic INT8 leaves in FP32, so model.int8.onnx would be the "
            "FP32 model under another name. Drop int8 from --precision, or name op types the main graph has with "
            "--int8-op-types (e.g. Conv; the gate judges the result)")
    found = sum(ops[t] for t in opts.op_types)
    moves = {"Identity", "Reshape", "Cast", "Shape", "Constant", "Squeeze", "Unsqueeze", "Concat", "Slice",
             "Gather", "Transpose", "Expand"}        # paddle2onnx's plumbing: no computing op to name
    top = ", ".join(f"{t} {c}" for t, c in [tc for tc in ops.most_common() if tc[0] not in moves][:4])
    raise NothingToQuantizeError(
        f"int8: dynamic INT8 quantizes {kinds} nodes with a constant weight and this model has none "
        f"({f'its {found} {kinds} multiply activations' if found else f'its most frequent ops: {top}'}), so "
        "model.int8.onnx would be the FP32 model under another name. Drop int8 from --precision, or name op types "
        "it has with --int8-op-types (e.g. Conv; the gate judges the result)")


def to_int8(src: Path, dst: Path, opts: Int8Options = Int8Options()) -> dict:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnxruntime.set_default_logger_severity(3)   # pre-processing sessions warn about every unused initializer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import EXTERNAL_DATA_BYTES, data_file, model_bytes
    from .paddle_proc import workdir
    # past protobuf's 2 GiB the intermediate and the result keep their weights in `NAME.data` beside them (the
    # result is about a quarter of the source, so it is external only when its source was past 4x the limit); a
    # source with external data keeps it in the intermediate too (its optimizer pass would look for the source's)
    size = model_bytes(src)
    large_pre = size > EXTERNAL_DATA_BYTES or data_file(src).is_file()
    large_out = size > 4 * EXTERNAL_DATA_BYTES
    data_file(dst).unlink(missing_ok=True)
    with workdir("int8") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            # symbolic shape inference fails on paddle2onnx graphs; ONNX shape inference is enough here
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=large_pre,
                              all_tensors_to_one_file=True, external_data_location="pre.onnx.data")
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=opts.per_channel,
                             reduce_range=opts.reduce_range, op_types_to_quantize=list(opts.op_types),
                             use_external_data_format=large_out,
                             # fused graphs: contrib-op outputs have no inferred type; they are float
                             extra_options={"DefaultTensorType": 1})
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"INT8 dynamic quantization failed ({type(e).__name__}: {e})") from e
    import onnx
    from collections import Counter

    from .graph import sort_nodes
    written = onnx.load(str(dst), load_external_data=False)
    if any(n.op_type in ("If", "Loop", "Scan") for n in written.graph.node):
        written = onnx.load(str(dst))
        if sort_nodes(written.graph):   # the quantizer's order ignores what If/Loop bodies read from outside
            save_onnx(written, dst)
    kinds = Counter(n.op_type for g in all_graphs(written.graph) for n in g.node)
    quantized = sum(kinds[k] for k in ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "QLinearMatMul"))
    if quantized == 0:                  # check_quantizable found some, the quantizer took none (a QDQ graph)
        raise NothingToQuantizeError(
            f"int8: onnxruntime's dynamic INT8 quantized none of this model's {'/'.join(opts.op_types)} nodes, so "
            "model.int8.onnx would be the FP32 model under another name. Drop int8 from --precision, or name other "
            "op types with --int8-op-types (the gate judges the result)")
    float_convs = kinds["Conv"]
    if 0 < quantized <= 2 and float_convs >= 10 * quantized:     # a conv net whose only GEMM is its head
        log.warning("int8: only %d weight product(s) quantized; the %d convolutions stay FP32 (--int8-op-types "
                    "%s): model.int8.onnx computes almost as the FP32 model does and will not be faster; "
                    "--int8-op-types MatMul,Gemm,Conv quantizes the convolutions too (the gate judges the result)",
                    quantized, float_convs, ",".join(opts.op_types))
    convs = kinds["ConvInteger"]
    if convs:               # onnxruntime's dynamic quantizer: ConvInteger weights per tensor whatever per_channel says
        log.warning("int8: %d convolutions quantized as ConvInteger: per tensor (onnxruntime's dynamic quantizer "
                    "has no per-channel ConvInteger%s), and onnxruntime's ConvInteger kernels are often slower "
                    "than its FP32 convolutions on CPU: time both before choosing int8", convs,
                    ", so --int8-per-channel applies to the MatMul/Gemm weights only" if opts.per_channel else "")
    return {"weight_type": "QInt8", "per_channel": opts.per_channel and quantized > convs,
            "per_tensor_convolutions": convs, "reduce_range": opts.reduce_range,
            "op_types": list(opts.op_types), "quantized_nodes": quantized}


def make_variant(precision: str, fp32_path: Path, dst: Path, fp16: FP16Options, int8: Int8Options,
                 int4: Int4Options = Int4Options()) -> dict:
    if precision == "fp16":
        return to_fp16(fp32_path, dst, fp16)
    if precision == "int8" and int8.weight_only:
        return to_weight_only(fp32_path, dst, 8, int8.block_size, int8.accuracy_level)
    if precision == "int8":
        return to_int8(fp32_path, dst, int8)
    if precision == "int4":
        return to_weight_only(fp32_path, dst, 4, int4.block_size, int4.accuracy_level,
                              int4.head_bits)
    raise ValueError(precision)
