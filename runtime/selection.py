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


# without a release decision: the most exact precision the bundle has, in this order per device
PREFERENCE = {"cpu": ("fp32", "int8", "fp16", "int4"), "gpu": ("fp32", "fp16", "int8", "int4")}


def default_precision(manifest_or_bundle: Manifest | Bundle, device: str = "cpu",
                      available: tuple[str, ...] | None = None) -> str:
    """The released precision for `device`, else the first of PREFERENCE[device] among `available` (default: the
    bundle's models; FP32 where it has one). A bundle converted without FP32 is not refused for lacking it."""
    chosen = chosen_precision(manifest_or_bundle, device) if available is None else None
    if chosen is not None:
        log.info("using %s: the precision `paddle2ort release` chose for %s (give a precision to override)",
                 chosen, device)
        return chosen
    m = manifest_or_bundle.manifest if isinstance(manifest_or_bundle, Bundle) else manifest_or_bundle
    have = tuple(m.models) if available is None else tuple(available)
    order = PREFERENCE.get(device, PREFERENCE["cpu"])
    pick = next((p for p in order if p in have), None) or (have[0] if have else DEFAULT_PRECISION)
    if pick != DEFAULT_PRECISION:
        log.info("using %s: the bundle has no %s model (give a precision to choose another of: %s)",
                 pick, DEFAULT_PRECISION, ", ".join(have))
    return pick
