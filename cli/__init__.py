"""paddle2ort.cli: the `paddle2ort` command (the front door; imports flow cli -> benchmarks -> convert -> runtime
-> tokenization). `python -m paddle2ort.cli COMMAND ...` works as well as the console script."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
