"""Stage 2: Paddle program -> ONNX with paddle2onnx (in a child process), then catch its silent failures."""
from __future__ import annotations

import logging
from dataclasses import dataclass
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


def run_paddle2onnx(source: ModelSource, save_file: Path, opset: int, workdir: Path) -> Path:
    """Run paddle2onnx in a child process; return the path of its log. Replaceable in tests."""
    res = run_worker("export", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                "save_file": str(save_file), "opset": opset}, workdir)
    return Path(res["log_path"])


def check_onnx_file(path: Path, log_path: Path | None = None, producer: str = "paddle2onnx"):
    """paddle2onnx can exit 0 and leave a 0-byte or unloadable file: load, check and open it in onnxruntime."""
    import onnx
    import onnxruntime as ort

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
        so = ort.SessionOptions()
        so.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"onnxruntime cannot load the model {producer} wrote ({type(e).__name__}: {e})", tail) from e
    return model


def export(source: ModelSource, save_file: Path, opset: int, workdir: Path) -> ExportResult:
    log_path = run_paddle2onnx(source, save_file, opset, workdir)
    model = check_onnx_file(save_file, log_path)
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if written != opset:
        log.warning("paddle2onnx raised the opset from %d to %d (an operator needs it); recorded in the manifest",
                    opset, written)
    return ExportResult(save_file, opset, written, log_path)
