"""PaddleNLP causal LMs -> a KV-cache decoder ONNX bundle (paddle2ort.convert.llm.convert_llm)."""
from .api import LLMConvertConfig, convert_llm

__all__ = ["LLMConvertConfig", "convert_llm"]
