"""Typed errors shared by every part of paddle2ort (defined in the lowest layer, `tokenization.errors`, so that
layer raises them without importing upwards). Exit codes: 2 bad input, 3 validation failed, 4 conversion failed."""
from paddle2ort.tokenization.errors import BadInputError, BundleError, DeviceError, Paddle2OrtError

__all__ = ["BadInputError", "BundleError", "DeviceError", "Paddle2OrtError"]
