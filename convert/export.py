"""Stage 2: Paddle program -> ONNX with paddle2onnx (in a child process), repair its known defects, then catch its
silent failures (no file, a 0-byte file, a graph onnxruntime refuses)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConversionError
from .paddle_proc import log_tail, run_worker
from .source import ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset_requested: int
    opset_written: int
    log_path: Path
    repairs: list[dict] = field(default_factory=list)     # [{name, count}]: program repairs, then ONNX repairs


def run_paddle2onnx(source: ModelSource, save_file: Path, opset: int, workdir: Path) -> tuple[Path, list[dict]]:
    """Run paddle2onnx in a child process; return (its log, the program repairs applied). Replaceable in tests."""
    res = run_worker("export", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                "save_file": str(save_file), "opset": opset}, workdir)
    return Path(res["log_path"]), list(res.get("repairs", []))


_ORT_NODE = re.compile(r"Node \(([^)]*)\) Op \(([^)]*)\)")
# "Type parameter (T) of Optype (Max) bound to different types (...) in node (Max.0)": the FP16 pass's typing
_ORT_TYPED = re.compile(r"Optype \((\w+)\) bound to different types .* in node \(([^)]*)\)")
# onnxruntime load failures paddle2onnx is known to cause: (pattern, cause, next step)
_KNOWN_LOAD_FAILURES = (
    (re.compile(r"All inputs to Concat must have same rank|axis must be in \[-rank, rank-1\]"),
     "paddle2onnx 2.x concatenated 0-d shape values without unsqueezing them, in a form the "
     "concat_rank0_inputs repair did not recognize",
     "convert with paddle2onnx 1.3.1 (it writes the Unsqueeze), or report the node named above"),
)


def _load_failure(producer: str, error: Exception) -> str:
    text = str(error)
    m = _ORT_NODE.search(text)
    t = None if m else _ORT_TYPED.search(text)
    where = f"node {m.group(1)!r} ({m.group(2)})" if m else f"node {t.group(2)!r} ({t.group(1)})" if t else "a node"
    for pattern, cause, step in _KNOWN_LOAD_FAILURES:
        if pattern.search(text):
            return (f"onnxruntime cannot load the model {producer} wrote: {where} is invalid. Cause: {cause}. "
                    f"Next step: {step}. [{_error_name(error)}: {text.strip()}]")
    if "fp16" in producer and t is not None:     # inputs of two types: a Cast the pass did not place
        step = ("convert with --no-fuse (the FP16 pass then types every tensor of the unfused graph), or leave "
                "fp16 out of --precision")
    elif "fp16" in producer:
        op = m.group(2) if m else "OP"
        step = (f"keep {op} in FP32 (--fp16-block-ops with {op} added to the default list), or leave fp16 out "
                "of --precision")
    elif producer == "paddle2onnx":
        step = "retry with another --opset, or report the node"
    else:
        step = "leave this precision out of --precision, or report the node"
    return (f"onnxruntime cannot load the model {producer} wrote: {where} is invalid "
            f"({_error_name(error)}: {text.strip()}). Next step: {step}")


def check_onnx_file(path: Path, log_path: Path | None = None, producer: str = "paddle2onnx"):
    """paddle2onnx can exit 0 and leave a 0-byte or unloadable file: load, check and open it in onnxruntime."""
    import onnx

    from paddle2ort.runtime.load_probe import probe_levels

    tail = log_tail(log_path) if log_path else ""
    if not path.is_file():
        raise ConversionError(f"{producer} reported success but wrote no file at {path}", tail)
    if path.stat().st_size == 0:
        raise ConversionError(f"{producer} wrote an empty (0-byte) ONNX file at {path}", tail)
    try:
        model = onnx.load(str(path), load_external_data=False)     # the graph; its weights may be external
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError/ValidationError/...
        raise ConversionError(f"{producer} wrote an invalid ONNX file ({type(e).__name__}: {e})", tail) from e
    tried = probe_levels(path)                 # in a child: onnxruntime can crash the loading process
    last = tried[-1]
    if last.error is not None:
        raise ConversionError(_load_failure(producer, _OrtError(*last.error)), tail)
    if last.crashed:
        import onnxruntime as ort
        raise ConversionError(
            f"onnxruntime {ort.__version__} cannot load the model {producer} wrote: "
            f"{'; '.join(r.describe() for r in tried)}. Nothing was written. Next step: "
            + ("leave this precision out of --precision" if producer.startswith("the ") else
               "report the model (onnxruntime's crash, not a wrong graph: the file passed onnx.checker)"), tail)
    return model


class _OrtError(Exception):
    """onnxruntime's error as a child process reported it (type name, message)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _error_name(error: Exception) -> str:
    return getattr(error, "kind", type(error).__name__)


def repair_file(path: Path) -> list[dict]:
    """Apply the ONNX repairs (convert.repair) to the exported file; rewrite it only when one applied."""
    import onnx

    from .repair import repair_onnx
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - an unreadable file is check_onnx_file's to report
        return []
    done = repair_onnx(model)
    if done:
        save_onnx(model, path)
    return done


# paddle2onnx 2.1.0 reads each parameter's byte size into an int32 (a tensor of 2 GiB or more ends in
# "ValueError: vector::_M_default_append") and serializes the whole ModelProto (over 2 GiB: "onnx.ModelProto exceeded
# maximum protobuf size of 2GB", then a 0-byte file; its external_file argument does not avoid that). Measured: two
# 1.15 GB parameters parse, then fail serializing. Past this size the weights are kept apart (export_weights_apart).
PADDLE2ONNX_MAX_PARAMS = 2 ** 31 - 1
# the weights go to an external data file past this many bytes (protobuf's limit, with room for the graph)
EXTERNAL_DATA_BYTES = 2 ** 31 - 2 ** 26

# Paddle's VarType.Type codes -> numpy dtypes (framework.proto), for reading a .pdiparams file
PADDLE_DTYPES = {0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64",
                 20: "uint8", 21: "int8", 22: "bfloat16"}
ONNX_DTYPES = {"bool": 9, "int16": 5, "int32": 6, "int64": 7, "float16": 10, "float32": 1, "float64": 11, "uint8": 2,
               "int8": 3, "bfloat16": 16}
PIR_DTYPES = {"0.t_f32": "float32", "0.t_f16": "float16", "0.t_bf16": "bfloat16", "0.t_f64": "float64",
              "0.t_i64": "int64", "0.t_i32": "int32", "0.t_i16": "int16", "0.t_i8": "int8", "0.t_ui8": "uint8",
              "0.t_bool": "bool"}


@dataclass(frozen=True)
class StoredTensor:
    dtype: str
    shape: tuple[int, ...]
    offset: int                  # byte offset of the data in the .pdiparams file
    nbytes: int


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        out |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return out, i


def _tensor_desc(buf: bytes) -> tuple[int, list[int]]:
    """VarType.TensorDesc {data_type = 1; repeated int64 dims = 2} from its protobuf bytes."""
    i, dtype, dims = 0, None, []
    while i < len(buf):
        key, i = _varint(buf, i)
        if key == 0x08:
            dtype, i = _varint(buf, i)
        elif key == 0x10:
            d, i = _varint(buf, i)
            dims.append(d - (1 << 64) if d >= 1 << 63 else d)
        elif key == 0x12:                      # packed dims
            n, i = _varint(buf, i)
            end = i + n
            while i < end:
                d, i = _varint(buf, i)
                dims.append(d - (1 << 64) if d >= 1 << 63 else d)
        else:
            raise ValueError(f"unexpected field {key >> 3} in a tensor description")
    return dtype, dims


def read_params_index(path: Path) -> list[StoredTensor]:
    """Where each tensor of a combined Paddle parameters file (save_combine: per tensor a u32 version, a u64 LoD
    level, a u32 version, an i32-sized TensorDesc, the raw data) lies, without reading the data. Written here:
    only Paddle reads this format, and the parent process does not import Paddle."""
    import struct
    out, size = [], path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            head = f.read(20)
            if len(head) < 20:
                raise ValueError(f"truncated tensor header at byte {pos}")
            _, lod, _, desc_len = struct.unpack("<IQIi", head)
            if lod != 0:
                raise ValueError(f"a tensor with LoD level {lod} at byte {pos}")
            code, dims = _tensor_desc(f.read(desc_len))
            if code not in PADDLE_DTYPES:
                raise ValueError(f"tensor data type {code} at byte {pos} is not supported")
            import numpy as np
            dtype = PADDLE_DTYPES[code]
            nbytes = int(np.prod(dims, dtype=np.int64)) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)
            offset = pos + 20 + desc_len
            out.append(StoredTensor(dtype, tuple(dims), offset, nbytes))
            pos = offset + nbytes
            f.seek(pos)
    if pos != size:
        raise ValueError(f"the last tensor ends at byte {pos}, past the file's {size} bytes")
    return out


def strip_parameters(program: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """Turn every parameter op of a PIR program (JSON) into a data op of the same name, shape and dtype, in place:
    paddle2onnx then exports them as graph inputs and never reads the parameters. -> [(name, dtype, shape)]."""
    out = []
    for region in program["program"]["regions"]:
        for block in region["blocks"]:
            ops = block["ops"]
            for i, op in enumerate(ops):
                if op.get("#") != "p":
                    continue
                name, tt = op["A"][3], op["O"]["TT"]
                dtype, shape = PIR_DTYPES.get(tt["D"][0]["#"]), tuple(tt["D"][1])
                if dtype is None:
                    raise ConversionError(f"parameter {name} has the type {tt['D'][0]['#']}, which the export "
                                          "of models past 2 GiB does not carry")
                ops[i] = {"#": "1.data", "A": [{"AT": {"#": "0.a_str", "D": name}, "N": "name"},
                                               {"AT": {"#": "1.a_intarray", "D": list(shape)}, "N": "shape"},
                                               {"AT": {"#": "1.a_dtype", "D": dtype}, "N": "dtype"},
                                               {"AT": {"#": "1.a_place", "D": [0, 0, ""]}, "N": "place"}],
                          "I": [], "O": [op["O"]],
                          "OA": [{"AT": {"#": "0.a_array", "D": [{"#": "0.a_bool", "D": True}]},
                                  "N": "stop_gradient"}]}
                out.append((name, dtype, shape))
    return out


def attach_weights(model, names: list[tuple[str, str, tuple[int, ...]]], params: Path, data: Path) -> None:
    """The stripped graph's parameter inputs become initializers whose bytes are copied from the parameters file
    into `data` (ONNX external data, one file beside the model), in bounded chunks: never all in memory."""
    from onnx import TensorProto
    index = read_params_index(params)
    names = sorted(names)                   # Paddle's save_combine writes the variables in name order
    if len(index) != len(names):
        raise ConversionError(f"{params} holds {len(index)} tensors but the program declares {len(names)} "
                              "parameters; the program and its parameters file do not belong together")
    inputs = {i.name: i for i in model.graph.input}
    # unbuffered: _copy_sparse moves the descriptor's offset with os.lseek (SEEK_DATA / SEEK_HOLE), which a buffered
    # reader does not see: its next read past its buffer came from where lseek left the descriptor (a llama's rotary
    # table came out of the >2 GiB path with other bytes; the FP32 weight check against Paddle's parameters found it)
    with open(params, "rb", buffering=0) as src, open(data, "wb") as dst:
        for (name, dtype, shape), t in zip(names, index):
            if (t.dtype, t.shape) != (dtype, shape):
                raise ConversionError(f"parameter {name} is {dtype} {list(shape)} in the program but {t.dtype} "
                                      f"{list(t.shape)} in {params.name}; the files do not belong together")
            if name not in inputs:          # a parameter no output depends on: paddle2onnx dropped its input
                continue
            model.graph.input.remove(inputs[name])
            offset = dst.tell()
            src.seek(t.offset)
            _copy_sparse(src, dst, t.nbytes)
            init = TensorProto(name=name, data_type=ONNX_DTYPES[dtype], dims=list(shape))
            init.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(offset)), ("length", str(t.nbytes))):
                init.external_data.add(key=k, value=v)
            model.graph.initializer.append(init)
        dst.truncate(dst.tell())              # a trailing hole still counts in the file's size


def _copy_sparse(src, dst, n: int, chunk: int = 1 << 24) -> None:
    """Copy n bytes from src's position to dst's; the source's holes stay holes (as cp --sparse=auto keeps them:
    found with SEEK_DATA, so a sparse source costs nothing to copy). src must be unbuffered (open(..., buffering=0)):
    the descriptor's offset is moved under it."""
    import errno
    import os
    pos, end = src.tell(), src.tell() + n
    sparse = hasattr(os, "SEEK_DATA")                # not on Windows: a plain copy
    while pos < end:
        try:
            data = min(os.lseek(src.fileno(), pos, os.SEEK_DATA), end) if sparse else pos
        except OSError as e:               # ENXIO: only a hole is left
            if e.errno != errno.ENXIO:
                raise
            data = end
        dst.seek(data - pos, 1)
        pos = data
        stop = min(os.lseek(src.fileno(), pos, os.SEEK_HOLE), end) if sparse and pos < end else end
        src.seek(pos)
        while pos < stop:
            buf = src.read(min(chunk, stop - pos))
            if not buf:
                raise ConversionError(f"the parameters file ended {end - pos} bytes early")
            dst.write(buf)
            pos += len(buf)


def initializer_bytes(model) -> int:
    """Bytes of the weights held in the proto (not in external files), counted without serializing it."""
    from onnx import TensorProto
    total = 0
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            total += len(t.raw_data) or t.ByteSize()
    return total


def data_file(path: Path) -> Path:
    """Where a model's external weights live: one file beside it, `NAME.onnx.data`."""
    return Path(path).with_name(Path(path).name + ".data")


def model_bytes(path: Path) -> int:
    """Size of an ONNX model on disk: the graph file and its external data (`path`.data) when it has one."""
    data = data_file(path)
    return Path(path).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def save_onnx(model, path: Path) -> None:
    """onnx.save, with the weights in `path`.data when they are past protobuf's 2 GiB (a proto that large cannot
    be serialized); an earlier data file of that name is replaced."""
    import onnx
    path = Path(path)
    data = data_file(path)
    if data.exists():
        data.unlink()
    if initializer_bytes(model) > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save(model, str(path))


def export_weights_apart(source: ModelSource, save_file: Path, opset: int, workdir: Path) -> ExportResult:
    """Parameters past paddle2onnx's 2 GiB: the program's parameters become inputs (paddle2onnx exports the graph
    alone), then they are attached as external data copied from the parameters file (save_file.data)."""
    import json

    import onnx
    if source.format != "pir":
        raise ConversionError(f"{source.params_file} holds more than 2 GiB of parameters, which paddle2onnx 2.1.0 "
                              "cannot read; a PIR program (*.json, written by paddle.jit.save in Paddle 3) is "
                              "exported with its weights kept apart: re-save the model with Paddle 3")
    program = json.loads(Path(source.model_file).read_text(encoding="utf-8"))
    names = strip_parameters(program)
    stripped = workdir / "program_weights_apart.json"
    stripped.write_text(json.dumps(program, separators=(",", ":")), encoding="utf-8")
    log.info("%s: %.2f GB of parameters (past paddle2onnx's 2 GiB): exporting the graph alone, the %d weights "
             "as external data", source.params_file.name, source.params_file.stat().st_size / 1e9, len(names))
    res = run_worker("export", {"model_file": str(stripped), "params_file": "", "save_file": str(save_file),
                                "opset": opset}, workdir)
    log_path, repairs = Path(res["log_path"]), list(res.get("repairs", []))
    if not save_file.is_file() or not save_file.stat().st_size:
        check_onnx_file(save_file, log_path)                 # names the failure
    model = onnx.load(str(save_file))
    from .repair import repair_onnx
    repairs = repairs + repair_onnx(model)
    attach_weights(model, names, Path(source.params_file), data_file(save_file))
    onnx.save(model, str(save_file))                        # the graph alone: the weights are already external
    return ExportResult(save_file, opset, opset, log_path, repairs)


def export(source: ModelSource, save_file: Path, opset: int, workdir: Path) -> ExportResult:
    params = Path(source.params_file) if source.params_file else None
    if params is not None and params.is_file() and params.stat().st_size > PADDLE2ONNX_MAX_PARAMS:
        exp = export_weights_apart(source, save_file, opset, workdir)
    else:
        log_path, repairs = run_paddle2onnx(source, save_file, opset, workdir)
        if save_file.is_file() and save_file.stat().st_size:
            repairs = repairs + repair_file(save_file)
        exp = ExportResult(save_file, opset, opset, log_path, repairs)
    model = check_onnx_file(save_file, exp.log_path)
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:
        log.warning("paddle2onnx raised the opset from %d to %d (an operator needs it); recorded in the manifest",
                    opset, written)
    return ExportResult(save_file, opset, written, exp.log_path, exp.repairs)
