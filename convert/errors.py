"""Typed converter errors. Exit codes: 2 bad input, 3 validation failed, 4 conversion failed."""
from __future__ import annotations

import math
import re

from paddle2ort.runtime.errors import BadInputError, Paddle2OrtError

__all__ = ["BadInputError", "ConversionError", "LabelCountError", "NothingToQuantizeError", "OperatorFormError",
           "Paddle2OrtError", "UnsupportedOperatorsError", "ValidationError"]


class ConversionError(Paddle2OrtError):
    """paddle2onnx (or a precision pass) failed or produced an unusable model."""

    exit_code = 4

    def __init__(self, message: str, log_tail: str = ""):
        self.log_tail = log_tail
        if log_tail:
            message = f"{message}\n--- last lines of the converter log ---\n{log_tail}"
        super().__init__(message)


class NothingToQuantizeError(BadInputError):
    """INT8 was asked of a model with none of the op types dynamic quantization rewrites (exit 2, before any gate)."""


class LabelCountError(BadInputError):
    """The class labels given are not as many as the model's classes (exit 2, after the cheap inspect stage)."""

    def __init__(self, message: str, labels: tuple[str, ...] = (), classes: int = 0, shape: list = ()):
        super().__init__(message)
        self.labels, self.classes, self.shape = tuple(labels), classes, shape


class UnsupportedOperatorsError(ConversionError):
    """The Paddle program uses operators paddle2onnx cannot convert; lists all of them with counts."""

    def __init__(self, ops: dict[str, int], paddle2onnx_version: str = ""):
        self.ops = dict(sorted(ops.items()))
        listing = ", ".join(f"{name} (x{n})" for name, n in self.ops.items())
        known = [OPERATOR_HINTS[op] for op in self.ops if op in OPERATOR_HINTS]
        super().__init__(
            f"{len(self.ops)} operator type(s) in the Paddle program are not supported by paddle2onnx "
            f"{paddle2onnx_version}: {listing}. Rewrite those layers with supported ops before export "
            "(e.g. replace fused ops by their primitive form), or register a custom op mapping."
            + "".join(f" {h}" for h in known))


# what to do about the unsupported operators users meet most, beyond the generic advice
OPERATOR_HINTS = {
    "pd_op.viterbi_decode": "viterbi_decode (a CRF's decoding, paddle.text.ViterbiDecoder): export the model up to its "
                            "emissions and decode outside it with the CRF's transitions, or write the decoding with "
                            "max / argmax / take_along_axis over the sequence (unrolled to its length).",
}


class QuantizedProgramError(ConversionError):
    """A Paddle program already quantized (PaddleSlim / paddle.quantization: quantize_linear, dequantize_linear or
    fake-quant ops): paddle2onnx cannot export it to an INT8 ONNX model that computes as Paddle does."""

    def __init__(self, ops: dict[str, int], paddle2onnx_version: str = ""):
        self.ops = dict(sorted(ops.items()))
        listing = ", ".join(f"{name} (x{n})" for name, n in self.ops.items())
        super().__init__(
            f"the Paddle program is already quantized ({listing}): paddle2onnx {paddle2onnx_version} writes "
            "quantize_linear/dequantize_linear only as FP8 at opset 19 (an INT8-quantized program aborts its export; "
            "an FP8 one computed at cosine 0.16 against Paddle in a trial) and no fake-quant op at all. Convert the "
            "float model it was quantized from instead: --precision fp32,fp16,int8 makes INT8 with onnxruntime's "
            "quantizer, and the gate judges each against Paddle.")


class InexactPoolingError(ConversionError):
    """Adaptive pooling over a map whose size its output size does not divide: paddle2onnx writes every adaptive
    pool as one fixed-window AveragePool/MaxPool, which is Paddle's pooling only where the bins are all alike."""

    def __init__(self, pools: list[dict], inputs: list[dict], paddle2onnx_version: str = ""):
        sizes = sorted({(tuple(p["input"]), tuple(p["output"])) for p in pools})
        listing = ", ".join(f"{'x'.join(map(str, i))} -> {'x'.join(map(str, o))}" for i, o in sizes)
        need = math.lcm(*(o for _, out in sizes for o in out))
        image = next((i for i in inputs if len(i["shape"]) == 4 and min(i["shape"][2:]) > 0), None)
        hint = ""
        if image is not None:
            ratio = image["shape"][2] // sizes[0][0][0] if sizes[0][0][0] else 0
            if ratio and image["shape"][2] == ratio * sizes[0][0][0]:
                size = need * ratio * max(1, -(-sizes[0][0][0] // need))
                hint = f" (input {image['name']!r} at {size}x{size}, where the pooled map is {size // ratio})"
        super().__init__(
            f"paddle2onnx {paddle2onnx_version} writes adaptive pooling as one fixed window, which differs from "
            f"Paddle's where the map size is not a multiple of the output size, and this model pools {listing} "
            f"({len(pools)} place(s)): the ONNX model would compute other values. Re-export it at an input size "
            f"where every pooled map divides by {need}{hint}.".replace("paddle2onnx  ", "paddle2onnx "))


# paddle2onnx's mapper refusing one use of an operator it supports (an attribute it has no ONNX form for), as its
# log says before it aborts: "[ERROR][Paddle2ONNX] [OP: pd_op.conv2d] Cannot support input with NHWC format."
_REFUSAL = re.compile(r"\[ERROR\]\[Paddle2ONNX\] \[OP: ([\w.]+)\] (.+)")
# aborts paddle2onnx logs without naming the op: (pattern, the op form, why)
_UNNAMED_REFUSALS = (
    (re.compile(r"Only support data type of FLOAT/DOUBLE/INT32/INT64 in Constant function"),
     "pd_op.full / full_like of dtype bool", "paddle2onnx writes no bool constant"),
)
BOOL_CONSTANT_FIX = ("Re-export the model with its bool constants made as int32 and cast "
                     "(paddle.full(shape, 1, 'int32').astype('bool') for paddle.full(shape, True); a bool tensor for "
                     "paddle.to_tensor(False); a tensor, not a Python bool, as paddle.where's or masked_fill's value)")


class OperatorFormError(ConversionError):
    """paddle2onnx supports the operator but not the form this model uses it in (NHWC convolutions, a stride past
    the kernel...): it names each refusal in its log, then aborts; this error lists those, not the abort."""

    def __init__(self, refusals: dict[str, list[str]], paddle2onnx_version: str = ""):
        self.refusals = refusals
        listing = "; ".join(f"{op}: {' / '.join(why)}" for op, why in refusals.items())
        reasons = " ".join(w for why in refusals.values() for w in why).lower()
        if any(op == _UNNAMED_REFUSALS[0][1] for op in refusals):
            fix = BOOL_CONSTANT_FIX
        elif "static input shape" in reasons or "static shape" in reasons:
            fix = ("Re-export the model with a fixed input shape (paddle.static.InputSpec([1, 3, H, W]) instead of "
                   "None dims; PaddleSeg: tools/export.py --input_shape 1 3 H W), H and W such that every adaptive "
                   "pooling's input map divides by its output size")
        else:
            fix = ("Re-export the model with those layers in a form it converts (e.g. data_format='NCHW' for "
                   "convolutions), or rewrite them with other ops")
        super().__init__(
            f"paddle2onnx {paddle2onnx_version} supports the operator type(s) but not the form this model uses: "
            f"{listing}. {fix}.".replace("paddle2onnx  ", "paddle2onnx "))

    @staticmethod
    def from_log(text: str, paddle2onnx_version: str = "") -> "OperatorFormError | None":
        """The refusals paddle2onnx logged, or None where it logged none (another crash)."""
        found: dict[str, list[str]] = {}
        for op, why in _REFUSAL.findall(text):
            why = why.strip().rstrip(".")
            if why not in found.setdefault(op, []):
                found[op].append(why)
        for pattern, op, why in _UNNAMED_REFUSALS:
            if pattern.search(text):
                found.setdefault(op, [why])
        return OperatorFormError(found, paddle2onnx_version) if found else None


def _figures(m: dict) -> str:
    """A failed output's figures in one bracket: error figures, or a label output's agreements (convert.labels)."""
    if m.get("kind") == "parameters":   # the FP32 weights against Paddle's parameters (convert.paddle_params)
        return (f"{m['checked']} of {m['parameters']} parameters compared bit for bit, largest difference "
                f"{m['max_abs_diff']:.3g}")
    if "checked" in m:                  # the lineage row (convert.lineage): weights and nodes, no output figures
        return f"{m['checked']} weights and nodes checked, largest excess over rounding {m['max_abs_diff']:.3g}"
    if m.get("kind") == "labels":
        return (f"label_agreement={m['argmax_agreement']}, class_agreement={m['class_agreement']}, "
                f"near_ties={m['near_ties']} of {m['label_rows']}, margins from the {m['margin_scores']} scores")
    return (("in logit space: " if m.get("kind") == "sigmoid logits" else "") +
            f"max_abs_diff={m['max_abs_diff']:.3g}, max_rel_diff={m['max_rel_diff']:.3g}, "
            f"cosine={m['cosine']:.6f}, argmax_agreement={m['argmax_agreement']}")


def thresholded(failure: dict) -> bool:
    """A gate failure some --threshold could move: figures, not the lineage check's structure or a shape."""
    return failure.get("kind") != "lineage" and "shape_ref" not in failure.get("metrics", {})


class ValidationError(Paddle2OrtError):
    """ONNX Runtime's outputs do not match Paddle's within the precision's thresholds."""

    exit_code = 3

    def __init__(self, precision: str, failures: list[dict]):
        self.precision = precision
        self.failures = failures
        lines = [f"{precision}: ONNX output does not match Paddle:"]
        for f in failures:
            m = f["metrics"]
            where = "" if f.get("kind") == "lineage" else f" (sample {f['sample']})"   # weights: no samples
            lines.append(f"  output {f['output']!r}{where}: {'; '.join(f['violations'])} [{_figures(m)}]")
        self._body = lines
        # a threshold moves only figures: not a missing node or changed weight (the lineage check), not a shape;
        # and none is worth moving where a weight or node is changed as well
        self._override = ([self.OVERRIDE] if any(thresholded(f) for f in failures)
                          and not any(f.get("kind") == "lineage" for f in failures) else [])
        super().__init__("\n".join(lines + self._override))
        self.report: dict | None = None

    OVERRIDE = "Thresholds can be overridden (--threshold PRECISION.METRIC=VALUE) if this difference is expected."

    def with_hint(self, hint: str) -> "ValidationError":
        """Put the likely fix before the generic threshold advice."""
        self.args = ("\n".join(self._body + [hint] + self._override),)
        return self

    def with_report(self, report: dict) -> "ValidationError":
        self.report = report
        return self
