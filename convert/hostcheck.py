"""The conversion gate re-run on the host a bundle is deployed to, without Paddle.

The gate judged each model on the converter's CPU; INT8 and FP16 kernels round differently with AVX2, AVX-512 VNNI
and AMX, and onnxruntime's CUDA provider computes otherwise again. `convert` keeps Paddle's outputs on the gate's
samples in the bundle (validation_outputs.npz, beside validation_inputs.npz), so a deployment host (or a release
pipeline's test stage on each kind of host) re-runs the same judgement here: every file's checksum first, the same
samples, the same rules and bounds (`validate`), each model run by this host's onnxruntime on its CPU or GPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from paddle2ort.runtime.files import read_json_object
from paddle2ort.runtime.host import describe_host
from paddle2ort.runtime.manifest import VALIDATION_NAME, load_bundle

from .errors import BadInputError
from .validate import Thresholds, load_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostCheck:
    """What a host check found: this host and the converter's, and the report of every model (all passed)."""
    bundle: Path
    host: dict
    gate_host: dict | None          # where the conversion gate ran (None: a bundle written before it was recorded)
    reports: dict[str, dict]


def check_inputs(bundle_dir: Path, device: str = "cpu", thresholds: dict[str, Thresholds] | None = None,
                 overrides: dict[str, float] | None = None):
    """Everything the check needs, refused before any model runs: -> (bundle, thresholds, samples, refs,
    recorded validation report)."""
    from .api import REFERENCE_NAME, SAMPLES_NAME, check_gate_device, load_references, rerun_thresholds
    check_gate_device(device)
    bundle = load_bundle(bundle_dir, verify=True)      # every file's sha256 first
    thresholds = rerun_thresholds(bundle, thresholds, overrides)
    m = bundle.manifest
    recorded = read_json_object(bundle.path / VALIDATION_NAME, "validation report", "convert the model again") \
        if (bundle.path / VALIDATION_NAME).is_file() else {}
    if not recorded.get("validated") or not m.validation:
        raise BadInputError(f"bundle {bundle_dir} was written without the conversion gate (--no-validate): there is "
                            "no judgement to re-run; convert the model again without --no-validate")
    missing = [n for n in (SAMPLES_NAME, REFERENCE_NAME) if not (bundle.path / n).is_file()]
    if missing:
        what = {SAMPLES_NAME: "the gate's samples",
                REFERENCE_NAME: "Paddle's outputs on them, kept up to 256 MB; an older bundle lacks them"}
        raise BadInputError(f"bundle {bundle_dir} has no {' and no '.join(f'{n} ({what[n]})' for n in missing)}: "
                            f"re-run the gate against the Paddle model instead (paddle2ort validate {bundle_dir} "
                            "--source MODEL, on a host with the converter side), or convert the model again")
    specs = [{"name": s.name, "dtype": s.dtype, "shape": [d if isinstance(d, int) else -1 for d in s.shape]}
             for s in m.inputs]
    samples = load_samples(bundle.path / SAMPLES_NAME, specs)
    refs = load_references(bundle.path / REFERENCE_NAME, len(samples), len(m.outputs))
    return bundle, thresholds, samples, refs, recorded


def check_host(bundle_dir: Path, device: str = "cpu", thresholds: dict[str, Thresholds] | None = None,
               overrides: dict[str, float] | None = None, only: set[str] | None = None) -> HostCheck:
    """Re-run `bundle_dir`'s conversion gate here against the Paddle outputs it keeps: every model (and a
    text-generation bundle's fused decoders) judged whatever another did, on this host's CPU or (device "gpu")
    onnxruntime's CUDA provider. The failures are raised together as GateRerunError (exit code: the most serious of
    theirs); BadInputError (exit 2) where the bundle cannot be checked this way, before any model runs. only: the
    precisions to judge (default all)."""
    from .api import judge_bundle
    bundle, thresholds, samples, refs, recorded = check_inputs(bundle_dir, device, thresholds, overrides)
    host = describe_host(device)
    log.info("re-running the gate of %s on %d recorded sample(s) here: %s", bundle.path, len(samples),
             host["cpu"] if device == "cpu" else host["provider"])
    passed = judge_bundle(bundle, Path(bundle_dir), samples, refs, thresholds, device, only)
    return HostCheck(bundle.path, host, recorded.get("host"), passed)
