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
    where = f"node {m.group(1)!r} ({m.group(2)})" if m else "a node"
    for pattern, cause, step in _KNOWN_LOAD_FAILURES:
        if pattern.search(text):
            return (f"onnxruntime cannot load the model {producer} wrote: {where} is invalid. Cause: {cause}. "
                    f"Next step: {step}. [{type(error).__name__}: {text.strip()}]")
    if "fp16" in producer:
        op = m.group(2) if m else "OP"
        step = (f"keep {op} in FP32 (--fp16-block-ops with {op} added to the default list), or leave fp16 out "
                "of --precision")
    elif producer == "paddle2onnx":
        step = "retry with another --opset, or report the node"
    else:
        step = "leave this precision out of --precision, or report the node"
    return (f"onnxruntime cannot load the model {producer} wrote: {where} is invalid "
            f"({type(error).__name__}: {text.strip()}). Next step: {step}")


def check_onnx_file(path: Path, log_path: Path | None = None, producer: str = "paddle2onnx"):
    """paddle2onnx can exit 0 and leave a 0-byte or unloadable file: load, check and open it in onnxruntime."""
    import onnx

    from paddle2ort.runtime.session import SessionOptions, create_session

    tail = log_tail(log_path) if log_path else ""
    if not path.is_file():
        raise ConversionError(f"{producer} reported success but wrote no file at {path}", tail)
    if path.stat().st_size == 0:
        raise ConversionError(f"{producer} wrote an empty (0-byte) ONNX file at {path}", tail)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError/ValidationError/...
        raise ConversionError(f"{producer} wrote an invalid ONNX file ({type(e).__name__}: {e})", tail) from e
    try:
        create_session(path, SessionOptions(device="cpu"))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises Fail/InvalidGraph/...
        raise ConversionError(_load_failure(producer, e), tail) from e
    return model


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
        onnx.save(model, str(path))
    return done


# paddle2onnx 2.1.0 fails to parse a parameters file over 2 GiB (measured: a 2.25 GB embedding ends in
# "ValueError: vector::_M_default_append" while parsing; 1.95 GB exports); its external-data writer is never reached
PADDLE2ONNX_MAX_PARAMS = 2 ** 31 - 1


def check_params_size(params_bytes: int, what: str) -> None:
    """Before any export: paddle2onnx cannot read more than 2 GiB of parameters."""
    if params_bytes > PADDLE2ONNX_MAX_PARAMS:
        raise ConversionError(f"{what} holds {params_bytes / 1e9:.2f} GB of parameters; paddle2onnx 2.1.0 cannot "
                              f"read a parameters file over 2 GiB ({PADDLE2ONNX_MAX_PARAMS / 1e9:.2f} GB), so the "
                              "generic export cannot convert it. For a causal LM, the fused decoder "
                              "(paddle2ort.convert.llm.fused.build_variant) has no such limit (external data)")


def export(source: ModelSource, save_file: Path, opset: int, workdir: Path) -> ExportResult:
    params = Path(source.params_file) if source.params_file else None
    if params is not None and params.is_file():
        check_params_size(params.stat().st_size, str(params))
    log_path, repairs = run_paddle2onnx(source, save_file, opset, workdir)
    if save_file.is_file() and save_file.stat().st_size:
        repairs = repairs + repair_file(save_file)
    model = check_onnx_file(save_file, log_path)
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:
        log.warning("paddle2onnx raised the opset from %d to %d (an operator needs it); recorded in the manifest",
                    opset, written)
    return ExportResult(save_file, opset, written, log_path, repairs)
