"""The precision a bundle's release gate chose per device (`paddle2ort release`), read from the manifest.

`manifest.extra["release"]` = {device: {"chosen": precision | None, "candidates": [...], ...}}; pipelines use the
chosen precision when the caller names none.
"""
from __future__ import annotations

import logging

from .errors import BundleError
from .manifest import Bundle, Manifest

log = logging.getLogger(__name__)

DEFAULT_PRECISION = "fp32"


def chosen_precision(manifest_or_bundle: Manifest | Bundle, device: str = "cpu") -> str | None:
    """The release decision for `device`, or None when the bundle was not released (or not for that device)."""
    m = manifest_or_bundle.manifest if isinstance(manifest_or_bundle, Bundle) else manifest_or_bundle
    release = m.extra.get("release")
    if release is None:
        return None
    if not isinstance(release, dict) or not all(isinstance(v, dict) for v in release.values()):
        raise BundleError("manifest field 'extra.release' must be an object {device: {chosen, candidates, ...}}; "
                          "the bundle is damaged: run `paddle2ort release` again")
    chosen = (release.get(device) or {}).get("chosen")
    if chosen is not None and chosen not in m.models:
        raise BundleError(f"manifest field 'extra.release.{device}.chosen' names {chosen!r}, which the bundle has no "
                          f"model for (it has: {', '.join(m.models)}); run `paddle2ort release` again")
    return chosen


def default_precision(manifest_or_bundle: Manifest | Bundle, device: str = "cpu") -> str:
    """The released precision for `device`, else FP32."""
    chosen = chosen_precision(manifest_or_bundle, device)
    if chosen is not None:
        log.info("using %s: the precision `paddle2ort release` chose for %s (give a precision to override)",
                 chosen, device)
    return chosen or DEFAULT_PRECISION
