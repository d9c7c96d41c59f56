"""paddle2ort.runtime: ONNX Runtime sessions, task pipelines and the decode loop.

Never imports Paddle: a deployment host has only onnxruntime(-gpu), numpy and tokenizers.
"""
from .errors import BadInputError, BundleError, DeviceError, Paddle2OrtError
from .manifest import Bundle, Manifest, load_bundle
from .generation import GenerationConfig, Generator, generate
from .session import SessionOptions, create_session

__all__ = [
    "BadInputError", "Bundle", "BundleError", "DeviceError", "GenerationConfig", "Generator", "Manifest",
    "Paddle2OrtError", "SessionOptions", "create_session", "generate", "load_bundle",
]
