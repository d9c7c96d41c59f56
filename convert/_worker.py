"""Paddle-side work, run in a child process: `python -m paddle2ort.convert._worker TASK IN.json OUT.json`.

paddle2onnx and Paddle abort the whole process (SIGABRT) on C++ errors, so every call into them happens here;
the parent reads OUT.json, or reports the crash with the tail of this process's log.
Tasks: inspect (program, specs, operator support), reference (Paddle Inference outputs), export (paddle2onnx),
bench (Paddle Inference CPU timing as a benchmark peer), parameters (the weights Paddle loads, for the FP32 check).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import traceback
from collections import Counter

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"   # paddle2onnx must never pip-install at run time

from paddle2ort.convert.paddle_worker_limits import RESOURCE_ERRORS, math_threads  # noqa: E402
from paddle2ort.runtime.files import atomic_path, atomic_write  # noqa: E402  (after the env set-up)

log = logging.getLogger("paddle2ort.worker")

# paddle2onnx 2.1.0 maps PIR op names onto its mapper names before looking them up
# (ModelExporter's convert_pir_op_name); mirrored here so the support check sees what the exporter sees.
PIR_TO_MAPPER = {
    "matmul": "matmul_v2", "batch_norm_": "batch_norm", "topk": "top_k_v2",
    "repeat_interleave_with_tensor_index": "repeat_interleave", "expand": "expand_v2",
    "assign_value_": "assign_value", "flatten": "flatten_contiguous_range", "unsqueeze": "unsqueeze2",
    "arange": "range", "argmax": "arg_max", "floor_divide": "elementwise_floordiv",
    "subtract": "elementwise_sub", "multiply": "elementwise_mul", "divide": "elementwise_div",
    "remainder": "elementwise_mod", "minimum": "elementwise_min", "maximum": "elementwise_max",
    "min": "reduce_min", "max": "reduce_max", "mean": "reduce_mean", "sum": "reduce_sum", "prod": "reduce_prod",
    "any": "reduce_any", "all": "reduce_all", "numel": "size", "hardswish": "hard_swish",
    "hardsigmoid": "hard_sigmoid", "add": "elementwise_add", "add_n": "sum", "grid_sample": "grid_sampler",
    "nonzero": "where_index",
}
# Program plumbing and control flow the exporter handles itself (not through an op mapper).
STRUCTURAL = {"pd_op.data", "pd_op.feed", "pd_op.fetch", "builtin.parameter", "builtin.shadow_output",
              "builtin.constant", "builtin.set_parameter", "pd_op.if", "pd_op.while", "cf.yield",
              "cf.tuple_push", "cf.tuple_pop", "cf.stack_create"}
# Ops that keep an integer tensor's values, followed when looking for the embedding an id input feeds.
PASS_THROUGH = {"pd_op.cast", "pd_op.reshape", "pd_op.unsqueeze", "pd_op.squeeze", "pd_op.assign"}
# ops whose first result holds some of their input's ids, unchanged (an id bound found past them holds before them)
ID_MOVES = {"pd_op.flatten", "pd_op.transpose", "pd_op.slice", "pd_op.expand", "pd_op.tile", "pd_op.strided_slice",
            "builtin.combine", "pd_op.concat", "pd_op.stack"}   # slots concatenated before one shared embedding


def _mapper_name(op_name: str) -> str:
    if op_name.startswith("pd_op."):
        name = op_name[len("pd_op."):]
    elif op_name.startswith("builtin."):
        name = "builtin_" + op_name[len("builtin."):]
    else:
        name = op_name
    return PIR_TO_MAPPER.get(name, name)


def _walk_ops(block):
    for op in block.ops:
        yield op
        for sub in op.blocks():
            yield from _walk_ops(sub)


def _dtype_name(dtype) -> str:
    s = str(dtype).replace("paddle.", "").replace("VarType.", "").lower()
    return {"fp32": "float32", "fp16": "float16", "fp64": "float64", "bf16": "bfloat16"}.get(s, s)


def _load_program(model_file: str):
    import paddle
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    prefix = os.path.splitext(model_file)[0]
    if model_file.endswith(".pdmodel"):
        with paddle.pir_utils.OldIrGuard():
            prog, _, _ = paddle.static.load_inference_model(prefix, exe)
        return paddle.pir.translate_to_pir(prog.desc)
    prog, _, _ = paddle.static.load_inference_model(prefix, exe)
    return prog


def _full_value(value) -> float | None:
    """The constant a pd_op.full defines, else None."""
    op = value.get_defining_op() if value is not None else None
    return op.attrs().get("value") if op is not None and op.name() == "pd_op.full" else None


def _lookup_rows(op, value) -> int | None:
    """The number of valid ids where `op` looks `value` up: an embedding's rows, the table a gather or index_select
    reads along its axis, a one-hot's class count; None for any other use."""
    name = op.name()
    if name == "pd_op.embedding" and op.operand_source(0).is_same(value):
        return int(op.operand_source(1).shape[0])
    if name in ("pd_op.gather", "pd_op.index_select") and op.operand_source(1).is_same(value):
        table = list(op.operand_source(0).shape)
        axis = (op.attrs().get("axis") if name == "pd_op.index_select" else
                _full_value(op.operand_source(2)) if op.num_operands() > 2 else 0)
        if axis is not None and table and -len(table) <= int(axis) < len(table) and table[int(axis)] > 0:
            return int(table[int(axis)])
    if name == "pd_op.one_hot" and op.operand_source(0).is_same(value):
        classes = op.attrs().get("num_classes")
        classes = classes if classes is not None else (_full_value(op.operand_source(1))
                                                       if op.num_operands() > 1 else None)
        if classes is not None and int(classes) > 0:
            return int(classes)
    return None


def _int_upper_bound(value, depth: int = 0) -> int | None:
    """Largest valid id + 1 for an integer input: the rows of the table it indexes (embedding, gather,
    index_select, one_hot), through ops that move ids without changing them."""
    if depth > 6:
        return None
    for op in value.all_used_ops():
        rows = _lookup_rows(op, value)
        if rows is not None:
            return rows
        if _moves_ids(op, value):
            bound = _int_upper_bound(op.result(0), depth + 1)
            if bound is not None:
                return bound
    return None


def _moves_ids(op, value) -> bool:
    """`op` passes `value`'s ids on in its first result: a pass-through or id-moving op reading `value` as its data
    (operand 0), not as a repeat count or shape (tile(x, repeat_times=ids)); any part of a builtin.combine."""
    name = op.name()
    if name == "builtin.combine":
        return True
    return name in PASS_THROUGH | ID_MOVES and op.num_operands() > 0 and op.operand_source(0).is_same(value)


# arithmetic a sequence length passes through on its way to a mask, on either operand (PaddleSpeech subsamples it:
# ((len - 1) // 2 - 1) // 2); the ops that move ids (_moves_ids) carry it too
LENGTH_ARITH = {"pd_op.scale", "pd_op.floor_divide", "pd_op.divide", "pd_op.subtract", "pd_op.add", "pd_op.multiply",
                "pd_op.floor", "pd_op.ceil", "pd_op.maximum", "pd_op.minimum", "pd_op.clip", "pd_op.remainder"}
COMPARISONS = {"pd_op.less_than", "pd_op.less_equal", "pd_op.greater_than", "pd_op.greater_equal"}


def _from_arange(value, depth: int = 0) -> bool:
    """`value` is positions 0.. (a pd_op.arange, maybe reshaped, cast or broadcast)."""
    op = value.get_defining_op() if depth <= 6 else None
    if op is None:
        return False
    return op.name() == "pd_op.arange" or (op.name() in PASS_THROUGH | ID_MOVES
                                           and _from_arange(op.operand_source(0), depth + 1))


def _is_length(value, depth: int = 0) -> bool:
    """An integer input holding sequence lengths: it (after arithmetic) is compared with positions 0.. to build a
    mask (PaddleSpeech's `arange(T) < len`), or is an RNN's sequence_length, or feeds a sequence_mask."""
    if depth > 10:
        return False
    for op in value.all_used_ops():
        name = op.name()
        if name == "pd_op.rnn" and not op.operand_source(0).is_same(value):
            return True
        if name == "pd_op.sequence_mask" and op.operand_source(0).is_same(value):
            return True
        if name in COMPARISONS:
            other = op.operand_source(1) if op.operand_source(0).is_same(value) else op.operand_source(0)
            if _from_arange(other):
                return True
        if (_moves_ids(op, value) or name in LENGTH_ARITH) and _is_length(op.result(0), depth + 1):
            return True
    return False


def _rnn_lengths(op) -> bool:
    """A pd_op.rnn given a sequence_length (paddle2onnx 2.1.0 writes the ONNX RNN without it)."""
    if op.num_operands() < 4:
        return False
    v = op.operand_source(3)
    return v.initialized() and v.get_defining_op() is not None


def _pad_id(value, depth: int = 0) -> int | None:
    """The id an integer input is compared with to mask padding (PaddleNLP's encoders: attention_mask from
    input_ids == pad_token_id, a constant), or None."""
    if depth > 3:
        return None
    for op in value.all_used_ops():
        name = op.name()
        if name in ("pd_op.equal", "pd_op.not_equal"):
            for k in (0, 1):
                src = op.operand_source(k).get_defining_op()
                if src is not None and src.name() == "pd_op.full" and not op.operand_source(k).is_same(value):
                    return int(src.attrs()["value"])
        if name in PASS_THROUGH:
            found = _pad_id(op.result(0), depth + 1)
            if found is not None:
                return found
    return None


def unregistered_ops(model_file: str) -> Counter:
    """Operator types of a legacy program (*.pdmodel / 1.x __model__) that this Paddle does not register (such as
    1.x's sequence_unpad, gone by Paddle 3.3), with their counts; empty for PIR programs."""
    if model_file.endswith(".json"):
        return Counter()
    from paddle.base import core
    from paddle.base.proto import framework_pb2
    desc = framework_pb2.ProgramDesc()
    with open(model_file, "rb") as f:
        desc.ParseFromString(f.read())
    known = {framework_pb2.OpProto.FromString(p).type for p in core.get_all_op_protos()}
    return Counter(op.type for block in desc.blocks for op in block.ops if op.type not in known)


def load_error(e: BaseException, model_file: str, params_file: str, origin: str | None = None) -> Exception:
    """What Paddle failing to load a model means: a host out of memory or threads (RuntimeError: exit 4, run again),
    a program using operators this Paddle no longer has (BadInput: exit 2, re-export it), else files that do not go
    together (BadInput: exit 2, re-copy them)."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if isinstance(e, MemoryError) or any(m in str(e) for m in RESOURCE_ERRORS):
        return RuntimeError(f"the host ran out of memory or threads while Paddle loaded the model ({first}); free "
                            "some (other jobs, OMP_NUM_THREADS) and run again")
    try:
        missing = unregistered_ops(model_file) if "is not registered" in str(e) else Counter()
    except Exception:  # noqa: BLE001 - an unreadable program: the message below is the right one
        missing = Counter()
    if missing:
        import paddle
        listing = ", ".join(f"{t} (x{n})" for t, n in sorted(missing.items()))
        example = (" (e.g. padded batches with a length mask instead of sequence_* ops)"
                   if any(t.startswith("sequence_") for t in missing) else "")
        return BadInput(f"the model uses {len(missing)} operator type(s) that Paddle {paddle.__version__} does not "
                        f"have: {listing}; it was saved by an older Paddle that had them, so neither Paddle Inference "
                        "(the gate's reference) nor paddle2onnx can run it. Re-export it from its training code with "
                        f"a current Paddle, replacing those layers{example}, then convert the new export")
    first = _paddle_error_line(e)
    try:
        with open(model_file, "rb") as f:       # op types are strings in both program formats
            quantized = b"quantize" in f.read()
    except OSError:
        quantized = False
    if quantized:
        return BadInput(f"Paddle Inference cannot load this program ({first}), which holds quantization ops (a "
                        "paddle.quantization / PaddleSlim export): paddle2onnx cannot export such a program to an INT8 "
                        "ONNX model either. Convert the float model it was quantized from; --precision int8 makes "
                        "INT8 with onnxruntime's quantizer, judged by the gate")
    if origin:                                   # model_file/params_file: our re-saved copy of a Paddle 1.x folder
        return BadInput(f"Paddle cannot load the model of {origin} (a Paddle 1.x folder, re-saved to convert it): its "
                        f"weight files are truncated, corrupt or do not belong to its program ({first}); re-copy the "
                        "whole folder")
    return BadInput(f"Paddle cannot load the model: the params file {params_file} is truncated, corrupt or does not "
                    f"belong to {model_file} ({first}); re-save or re-copy both files together")


def task_inspect(args: dict) -> dict:
    import paddle
    import paddle2onnx
    import paddle2onnx.paddle2onnx_cpp2py_export as p2o

    _check_program_file(args["model_file"])
    # Loading through Paddle Inference checks that the params file matches the program (truncation, mismatch).
    try:
        _make_predictor(args["model_file"], args["params_file"])
    except Exception as e:  # noqa: BLE001 - Paddle raises RuntimeError/ValueError/OSError variously
        raise load_error(e, args["model_file"], args["params_file"], args.get("origin")) from e
    prog = _load_program(args["model_file"])
    supported = set(p2o.get_all_supported_operators_pir())
    ops, unsupported = Counter(), Counter()
    inputs, outputs, inexact, rnn_lengths = [], [], [], 0
    for op in _walk_ops(prog.global_block()):
        name = op.name()
        ops[name] += 1
        if name not in STRUCTURAL and _mapper_name(name) not in supported:
            unsupported[name] += 1
        if name == "pd_op.rnn" and _rnn_lengths(op):
            rnn_lengths += 1
        if name == "pd_op.pool2d" and op.attrs().get("adaptive"):
            shape_in, shape_out = list(op.operand_source(0).shape), list(op.result(0).shape)
            if op.attrs().get("data_format") == "NHWC":
                shape_in, shape_out = [shape_in[i] for i in (0, 3, 1, 2)], [shape_out[i] for i in (0, 3, 1, 2)]
            hw, out_hw = [int(d) for d in shape_in[2:]], [int(d) for d in shape_out[2:]]
            if min(hw + out_hw, default=0) > 0 and any(i % o for i, o in zip(hw, out_hw)):
                inexact.append({"pooling": op.attrs().get("pooling_type", "avg"), "input": hw, "output": out_hw})
        if name in ("pd_op.data", "pd_op.feed"):
            v = op.result(0)
            spec = {"name": op.attrs()["name"], "dtype": _dtype_name(v.dtype), "shape": [int(d) for d in v.shape]}
            if "int" in spec["dtype"]:
                spec["int_high"] = _int_upper_bound(v)
                spec["pad_id"] = _pad_id(v)
                spec["lengths"] = spec["int_high"] is None and len(spec["shape"]) <= 2 and _is_length(v)
            inputs.append(spec)
        elif name == "pd_op.fetch":
            v = op.operand_source(0)
            outputs.append({"fetch_name": op.attrs()["name"], "col": op.attrs().get("col", len(outputs)),
                            "dtype": _dtype_name(v.dtype), "shape": [int(d) for d in v.shape],
                            "producer": v.get_defining_op().name()})
    outputs.sort(key=lambda o: o["col"])
    return {"paddle_version": paddle.__version__, "paddle2onnx_version": paddle2onnx.__version__,
            "inputs": inputs, "outputs": outputs, "ops": dict(ops), "unsupported": dict(unsupported),
            "inexact_adaptive_pools": inexact, "rnn_sequence_lengths": rnn_lengths}


def _check_program_file(model_file: str) -> None:
    """A damaged program file is named as such (not blamed on the params file that Paddle loads next)."""
    try:
        if model_file.endswith(".json"):
            with open(model_file, encoding="utf-8") as f:
                program = json.load(f)
            ok = isinstance(program, dict) and "program" in program
        else:
            from paddle.base.proto import framework_pb2
            desc = framework_pb2.ProgramDesc()
            with open(model_file, "rb") as f:
                desc.ParseFromString(f.read())
            ok = len(desc.blocks) > 0 and len(desc.blocks[0].ops) > 0
        problem = "it holds no program"
    except Exception as e:  # noqa: BLE001 - json/protobuf decode errors, UnicodeDecodeError
        ok, problem = False, f"{type(e).__name__}: {str(e).strip()[:160]}"
    if not ok:
        raise BadInput(f"the program file {model_file} is damaged or not a Paddle program ({problem}); re-export "
                       "or re-copy the model's program file (its params file was not read)")


def _make_predictor(model_file: str, params_file: str):
    import paddle.inference as pi
    cfg = pi.Config(model_file, params_file)
    cfg.disable_gpu()
    cfg.switch_ir_optim(False)       # the reference is the program as written, not a fused rewrite of it
    if hasattr(cfg, "disable_mkldnn"):
        cfg.disable_mkldnn()
    cfg.disable_glog_info()
    return pi.create_predictor(cfg)


def task_reference(args: dict) -> dict:
    import numpy as np
    pred = _make_predictor(args["model_file"], args["params_file"])
    names_in = pred.get_input_names()
    data = np.load(args["inputs_npz"])
    n = int(args["num_samples"])
    result = {}
    for i in range(n):
        for name in names_in:
            key = f"{i}/{name}"
            if key not in data:
                raise BadInput(f"sample {i} has no input {name!r} (the model's inputs are {names_in})")
            h = pred.get_input_handle(name)
            arr = data[key]
            h.reshape(list(arr.shape))
            h.copy_from_cpu(np.ascontiguousarray(arr))
        try:
            pred.run()
        except Exception as e:  # noqa: BLE001 - Paddle's own error types: it refused the inputs, not a crash
            shapes = ", ".join(f"{n} {data[f'{i}/{n}'].dtype}{list(data[f'{i}/{n}'].shape)}" for n in names_in)
            raise BadInput(f"Paddle Inference refused sample {i} ({shapes}): {_paddle_error_line(e)}. The model "
                           "does not take inputs like these (the generated ones, your --inputs, or a bundle's "
                           "recorded ones under `validate`): give --input-shape NAME:D0,D1,... with sizes it takes, "
                           "or --inputs FILE.npz with real inputs (arrays named after its inputs)") from e
        for j, name in enumerate(pred.get_output_names()):
            result[f"{i}/{j}"] = pred.get_output_handle(name).copy_to_cpu()
    with atomic_path(args["outputs_npz"], suffix=".npz") as tmp:
        np.savez(tmp, **result)
    return {"num_outputs": len(pred.get_output_names())}


def _program_parameters(model_file: str, exe, scope) -> list[str]:
    """Load the model's parameters into `scope` as Paddle Inference does (load_inference_model: legacy *.pdmodel
    under the old IR, PIR *.json) -> their names, in the program's order."""
    import paddle
    prefix = os.path.splitext(model_file)[0]
    with paddle.static.scope_guard(scope):
        if model_file.endswith(".pdmodel"):
            dense = paddle.base.core.VarDesc.VarType.LOD_TENSOR
            with paddle.pir_utils.OldIrGuard():
                prog, _, _ = paddle.static.load_inference_model(prefix, exe)
                return [v.name for v in prog.list_vars() if v.persistable and v.type == dense]   # not feed/fetch
        prog, _, _ = paddle.static.load_inference_model(prefix, exe)
        return [op.attrs()["parameter_name"] for op in _walk_ops(prog.global_block())
                if op.name() == "builtin.parameter"]


def task_parameters(args: dict) -> dict:
    """The model's parameters as Paddle loads them, one tensor at a time (the scope holds the only full copy):
    into `out_npz` (name -> array) where the params file is at most `max_npz_bytes`, else as the sha256 of each
    tensor's raw bytes (C order, the host's little-endian), returned with its dtype and shape under "digests".
    The parent (convert.paddle_params) compares them with the FP32 ONNX model's same-named weights."""
    import hashlib
    import zipfile

    import numpy as np
    import paddle
    paddle.enable_static()
    model_file, params_file = args["model_file"], args["params_file"]
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    try:
        names = _program_parameters(model_file, exe, scope)
    except Exception as e:  # noqa: BLE001 - Paddle raises RuntimeError/ValueError/OSError variously
        raise load_error(e, model_file, params_file, args.get("origin")) from e
    size = os.path.getsize(params_file) if params_file and os.path.isfile(params_file) else 0
    digests = size > int(args.get("max_npz_bytes", 2 * 10 ** 9))
    digest, written, missing = {}, 0, []
    with contextlib.ExitStack() as stack:
        if not digests:
            tmp = stack.enter_context(atomic_path(args["out_npz"], suffix=".npz"))
            zf = stack.enter_context(zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True))
        for name in dict.fromkeys(names):                       # once each, in the program's order
            var = scope.find_var(name)
            if var is None or not var.get_tensor()._is_initialized():
                missing.append(name)
                continue
            arr = np.ascontiguousarray(np.array(var.get_tensor()))     # a copy of this one tensor only
            if digests:
                digest[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape),
                                "sha256": hashlib.sha256(memoryview(arr).cast("B")).hexdigest()}
            else:
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
            written += arr.nbytes
            del arr
    log.info("%d parameters, %.1f MB, %s", len(names) - len(missing), written / 1e6,
             "as sha256 digests" if digests else f"written to {args['out_npz']}")
    return {"count": len(names) - len(missing), "bytes": written, "missing": missing,
            **({"digests": digest} if digests else {"npz": args["out_npz"]})}


def _paddle_error_line(e: Exception) -> str:
    """The line of a Paddle error that says what is wrong ("InvalidArgumentError: ... expected >= 0 and < 48, but
    got 48"), without its C++ stack."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if re.search(r"\w+Error: ", ln)), lines[0] if lines else type(e).__name__)
    return re.sub(r"\s*\[Hint:.*$", "", hit)[:400].rstrip(". ")


def _translate_to_pir(model_file: str, workdir: str) -> tuple[str, str]:
    """A legacy program (*.pdmodel + *.pdiparams) as a PIR program (JSON + params) in `workdir`: what paddle2onnx
    does internally (with its own helpers), done here so the program repairs can run on the JSON before export."""
    import paddle
    from paddle2onnx.convert import load_parameter, save_program
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.pir_utils.OldIrGuard():
        prog, _, _ = paddle.static.load_inference_model(os.path.splitext(model_file)[0], exe)
    program = paddle.pir.translate_to_pir(prog.desc)
    load_parameter(program)
    prefix = os.path.join(workdir, "program_pir")
    save_program(program, prefix)
    return prefix + ".json", prefix + ".pdiparams"


def _export_failure(message: str, program: dict) -> str:
    """paddle2onnx's C++ error -> what failed, why, and what to do next."""
    from paddle2ort.convert.repair.f64_attrs import double_attrs
    first = message.strip().splitlines()[0] if message.strip() else "(no message)"
    if "MUST be ir::FloatAttribute" in message:
        sites = Counter(f"{op}.{attr}" for op, attr in double_attrs(program))
        listing = ", ".join(f"{k} (x{n})" for k, n in sorted(sites.items())) or "none found in the program"
        return (f"paddle2onnx cannot read a float64 array attribute ({first}). Attributes stored as float64: "
                f"{listing}. Cause: Paddle >= 3.3 writes these as float64 while paddle2onnx 2.1.0 reads float32 "
                "(the attributes Paddle's own float-to-double patches list are repaired automatically). Next step: "
                "re-save the model with paddlepaddle 3.2.x, or report the operator named above")
    if "Cannot find" in message or "not supported" in message.lower() or "Unimplemented" in message:
        return (f"paddle2onnx has no working mapping for an operator of this program ({first}). Next step: "
                "rewrite that layer with supported operators before export, or convert with another "
                "paddle2onnx version")
    return (f"paddle2onnx failed ({first}). Next step: rerun with -v for the converter log and report the "
            "operator it names")


class ExportFailed(Exception):
    pass


def task_export(args: dict) -> dict:
    import paddle2onnx.paddle2onnx_cpp2py_export as c_p2o

    from paddle2ort.convert.repair import repair_exported, repair_program

    save_file = args["save_file"]
    workdir = os.path.dirname(os.path.abspath(save_file))
    model_file, params_file = args["model_file"], args["params_file"]
    if model_file.endswith(".pdmodel"):
        model_file, params_file = _translate_to_pir(model_file, workdir)
    with open(model_file, encoding="utf-8") as f:
        program = json.load(f)
    repairs = repair_program(program)
    if repairs:
        model_file = os.path.join(workdir, "program_repaired.json")
        with open(model_file, "w", encoding="utf-8") as f:
            json.dump(program, f, separators=(",", ":"))
    try:
        # paddle2onnx.export() logs C++ errors and goes on (then fails on an unbound name): call the exporter
        # itself so its error reaches the parent. Same arguments as export(..., optimize_tool="None").
        onnx_bytes = c_p2o.export(model_file, params_file, int(args["opset"]), True, bool(args.get("verbose")),
                                  True, True, True, {}, "onnxruntime", "", "", False)
    except Exception as e:  # noqa: BLE001 - pybind11 re-raises Paddle's enforce errors as RuntimeError/...
        raise ExportFailed(_export_failure(str(e), program)) from e
    if onnx_bytes:                              # empty: paddle2onnx's silent failure, for check_onnx_file to name
        onnx_bytes, paired = repair_exported(program, onnx_bytes)
        repairs = repairs + paired
    atomic_write(save_file, onnx_bytes)
    return {"save_file": save_file, "repairs": repairs}


def task_resave_fluid(args: dict) -> dict:
    """A Paddle 1.x inference directory (`__model__` + `__params__`, or `__model__` + one file per variable)
    loaded with the old loader and saved as a modern inference model (PREFIX.pdmodel + PREFIX.pdiparams)."""
    import paddle
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.pir_utils.OldIrGuard():
        try:
            prog, feeds, fetches = paddle.static.load_inference_model(
                args["dir"], exe, model_filename=args["model_filename"], params_filename=args.get("params_filename"))
        except Exception as e:  # noqa: BLE001 - Paddle raises RuntimeError/ValueError/OSError variously
            what = (f"its weights ({args['params_filename']})" if args.get("params_filename")
                    else "its per-variable weight files")
            raise BadInput(f"Paddle cannot load the 1.x model in {args['dir']} ({args['model_filename']} with {what}): "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; re-copy "
                           "the whole directory as saved by save_inference_model") from e
        feed_vars = [prog.global_block().var(n) for n in feeds]
        paddle.static.save_inference_model(args["out_prefix"], feed_vars, fetches, exe, program=prog)
    return {"model_file": args["out_prefix"] + ".pdmodel", "params_file": args["out_prefix"] + ".pdiparams",
            "feeds": list(feeds), "paddle_version": paddle.__version__}


def bench_predictor(model_file: str, params_file: str, threads: int, onednn: bool = True):
    """A Paddle Inference CPU predictor in its deployment configuration (IR passes, oneDNN when asked and the build
    has it, else off; `threads` math threads): the benchmarks' peer. -> (predictor, oneDNN on)."""
    import paddle
    import paddle.inference as pi
    cfg = pi.Config(model_file, params_file)
    cfg.disable_gpu()
    cfg.switch_ir_optim(True)
    cfg.set_cpu_math_library_num_threads(int(threads))
    onednn = bool(onednn) and paddle.base.core.is_compiled_with_mkldnn()
    if onednn:
        cfg.enable_mkldnn()
    elif hasattr(cfg, "disable_mkldnn"):
        cfg.disable_mkldnn()         # Paddle 3 turns oneDNN on by default on the CPU
    cfg.disable_glog_info()
    return pi.create_predictor(cfg), onednn


def task_bench(args: dict) -> dict:
    """Paddle Inference on CPU as a benchmark peer: its deployment configuration (IR passes, oneDNN when the build
    has it, the given thread count), timed over the same pre-tokenized batches the ONNX rows use."""
    import numpy as np
    import paddle
    pred, onednn = bench_predictor(args["model_file"], args["params_file"], int(args["threads"]),
                                   bool(args.get("onednn", True)))
    data = np.load(args["batches_npz"])
    nb = int(args["num_batches"])
    batches = [{n: data[f"{b}/{n}"] for n in pred.get_input_names()} for b in range(nb)]
    out_name = pred.get_output_names()[int(args.get("output_index", 0))]

    def run(feeds):
        for name, arr in feeds.items():
            h = pred.get_input_handle(name)
            h.reshape(list(arr.shape))
            h.copy_from_cpu(arr)
        pred.run()
        return pred.get_output_handle(out_name).copy_to_cpu()

    from paddle2ort.runtime.timing import time_passes      # the ONNX rows' warm-up and timing loop
    times, outs = time_passes(run, batches, int(args["warmup"]), int(args["repeats"]))
    with atomic_path(args["outputs_npz"], suffix=".npz") as tmp:
        np.savez(tmp, **{str(b): o for b, o in enumerate(outs)})
    return {"times": times, "paddle_version": paddle.__version__, "onednn": onednn, "ir_optim": True,
            "threads": int(args["threads"])}


@contextlib.contextmanager
def methods_converted_once():
    """Paddle's dy2static converts a method once per function, not once per layer instance.

    jit.save transcribes every `layer.forward` it meets, and Paddle 3.3 caches the converted function under the
    bound method, a new object at each attribute access: the cache never hits, so a 30-layer decoder's attention,
    norm, MLP and layer forwards were each re-generated (temp module written, imported, origin map rebuilt) 30 times,
    ~14 s of a SmolLM2-135M export's 29 s. The converted function depends only on the function (source, globals,
    closure; the instance is bound afterwards by Paddle's functools.partial), so keying it on `__func__` gives the
    same program."""
    import inspect

    from paddle.jit.dy2static import program_translator as pt
    cache = pt._FUNCTION_CACHE
    convert = cache.convert_with_cache

    def convert_with_cache(func):
        return convert(func.__func__ if inspect.ismethod(func) else func)

    cache.convert_with_cache = convert_with_cache       # an instance attribute: shadows the method until removed
    try:
        yield
    finally:
        del cache.convert_with_cache


def task_export_llm(args: dict) -> dict:
    """PaddleNLP causal LM (save_pretrained dir) -> static KV-cache decoder (jit.save) + recorded validation steps:
    greedy prefill + decode steps of the Paddle wrapper itself, driven by the runtime's decode loop."""
    import numpy as np
    import paddle

    from paddle2ort.convert.llm.eager import EagerDecoder, load_export_model
    from paddle2ort.convert.llm.wrapper import input_specs, make_wrapper
    from paddle2ort.runtime.generation import GenerationConfig, generate

    try:
        model, fam, arch = load_export_model(args["model_dir"])
    except KeyError as e:
        raise BadInput(str(e)) from e
    c = model.config
    feeds = []
    from paddle2ort.convert.llm.adapters import export_hook
    prefix_rows, adapter_info = export_hook(args.get("adapter"), model, fam)     # LoRA check / prefix rows
    with fam.patches(model):
        wrapper = make_wrapper(model, fam)
        wrapper.eval()
        dec = EagerDecoder(wrapper, c, fam, record=feeds)
        if prefix_rows is not None:     # PTuning prefix: the recorded scenario starts from its cache rows
            from paddle2ort.runtime.generation import CacheDecoder
            dec = CacheDecoder.wrap(dec, int(args["pad_id"]))
            dec.set_prefix(prefix_rows)
        generated = generate(dec, args["prompts"], GenerationConfig(max_new_tokens=int(args["decode_steps"]) + 1),
                             pad_id=int(args["pad_id"]))
        with methods_converted_once():
            paddle.jit.save(wrapper, args["out_prefix"],
                            input_spec=input_specs(dec.num_layers, dec.kv_heads, dec.head_dim))
    with atomic_path(args["samples_npz"], suffix=".npz") as tmp:
        np.savez(tmp, **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})
    extra = {}
    if args.get("state_npz"):           # the fused decoder's weights, as task_state_llm writes them (one worker)
        with atomic_path(args["state_npz"], suffix=".npz") as tmp:
            np.savez(tmp, **{k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()})
        extra["config"] = c.to_dict()
    return {"family": fam.name, "architecture": arch, "num_layers": dec.num_layers, "kv_heads": dec.kv_heads,
            "head_dim": dec.head_dim, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "max_context": max_context(c), "num_samples": len(feeds),
            "generated": generated, "paddle_version": paddle.__version__, **extra, **adapter_info}


def max_context(c) -> int:
    """Positions the export is exact for: the model's, capped at a sliding attention window (Mistral) since the
    exported attention is full."""
    n = int(getattr(c, "max_position_embeddings", 2048))
    window = getattr(c, "sliding_window", None)
    return min(n, int(window)) if isinstance(window, int) and window > 0 else n


def task_generate_llm(args: dict) -> dict:
    """Paddle's own greedy generation as the reference: dygraph, full recompute each step (no KV cache, no
    padding: one prompt at a time), so nothing of the exported wrapper or our loop is involved."""
    from paddle2ort.convert.llm.eager import greedy, load_llm

    model, _, _ = load_llm(args["model_dir"])
    stop = set(args.get("stop_ids", []))
    return {"generated": [greedy(model, ids, int(args["max_new_tokens"]), stop) for ids in args["prompts"]]}


def task_logprobs_llm(args: dict) -> dict:
    """Paddle's token log-likelihood of windows of ids (dygraph, full forward): the perplexity reference.
    Log-softmax in NumPy float64: Paddle's CPU float64 log_softmax over a 49k vocabulary took minutes a window."""
    import time

    import numpy as np
    import paddle

    from paddle2ort.convert.llm.eager import load_llm
    from paddle2ort.runtime.generation import log_softmax

    # every core this process may use (Paddle's CPU default is one thread): a full forward of SmolLM2-135M over 256
    # tokens took 3.6 s on one core, 2.2 s on two; the sums differ from one thread's only in rounding order. No
    # more than the parent's cap (OMP_NUM_THREADS: the cores, within the threads the host allows)
    paddle.base.core.set_num_threads(math_threads())
    model, _, _ = load_llm(args["model_dir"])
    nll, count = 0.0, 0
    with paddle.no_grad():
        for i, window in enumerate(args["windows"]):
            t0 = time.perf_counter()
            logits = model(paddle.to_tensor([window]), return_dict=False)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            lp = log_softmax(logits.numpy()[0, :-1])
            tgt = np.array(window[1:])
            nll -= float(lp[np.arange(len(tgt)), tgt].sum())
            count += len(tgt)
            log.info("window %d: %.1f s", i, time.perf_counter() - t0)
    return {"nll": nll, "tokens": count}


def task_bench_llm(args: dict) -> dict:
    """Paddle dygraph generation timed like the onnxruntime rows: PaddleNLP's decoder layers with a KV cache
    (the export wrapper, run eagerly) under the same decode loop."""
    import resource

    import paddle

    from paddle2ort.runtime.timing import time_generation
    from paddle2ort.convert.llm.eager import EagerDecoder, load_llm
    from paddle2ort.convert.llm.wrapper import make_wrapper

    paddle.base.core.set_num_threads(int(args["threads"]))
    model, fam, _ = load_llm(args["model_dir"])
    with fam.patches(model):
        dec = EagerDecoder(make_wrapper(model, fam), model.config, fam)
        prompts = args["prompts"]
        time_generation(dec, [p[:16] for p in prompts], 4, int(args["pad_id"]))          # warm-up
        r = time_generation(dec, prompts, int(args["new_tokens"]), int(args["pad_id"]))
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["paddle_version"] = paddle.__version__
    return r


def task_state_llm(args: dict) -> dict:
    """A PaddleNLP causal LM's weights as float32 NumPy (npz, PaddleNLP names) + its config and family: the fused
    decoder's input (convert.llm.fused builds the graph outside Paddle)."""
    import numpy as np

    from paddle2ort.convert.llm.eager import load_export_model

    try:
        model, fam, arch = load_export_model(args["model_dir"])
    except KeyError as e:
        raise BadInput(str(e)) from e
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    with atomic_path(args["out_npz"], suffix=".npz") as tmp:
        np.savez(tmp, **state)
    return {"architecture": arch, "family": fam.name, "config": model.config.to_dict()}


class BadInput(Exception):
    pass


TASKS = {"inspect": task_inspect, "reference": task_reference, "export": task_export, "bench": task_bench,
         "resave_fluid": task_resave_fluid, "parameters": task_parameters,
         "export_llm": task_export_llm, "generate_llm": task_generate_llm, "logprobs_llm": task_logprobs_llm,
         "bench_llm": task_bench_llm, "state_llm": task_state_llm}
from paddle2ort.convert.seq2seq.worker import TASKS as SEQ2SEQ_TASKS  # noqa: E402  (encoder-decoder tasks)

TASKS.update(SEQ2SEQ_TASKS)


def main(argv: list[str]) -> int:
    task, in_path, out_path = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(in_path, encoding="utf-8") as f:
        args = json.load(f)
    try:
        result = {"ok": True, **TASKS[task](args)}
        code = 0
    except BadInput as e:
        result, code = {"ok": False, "kind": "bad_input", "message": str(e)}, 1
    except Exception as e:  # noqa: BLE001 - reported to the parent as a typed error
        from paddle2ort.convert.llm.eager import CheckpointMismatch
        if isinstance(e, CheckpointMismatch):             # weights that do not fill config.json's model, in any task
            result, code = {"ok": False, "kind": "bad_input", "message": str(e)}, 1
        else:
            traceback.print_exc()
            result, code = {"ok": False, "kind": "error", "message": f"{type(e).__name__}: {e}"}, 1
    atomic_write(out_path, json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
