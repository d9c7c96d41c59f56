"""`convert()`: Paddle inference model -> validated ONNX variants in a deploy bundle. The CLI is a thin layer on it."""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paddle2ort.runtime.manifest import (MANIFEST_NAME, SCHEMA_VERSION, VALIDATION_NAME, Manifest, ModelFile,
                                         load_bundle, sha256_file)

from . import export as export_stage
from .bundle import staged_bundle, write_json
from .errors import BadInputError, UnsupportedOperatorsError, ValidationError
from .graph import rename_and_annotate, share_duplicate_weights
from .paddle_proc import run_worker
from .precision import PRECISIONS, FP16Options, Int4Options, Int8Options, make_variant
from .source import ModelSource, locate
from .validate import (DEFAULT_THRESHOLDS, SampleConfig, Thresholds, load_samples, make_samples, summary,
                       validate)

log = logging.getLogger(__name__)

SAMPLES_NAME = "validation_inputs.npz"
MIN_OPSET, MAX_OPSET = 7, 21


def tokenizer_files(tokenizer_dir: Path, max_seq_length: int) -> tuple[dict, dict[str, Path]]:
    """(manifest tokenizer section, extra_files) carrying a WordPiece tokenizer directory into the bundle."""
    from paddle2ort.tokenization import tokenizer_config
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file() or not (tokenizer_dir / "vocab.txt").is_file():
        raise BadInputError(f"tokenizer directory {tokenizer_dir} must hold tokenizer.json and vocab.txt")
    return tokenizer_config(tokenizer_dir, max_seq_length).to_json(), {"tokenizer": tokenizer_dir}


@dataclass(frozen=True)
class ConvertConfig:
    source: Path
    output: Path
    precisions: tuple[str, ...] = ("fp32",)
    opset: int = 17
    validate: bool = True
    overwrite: bool = False
    inputs_npz: Path | None = None                 # user sample inputs; generated from the specs when None
    samples: SampleConfig = SampleConfig()
    output_names: tuple[str, ...] | None = None    # default: named after the producing operator
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    fp16: FP16Options = FP16Options()
    int8: Int8Options = Int8Options()
    int4: Int4Options = Int4Options()
    name: str | None = None
    task: str | None = None
    labels: tuple[str, ...] | None = None
    extra_files: dict[str, Path] = field(default_factory=dict)   # bundle-relative name -> file/dir to copy in
    tokenizer: dict | None = None                  # manifest's tokenizer section (files listed in extra_files)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "output", Path(self.output))
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise BadInputError(f"unknown precision(s) {bad or '(none)'}; choose from {', '.join(PRECISIONS)}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise BadInputError(f"opset {self.opset} is out of range; paddle2onnx exports opsets "
                                f"{MIN_OPSET}..{MAX_OPSET}")
        if self.inputs_npz is not None and not Path(self.inputs_npz).is_file():
            raise BadInputError(f"sample inputs file {self.inputs_npz} does not exist")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise BadInputError("labels must be unique")


@dataclass(frozen=True)
class ConvertResult:
    bundle: Path
    manifest: Manifest
    reports: dict[str, dict]


def _versions(info: dict) -> dict[str, str]:
    import onnx
    import onnxruntime
    from importlib.metadata import version
    return {"paddle2ort": version("paddle2ort"), "paddle": info["paddle_version"],
            "paddle2onnx": info["paddle2onnx_version"], "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def _save_samples(path: Path, samples: list[dict[str, np.ndarray]]) -> None:
    np.savez(path, **{f"{i}/{k}": v for i, s in enumerate(samples) for k, v in s.items()})


def paddle_reference(source: ModelSource, samples: list[dict], workdir: Path) -> list[list[np.ndarray]]:
    """Run Paddle Inference (in the worker) on the samples; outputs in fetch order."""
    inp, outp = workdir / "ref_inputs.npz", workdir / "ref_outputs.npz"
    _save_samples(inp, samples)
    res = run_worker("reference", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                   "inputs_npz": str(inp), "outputs_npz": str(outp),
                                   "num_samples": len(samples)}, workdir)
    data = np.load(outp)
    return [[data[f"{i}/{j}"] for j in range(res["num_outputs"])] for i in range(len(samples))]


def inspect(source: ModelSource, workdir: Path) -> dict:
    info = run_worker("inspect", {"model_file": str(source.model_file), "params_file": str(source.params_file)},
                      workdir)
    if info["unsupported"]:
        raise UnsupportedOperatorsError(info["unsupported"], info["paddle2onnx_version"])
    return info


def convert(config: ConvertConfig) -> ConvertResult:
    """Convert, validate and bundle. Raises BadInputError / ConversionError / ValidationError; writes nothing
    at `config.output` unless every requested precision passed its gate."""
    source = locate(config.source)
    work = Path(tempfile.mkdtemp(prefix="paddle2ort-"))
    steps = 4 + 2 * len(config.precisions)
    bar = tqdm(total=steps, desc="convert", unit="step", leave=False, disable=None)  # None: off when not a TTY
    try:
        with staged_bundle(config.output, config.overwrite) as stage:
            bar.set_postfix_str("inspect")
            info = inspect(source, work)
            log.info("%s model %s: %d inputs, %d outputs, %d ops, all supported by paddle2onnx %s",
                     source.format, source.model_file.name, len(info["inputs"]), len(info["outputs"]),
                     sum(info["ops"].values()), info["paddle2onnx_version"])
            bar.update()

            bar.set_postfix_str("paddle2onnx")
            raw = work / "raw.onnx"
            exp = export_stage.export(source, raw, config.opset, work)
            bar.update()

            import onnx
            model, in_specs, out_specs = rename_and_annotate(onnx.load(str(raw)), info["inputs"], info["outputs"],
                                                             list(config.output_names) if config.output_names else None)
            saved = share_duplicate_weights(model)
            if saved >= 1e6:
                log.info("shared %.1f MB of duplicated constant weights", saved / 1e6)
            files = {"fp32": stage / "model.fp32.onnx"}
            onnx.save(model, str(files["fp32"]))
            export_stage.check_onnx_file(files["fp32"], producer="output renaming")
            options = {"fp32": {}}

            bar.set_postfix_str("paddle reference")
            samples = (load_samples(config.inputs_npz, info["inputs"]) if config.inputs_npz
                       else make_samples(info["inputs"], config.samples))
            refs = paddle_reference(source, samples, work) if config.validate else None
            bar.update()

            reports: dict[str, dict] = {}
            order = ["fp32"] + [p for p in config.precisions if p != "fp32"]
            for prec in order:
                if prec != "fp32":
                    bar.set_postfix_str(prec)
                    files[prec] = stage / f"model.{prec}.onnx"
                    options[prec] = make_variant(prec, files["fp32"], files[prec], config.fp16, config.int8,
                                                 config.int4)
                    export_stage.check_onnx_file(files[prec], producer=f"the {prec} pass")
                bar.update()
                if config.validate:
                    bar.set_postfix_str(f"validate {prec}")
                    thr = config.thresholds.get(prec, DEFAULT_THRESHOLDS[prec])
                    reports[prec] = validate(prec, files[prec], samples, refs, out_specs, thr)
                    s = summary(reports[prec])
                    log.info("%s passed: max_rel_diff=%.3g cosine=%.6f argmax=%s", prec, s["max_rel_diff"],
                             s["min_cosine"], s["min_argmax_agreement"])
                bar.update()

            _save_samples(stage / SAMPLES_NAME, samples)
            for rel, src in config.extra_files.items():
                dst = stage / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
            manifest = Manifest(
                schema_version=SCHEMA_VERSION,
                name=config.name or source.model_file.parent.name or source.model_file.stem,
                task=config.task, labels=config.labels, inputs=tuple(in_specs), outputs=tuple(out_specs),
                opset=exp.opset_written,
                models={p: ModelFile(precision=p, file=f.name, sha256=sha256_file(f), size_bytes=f.stat().st_size,
                                     io_dtype="float32" if (p != "fp16" or config.fp16.keep_io_types) else "float16",
                                     options=options[p])
                        for p, f in files.items()},
                source={"format": source.format, "model_file": source.model_file.name,
                        "params_file": source.params_file.name,
                        "sha256": {source.model_file.name: sha256_file(source.model_file),
                                   source.params_file.name: sha256_file(source.params_file)},
                        "opset_requested": config.opset, "operators": info["ops"]},
                versions=_versions(info),
                validation={p: summary(r) for p, r in reports.items()} if config.validate else None,
                tokenizer=config.tokenizer,
                extra=dict(config.extra),
                created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
            write_json(stage / MANIFEST_NAME, manifest.to_json())
            write_json(stage / VALIDATION_NAME, {"validated": config.validate, "reports": reports})
        bar.close()
        return ConvertResult(config.output, manifest, reports)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)


def revalidate(bundle_dir: Path, source_path: Path, thresholds: dict[str, Thresholds] | None = None) -> dict:
    """Re-run the gate on an existing bundle against its Paddle source (release pipelines, tampering checks)."""
    bundle = load_bundle(bundle_dir)
    source = locate(source_path)
    thresholds = thresholds or dict(DEFAULT_THRESHOLDS)
    work = Path(tempfile.mkdtemp(prefix="paddle2ort-"))
    try:
        info = inspect(source, work)
        samples_path = bundle.path / SAMPLES_NAME
        samples = (load_samples(samples_path, info["inputs"]) if samples_path.is_file()
                   else make_samples(info["inputs"], SampleConfig()))
        refs = paddle_reference(source, samples, work)
        reports, failed = {}, []
        for prec in bundle.manifest.models:
            try:
                reports[prec] = validate(prec, bundle.model_path(prec), samples, refs,
                                         list(bundle.manifest.outputs), thresholds.get(prec, DEFAULT_THRESHOLDS[prec]))
            except ValidationError as e:
                reports[prec] = e.report
                failed.append(e)
        changed = bundle.verify_checksums()
        if changed:
            log.warning("files changed since conversion (sha256 differs from the manifest): %s", ", ".join(changed))
        if failed:
            raise failed[0]
        return reports
    finally:
        shutil.rmtree(work, ignore_errors=True)
