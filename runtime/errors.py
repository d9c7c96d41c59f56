"""Typed errors shared by every part of paddle2ort. Each carries the CLI exit code it maps to."""


class Paddle2OrtError(Exception):
    """Base of all paddle2ort errors; `exit_code` is what the CLI returns."""

    exit_code = 1


class BadInputError(Paddle2OrtError):
    """The user's input (path, file, option value) is wrong; the message names the problem and the fix."""

    exit_code = 2


class BundleError(BadInputError):
    """A deploy bundle is missing, incomplete, of an unknown schema, or fails its checksums."""


class DeviceError(Paddle2OrtError):
    """The requested device/provider is not available (e.g. CUDA asked for on a host without a GPU)."""

    exit_code = 2
