"""The typed errors of every part of paddle2ort, defined in the lowest layer so every layer can raise them.

Each carries the CLI exit code it maps to: 2 bad input, 3 validation failed, 4 conversion failed, 1 unexpected.
`paddle2ort.runtime.errors` re-exports these (the public place to import them from above this layer).
"""


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
