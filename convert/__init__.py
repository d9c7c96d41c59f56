"""paddle2ort.convert: Paddle inference model -> validated ONNX (FP32/FP16/INT8) in a deploy bundle.

The only part of paddle2ort that uses Paddle, and only in child processes (paddle2onnx aborts on C++ errors).
Stages, one module each: source (locate) -> export (paddle2onnx) -> graph (names) -> precision -> validate -> bundle.
"""
from .api import ConvertConfig, ConvertResult, convert, revalidate
from .errors import BadInputError, ConversionError, Paddle2OrtError, UnsupportedOperatorsError, ValidationError
from .precision import FP16Options, Int4Options, Int8Options
from .validate import SampleConfig, Thresholds

__all__ = [
    "BadInputError", "ConversionError", "ConvertConfig", "ConvertResult", "FP16Options", "Int4Options", "Int8Options",
    "Paddle2OrtError", "SampleConfig", "Thresholds", "UnsupportedOperatorsError", "ValidationError",
    "convert", "revalidate",
]
