"""`convert()`: Paddle inference model -> validated ONNX variants in a deploy bundle. The CLI is a thin layer on it."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paddle2ort.runtime.files import read_json_object
from paddle2ort.runtime.host import describe_host
from paddle2ort.runtime.load_probe import highest_loading_level
from paddle2ort.runtime.manifest import (MANIFEST_NAME, SCHEMA_VERSION, VALIDATION_NAME, Manifest, ModelFile,
                                         file_entries, load_bundle, sha256_file)

from . import export as export_stage
from .bundle import check_outside_inputs, staged_bundle, write_json
from .errors import (BadInputError, ConversionError, InexactPoolingError, LabelCountError, QuantizedProgramError,
                     UnsupportedOperatorsError, ValidationError, thresholded)
from .fusion import FusionConfig, bundle_graphs
from .graph import _IDENT, pin_unbatchable, rename_and_annotate, shape_only_outputs, share_duplicate_weights
from .paddle_params import gate_parameters, paddle_parameters
from .labels import mask_sources
from .ocr import CLASSES_FILE as OCR_CLASSES_FILE
from .ocr import DB_DEFAULTS, ctc_labels, direction_settings, paddlex_detector, paddlex_dictionary
from .ocr import DET_TASK as OCR_DET_TASK
from .ocr import DIR_TASK as OCR_DIR_TASK
from .ocr import TASK as OCR_TASK
from .paddle_proc import make_workdir, run_worker, sigterm_as_interrupt
from .ppdet import TASK as DET_TASK
from .ppdet import detection_settings, read_infer_cfg
from .ppseg import read_deploy_yaml, segmentation_settings
from .precision import PRECISIONS, FP16Options, Int4Options, Int8Options, check_quantizable, make_variant
from .source import ModelSource, locate, prepare
from .value_range import class_axis_outputs
from .samples import is_pixels
from .validate import (DEFAULT_THRESHOLDS, FIX_INPUTS, LINEAGE_ROW, GateRerunError, SampleConfig, Thresholds,
                       check_signal, gate_text, load_samples, make_samples, summary, validate)

log = logging.getLogger(__name__)

SAMPLES_NAME = "validation_inputs.npz"
REFERENCE_NAME = "validation_outputs.npz"      # Paddle's outputs on them (a re-run of the gate without Paddle)
REFERENCE_MAX_BYTES = 256 * 2**20
MIN_OPSET, MAX_OPSET = 7, 21


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_files(tokenizer_dir: Path, max_seq_length: int) -> tuple[dict, dict[str, Path | bytes]]:
    """(manifest tokenizer section, extra_files) carrying a WordPiece tokenizer's files (only those) into the bundle.
    A directory PaddleNLP's save_pretrained wrote (vocab.txt + tokenizer_config.json, no tokenizer.json) gets its
    tokenizer.json made from the vocabulary (tokenization/wordpiece.py)."""
    from tokenizers import Tokenizer

    from paddle2ort.tokenization import tokenizer_config
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise BadInputError(f"tokenizer directory {tokenizer_dir} " + ("is a file; give the directory holding "
                            "vocab.txt (and tokenizer.json)" if tokenizer_dir.exists() else "does not exist"))
    if not (tokenizer_dir / "vocab.txt").is_file():
        raise BadInputError(f"tokenizer directory {tokenizer_dir} must hold vocab.txt (the WordPiece vocabulary; "
                            "tokenizer.json too where there is one): give the folder the tokenizer was saved to")
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or not 2 <= max_seq_length <= 1 << 20:
        raise BadInputError(f"max_seq_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_seq_length}")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            read_json_object(tokenizer_dir / name, "tokenizer file", "give the tokenizer's original files")
    cfg = tokenizer_config(tokenizer_dir, max_seq_length)
    files: dict[str, Path | bytes] = {f"tokenizer/{n}": tokenizer_dir / n for n in TOKENIZER_FILES
                                      if (tokenizer_dir / n).is_file()}
    if not (tokenizer_dir / "tokenizer.json").is_file():
        from paddle2ort.tokenization.wordpiece import wordpiece_json
        made = wordpiece_json(tokenizer_dir / "vocab.txt", cfg)
        log.info("tokenizer: %s has no tokenizer.json; made one from vocab.txt (WordPiece, lower case %s)",
                 tokenizer_dir, cfg.do_lower_case)
        files["tokenizer/tokenizer.json"] = made.encode("utf-8")
        return cfg.to_json(), files
    try:
        Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
        raise BadInputError(f"tokenizer file {tokenizer_dir / 'tokenizer.json'} cannot be loaded by HF tokenizers "
                            f"({e}); give the tokenizer's original tokenizer.json") from e
    return cfg.to_json(), files


def check_name(name: str | None) -> None:
    """The manifest's model name (convert and convert-llm): None (the source's name) or a non-empty single line."""
    if name is not None and (not name.strip() or "\n" in name):
        raise BadInputError(f"model name must be a non-empty single line, got {name!r}")


def check_thresholds(thresholds: dict) -> None:
    """NaN/inf or out-of-range gate figures would switch the gate off (NaN compares false) or fail every model."""
    if not isinstance(thresholds, dict) or not all(isinstance(t, Thresholds) for t in thresholds.values()):
        raise BadInputError("thresholds must map a precision to a Thresholds, e.g. {'fp32': Thresholds(min_cosine="
                            "0.9999)} (or start from thresholds_with_overrides({'fp32.min_cosine': 0.9999}))")
    for prec, thr in thresholds.items():
        for f in fields(thr):
            v = getattr(thr, f.name)
            if f.name == "allow_nonfinite" or v is None:
                continue
            key = f"{prec}.{f.name}"
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BadInputError(f"threshold {key}={v!r} is not a finite number; give e.g. {prec}.{f.name}=0.99")
            if f.name.startswith("min_") and not 0 <= v <= 1:
                raise BadInputError(f"threshold {key}={v} is out of range: {f.name} is a fraction in [0, 1]")
            if v < 0:
                raise BadInputError(f"threshold {key}={v} is negative: {f.name} is a bound on a difference (>= 0)")


def check_npz(path: Path) -> None:
    """Cheap structural check of --inputs before any work: readable, no object arrays, no empty arrays."""
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BadInputError(f"cannot read sample inputs {path} ({type(e).__name__}: {e}); pass an .npz written by "
                            "numpy.savez") from e
    if not arrays:
        raise BadInputError(f"sample inputs {path} holds no arrays; save one array per model input")
    scalars = [k for k, a in arrays.items() if a.ndim == 0]
    if scalars:
        raise BadInputError(f"sample inputs {path}: {scalars} are scalars (0-d); save one array per input, "
                            "batch first")
    if all(a.size == 0 for a in arrays.values()):
        raise BadInputError(f"sample inputs {path}: every array is empty (zero rows: "
                            f"{ {k: list(a.shape) for k, a in arrays.items()} }); the gate needs at least one row")


@dataclass(frozen=True)
class ConvertConfig:
    source: Path
    output: Path
    precisions: tuple[str, ...] = ("fp32",)
    opset: int = 17
    validate: bool = True
    overwrite: bool = False
    inputs_npz: Path | None = None                 # user sample inputs; generated from the specs when None
    inputs_recorded: bool = False                  # inputs_npz was recorded by a caller (convert-llm), not given by
    #                                                the user: a sample onnxruntime rejects is then ours (exit 4)
    samples: SampleConfig = SampleConfig()
    output_names: tuple[str, ...] | None = None    # default: named after the producing operator
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    fp16: FP16Options = FP16Options()
    int8: Int8Options = Int8Options()
    int4: Int4Options = Int4Options()
    name: str | None = None
    task: str | None = None
    labels: tuple[str, ...] | None = None
    characters: tuple[str, ...] | None = None      # task text-recognition: the CTC character dictionary (None: a
    #                                                PaddleX export's config.json says it; convert/ocr.py)
    extra_files: dict[str, Path | bytes] = field(default_factory=dict)   # bundle-relative name -> file/dir to
    #                                                copy in, or the bytes of a file made for the bundle
    tokenizer: dict | None = None                  # manifest's tokenizer section (files listed in extra_files)
    extra: dict = field(default_factory=dict)
    fuse: bool = True                              # transformer encoders: fused graph (convert/fusion/)
    fusion: FusionConfig = FusionConfig()          # per precision: which fusions its graph gets

    def __post_init__(self):
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "output", Path(self.output))
        for name in ("precisions", "labels", "output_names", "characters"):   # a bare string: read letter by letter
            v = getattr(self, name)
            if isinstance(v, str) or (v is not None and not isinstance(v, (tuple, list))):
                raise BadInputError(f"{name} must be a tuple of strings, got {type(v).__name__} {v!r} (e.g. "
                                    f"{name}=({v!r},) or a tuple of several)")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise BadInputError(f"unknown precision(s) {bad or '(none)'}; choose from {', '.join(PRECISIONS)}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int):
            raise BadInputError(f"opset must be an integer, got {type(self.opset).__name__} {self.opset!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise BadInputError(f"opset {self.opset} is out of range; paddle2onnx exports opsets "
                                f"{MIN_OPSET}..{MAX_OPSET}")
        if self.inputs_npz is not None:
            if not Path(self.inputs_npz).is_file():
                raise BadInputError(f"sample inputs file {self.inputs_npz} " + (
                    "is not a file; give an .npz written by numpy.savez" if Path(self.inputs_npz).exists()
                    else "does not exist"))
            check_npz(Path(self.inputs_npz))
        if self.labels is not None:
            if not self.labels or not all(isinstance(x, str) and x.strip() for x in self.labels):
                raise BadInputError(f"labels must be non-empty strings, got {list(self.labels)!r:.300}")
            if len(set(self.labels)) != len(self.labels):
                raise BadInputError("labels must be unique")
        if self.output_names is not None:
            names = list(self.output_names)
            if not names or any(not isinstance(n, str) or not _IDENT.match(n) for n in names):
                raise BadInputError(f"output names must be identifiers (letters, digits, _ . : / -), got {names}")
            if len(set(names)) != len(names):
                raise BadInputError(f"output names must be unique, got {names}")
        for name, shape in (self.samples.input_shapes or {}).items():
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
                raise BadInputError(f"input shape for {name!r} must be positive ints, got {shape}")
        check_thresholds(self.thresholds)
        if self.characters is not None and (self.task not in (None, OCR_TASK) or self.labels is not None):
            raise BadInputError("a character dictionary is for task text-recognition (the labels are made from it): "
                                "give either the dictionary or --labels, and no other --task")
        if self.task == "text-classification" and not self.labels:
            raise BadInputError("task text-classification needs the class names: give --labels a,b,c (in the "
                                "order of the model's output)")
        for rel, src in self.extra_files.items():
            if not isinstance(src, bytes) and not Path(src).exists():
                raise BadInputError(f"file to carry into the bundle {src} does not exist")
        check_name(self.name)

    def user_paths(self) -> tuple[Path, ...]:
        """Everything the user gave as input: never inside what --overwrite replaces."""
        return (self.source, *([Path(self.inputs_npz)] if self.inputs_npz else []),
                *(Path(p) for p in self.extra_files.values() if not isinstance(p, bytes)))


def ocr_settings(config: ConvertConfig, info: dict) -> ConvertConfig:
    """The OCR tasks (convert/ocr.py). text-detection: the DB detector's pre- and post-processing settings in the
    manifest (a PaddleX export's config.json, else PaddleOCR's defaults). text-recognition: the bundle carries the
    CTC classes (blank, the dictionary given or a PaddleX export's, the space) as a file. A PaddleX config.json
    also makes a detector or recognizer converted without --task one."""
    if config.task == OCR_DIR_TASK:          # a text direction classifier (PaddleOCR's cls): convert/ocr.py
        return direction_settings(config, info)
    chars, where = config.characters, "the one given"
    folder = config.source if config.source.is_dir() else config.source.parent
    shape = info["outputs"][0]["shape"] if info["outputs"] else []
    if chars is None and config.labels is None and config.task in (None, OCR_DET_TASK):
        det = paddlex_detector(folder) or (dict(DB_DEFAULTS) if config.task == OCR_DET_TASK else None)
        if det is not None:
            if len(shape) != 4 or shape[1] != 1:
                raise BadInputError(f"a DB text detector's first output is a [batch, 1, height, width] probability "
                                    f"map; this model's is {shape}: convert it without --task text-detection")
            return replace(config, task=OCR_DET_TASK, extra={**config.extra, "ocr": det})
    if chars is None and config.labels is None and config.task in (None, OCR_TASK):
        chars, where = paddlex_dictionary(folder), f"{folder / 'config.json'}"
        if chars is None and config.task == OCR_TASK:
            raise BadInputError("task text-recognition needs the recognizer's character dictionary: --labels-file "
                                "DICT.txt (PaddleOCR's rec_char_dict_path, one character a line); a PaddleX export "
                                "carries it in config.json")
        if chars is not None:
            log.info("text recognizer: %d-character CTC dictionary from %s", len(chars), where)
    if chars is None:
        return config
    if len(shape) != 3 or shape[-1] <= 0:
        raise BadInputError(f"a CTC text recognizer's first output is [batch, time, classes]; this model's is {shape}"
                            ": it is not a text recognizer (convert it without --task text-recognition)")
    classes = ctc_labels(chars, shape[-1], where)
    return replace(config, task=OCR_TASK, characters=None,
                   extra={**config.extra, "ocr": {"decode": "ctc", "blank": 0, "classes": OCR_CLASSES_FILE,
                                                  "space_class": len(classes) == len(chars) + 2}},
                   extra_files={**config.extra_files,
                                OCR_CLASSES_FILE: json.dumps(classes, ensure_ascii=False).encode("utf-8")})


def check_against_specs(config: ConvertConfig, info: dict) -> list[dict[str, np.ndarray]]:
    """After inspect (cheap), before paddle2onnx: options that name inputs/outputs/classes, and the samples."""
    ins, outs = info["inputs"], info["outputs"]
    if config.output_names and len(config.output_names) != len(outs):
        raise BadInputError(f"{len(config.output_names)} output name(s) given ({', '.join(config.output_names)}) "
                            f"but the model has {len(outs)} output(s); give exactly {len(outs)}")
    if config.labels is not None and config.task != DET_TASK:    # a detector's labels: its NMS rows' class ids
        shape = outs[0]["shape"] if outs else []
        classes = shape[-1] if len(shape) >= 2 else None
        if classes is not None and classes > 0 and classes != len(config.labels):
            raise LabelCountError(f"{len(config.labels)} labels given ({', '.join(config.labels)}) but the model's "
                                  f"first output has {classes} classes (shape {shape}); give {classes} labels",
                                  config.labels, classes, shape)
        if len(shape) < 2:
            raise BadInputError(f"labels given but the model's first output has shape {shape}, not [batch, classes]")
    if config.task == "text-classification":
        from paddle2ort.tokenization.base import FEEDS
        odd = [f"{i['name']} {i['dtype']}{list(i['shape'])}" for i in ins
               if i["name"] not in FEEDS or not str(i["dtype"]).startswith("int")]
        if odd:
            raise BadInputError(f"task text-classification runs the model on a tokenizer's outputs "
                                f"({', '.join(FEEDS)}; int64), but this model takes {', '.join(odd)}: it is not a "
                                "text classifier. Convert it without --task/--labels (or release only text "
                                "classifiers)")
    clash = set(config.output_names or ()) & {i["name"] for i in ins}
    if clash:
        raise BadInputError(f"output name(s) {sorted(clash)} are also input names; give outputs other names")
    by_name = {i["name"]: i for i in ins}
    for name, shape in (config.samples.input_shapes or {}).items():
        if name not in by_name:
            raise BadInputError(f"--input-shape names unknown input {name!r}; the model's inputs are {list(by_name)}")
        _check_shape(f"--input-shape {name}", tuple(shape), by_name[name])
    tokenizer = _sample_tokenizer(config)
    rows = by_name.get("input_ids", {}).get("int_high")
    if tokenizer is not None and rows and tokenizer.vocab_size > rows:
        raise BadInputError(f"the tokenizer's vocabulary has {tokenizer.vocab_size} tokens but the model's input_ids "
                            f"index an embedding of {rows} rows: it is not this model's tokenizer (its ids past "
                            f"{rows - 1} would index no row). Give the tokenizer the model was trained with")
    if not config.inputs_npz and config.samples.feed is None:
        blind = [i["name"] for i in ins if "int" in str(i["dtype"]) and not i.get("int_high")
                 and not i.get("lengths")                      # drawn from the sequences beside them
                 and not i["name"].endswith("attention_mask")  # a tokenizer's 0/1 mask: {0, 1} is its range
                 and not is_pixels(i)                          # drawn as 0..255 images
                 and not (tokenizer is not None and i["name"] == "input_ids")]
        if blind:
            log.warning("no bound found for the integers of input(s) %s (neither ids a lookup table reads, as "
                        "far as the inspection follows them, nor lengths compared with positions): the gate's "
                        "generated samples draw them from {0, 1} only, which exercises little of the model. %s",
                        ", ".join(blind), FIX_INPUTS)
    samples = (load_samples(config.inputs_npz, ins) if config.inputs_npz
               else make_samples(ins, config.samples, tokenizer))
    for i, s in enumerate(samples):
        if all(a.size == 0 for a in s.values()):
            raise BadInputError(f"sample {i}" + (f" in {config.inputs_npz}" if config.inputs_npz else "")
                                + " is empty (zero rows in every input); the gate needs at least one row")
        for spec in ins:
            _check_shape(f"sample {i} input {spec['name']!r}" + (f" in {config.inputs_npz}" if config.inputs_npz
                                                                   else ""), s[spec["name"]].shape, spec)
    return samples


SATURATED_SHARE = 0.9       # of a Sigmoid output's values within LOGIT_EDGE of 0 or 1, with fewer than
JUDGED_VALUES = 64          # values left between: the gate sees little of it (a detector's map keeps thousands)


def warn_saturated(refs: list, outputs: list, model, user_inputs: bool) -> None:
    """Warn where a Sigmoid output is saturated on the samples (a PaddleRec DeepFM on generated ids: every value
    within 2.5e-4 of 0 or 1) and few of its values are left to judge. Its logits could move by several units
    there, a fault included, and the probabilities would not show it; FP16 rounds them away. Judged as they are,
    with this said."""
    from .metrics import LOGIT_EDGE
    from .value_range import output_value_ranges
    sigmoid = {n for n, (op, _) in output_value_ranges(model).items() if op == "Sigmoid"}
    for j, spec in enumerate(outputs):
        if spec.name not in sigmoid:
            continue
        v = np.concatenate([np.asarray(r[j], np.float64).ravel() for r in refs])
        saturated = (v <= LOGIT_EDGE) | (v >= 1 - LOGIT_EDGE)
        share = float(np.mean(saturated)) if v.size else 0.0
        if share >= SATURATED_SHARE and int((~saturated).sum()) < JUDGED_VALUES:
            log.warning("Sigmoid output %r is saturated on %s: %.0f%% of its values lie within %.1e of 0 or 1, "
                        "where a conversion fault moving the logits by units would not show. %s",
                        spec.name, "your --inputs" if user_inputs else "the generated samples", 100 * share,
                        LOGIT_EDGE, "Give inputs on which it is less certain." if user_inputs else FIX_INPUTS)


def _user_inputs(config: ConvertConfig) -> bool:
    return config.inputs_npz is not None and not config.inputs_recorded


def _sample_tokenizer(config: ConvertConfig):
    """The bundle's WordPiece tokenizer, so generated token ids are real sentences (None without one)."""
    made = config.extra_files.get("tokenizer/tokenizer.json")
    if not config.tokenizer or made is None or config.tokenizer.get("kind", "wordpiece") != "wordpiece":
        return None
    from paddle2ort.tokenization.base import HFTokenizer, TokenizerConfig
    cfg = TokenizerConfig(**config.tokenizer)
    if isinstance(made, bytes):                     # made from vocab.txt for the bundle (tokenizer_files)
        return HFTokenizer(cfg, Path("."), json_text=made.decode("utf-8"))
    return HFTokenizer(replace(cfg, tokenizer_file=Path(made).name), Path(made).parent)


def _check_shape(what: str, shape: tuple, spec: dict) -> None:
    want = spec["shape"]
    shown = ["?" if d < 0 else d for d in want]
    if len(shape) != len(want):
        raise BadInputError(f"{what} has rank {len(shape)} {list(shape)} but the model expects rank {len(want)} "
                            f"{shown}")
    for axis, (got, d) in enumerate(zip(shape, want)):
        if d >= 0 and got != d:
            raise BadInputError(f"{what} has shape {list(shape)} but axis {axis} of the model's input is fixed at "
                                f"{d} (expects {shown}); give arrays of that size")


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


def _save_references(path: Path, refs: list[list[np.ndarray]]) -> None:
    """Paddle's outputs on the gate's samples, beside them in the bundle: `paddle2ort validate BUNDLE` re-runs the
    gate on another host (its CPU's INT8/FP16 kernels, or a GPU) without Paddle. Not kept past REFERENCE_MAX_BYTES
    (that re-run then needs the Paddle model)."""
    size = sum(np.asarray(a).nbytes for r in refs for a in r)
    if size > REFERENCE_MAX_BYTES:
        log.warning("Paddle's outputs on the gate's samples are %.0f MB (over %d MB): not kept in the bundle, so "
                    "re-running its gate on another host needs the Paddle model (paddle2ort validate BUNDLE "
                    "--source MODEL)", size / 1e6, REFERENCE_MAX_BYTES // 2**20)
        return
    np.savez(path, **{f"{i}/{j}": np.asarray(a) for i, r in enumerate(refs) for j, a in enumerate(r)})


def load_references(path: Path, samples: int, outputs: int) -> list[list[np.ndarray]]:
    """What _save_references wrote, one list of `outputs` arrays per sample; BadInputError where it is not that."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [[data[f"{i}/{j}"] for j in range(outputs)] for i in range(samples)]
    except (OSError, ValueError, KeyError) as e:
        raise BadInputError(f"{path} does not hold Paddle's {outputs} output(s) on {samples} sample(s) ({e}): the "
                            "bundle is damaged; convert the model again") from e


def paddle_reference(source: ModelSource, samples: list[dict], workdir: Path) -> list[list[np.ndarray]]:
    """Run Paddle Inference (in the worker) on the samples; outputs in fetch order."""
    inp, outp = workdir / "ref_inputs.npz", workdir / "ref_outputs.npz"
    _save_samples(inp, samples)
    res = run_worker("reference", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                   "inputs_npz": str(inp), "outputs_npz": str(outp),
                                   "num_samples": len(samples)}, workdir)
    return load_references(outp, len(samples), res["num_outputs"])


def inspect(source: ModelSource, workdir: Path) -> dict:
    origin = str(source.original[0].parent) if source.original else None    # a re-saved Paddle 1.x folder's
    info = run_worker("inspect", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                  "origin": origin}, workdir)
    quantized = {op: n for op, n in info["ops"].items() if "quantize" in op.removeprefix("pd_op.")}
    if quantized:                   # before the unsupported census: fake-quant ops are there too, with other advice
        raise QuantizedProgramError(quantized, info["paddle2onnx_version"])
    if info["unsupported"]:
        raise UnsupportedOperatorsError(info["unsupported"], info["paddle2onnx_version"])
    if info.get("inexact_adaptive_pools"):
        raise InexactPoolingError(info["inexact_adaptive_pools"], info["inputs"], info["paddle2onnx_version"])
    return info


def convert(config: ConvertConfig, sources: tuple[Path, ...] = ()) -> ConvertResult:
    """Convert, validate and bundle. Raises BadInputError / ConversionError / ValidationError; writes nothing
    at `config.output` unless every requested precision passed its gate. SIGTERM unwinds like Ctrl-C.
    `sources`: more user paths that --overwrite must never remove (the config's own are always included)."""
    with sigterm_as_interrupt():
        return _convert(config, tuple(Path(p) for p in sources))


def _convert(config: ConvertConfig, more_sources: tuple[Path, ...]) -> ConvertResult:
    source = locate(config.source)
    ppdet = read_infer_cfg(config, source.model_file.parent)   # PaddleDetection export? before any worker
    ppseg = read_deploy_yaml(config, source.model_file.parent) if ppdet is None else None   # PaddleSeg export?
    check_outside_inputs(config.output, [("the source model folder", Path(config.source))], command="convert")
    sources = (*config.user_paths(), *more_sources, *source.user_files)
    steps = 4 + 2 * len(config.precisions)
    with staged_bundle(config.output, config.overwrite, sources) as stage:
        work = make_workdir()
        bar = tqdm(total=steps, desc="convert", unit="step", leave=False, disable=None)  # None: off when not a TTY
        try:
            bar.set_postfix_str("inspect")
            source = prepare(source, work)         # a Paddle 1.x directory is re-saved as a legacy model first
            info = inspect(source, work)
            config = (detection_settings(config, ppdet, info) if ppdet is not None else
                      segmentation_settings(config, ppseg, info) if ppseg is not None else ocr_settings(config, info))
            samples = check_against_specs(config, info)
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
            in_specs, unbatched = pin_unbatchable(model, in_specs, samples)
            if unbatched:
                log.warning("the ONNX graph runs one image/row at a time only (a batch of 2 fails in onnxruntime: "
                            "%s): the bundle's inputs are pinned to batch 1", unbatched)
            unbounded = info.get("rnn_sequence_lengths") and unbounded_rnns(model.graph)
            if unbounded:
                log.warning("paddle2onnx wrote %d RNN layer(s) without the sequence lengths Paddle gives them: the "
                            "ONNX model is exact only on rows as long as their batch's longest (a padded row runs "
                            "over its padding)", unbounded)
            saved = share_duplicate_weights(model)
            if saved >= 1e6:
                log.info("shared %.1f MB of duplicated constant weights", saved / 1e6)
            fused = bundle_graphs(model, ["fp32", *config.precisions], config.int8,
                                  config.fusion if config.fuse else FusionConfig(None, None, None, None, ()),
                                  samples)
            if "int8" in config.precisions:        # before the FP32 file, Paddle's reference and the gate
                check_quantizable(fused.graphs["int8"], fused.int8)
            files = {"fp32": stage / "model.fp32.onnx"}
            export_stage.save_onnx(fused.graphs["fp32"], files["fp32"])   # external data past 2 GiB
            variant_src = {p: files["fp32"] for p in config.precisions}
            for p in config.precisions:                # a precision made from a differently fused graph
                if fused.graphs[p] is not fused.graphs["fp32"]:
                    variant_src[p] = work / f"source.{p}.onnx"
                    export_stage.save_onnx(fused.graphs[p], variant_src[p])
            export_stage.check_onnx_file(files["fp32"], producer="output renaming")
            options = {"fp32": {}}

            bar.set_postfix_str("paddle reference")
            refs = paddle_reference(source, samples, work) if config.validate else None
            params = paddle_parameters(source, work) if config.validate else None   # FP32 weights: bit for bit
            if refs is not None:
                fixed = shape_only_outputs(fused.graphs["fp32"].graph)
                if fixed:
                    log.info("output(s) %s do not depend on the inputs' values (only their shapes): flat by "
                             "construction, judged against their magnitude", ", ".join(sorted(fixed)))
                check_signal(refs, out_specs, user_inputs=_user_inputs(config), shape_only=fixed,
                             scored=class_axis_outputs(fused.graphs["fp32"]))
                warn_saturated(refs, out_specs, fused.graphs["fp32"], _user_inputs(config))
            bar.update()

            reports: dict[str, dict] = {}
            order = ["fp32"] + [p for p in config.precisions if p != "fp32"]
            for prec in order:
                if prec != "fp32":
                    bar.set_postfix_str(prec)
                    files[prec] = stage / f"model.{prec}.onnx"
                    options[prec] = make_variant(prec, variant_src[prec], files[prec], config.fp16, fused.int8,
                                                 config.int4)
                    export_stage.check_onnx_file(files[prec], producer=f"the {prec} pass")
                bar.update()
                if config.validate:
                    bar.set_postfix_str(f"validate {prec}")
                    thr = config.thresholds.get(prec, DEFAULT_THRESHOLDS[prec])
                    try:
                        row = (gate_parameters(prec, files[prec], params, thr, len(samples))
                               if prec == "fp32" and params is not None else None)
                        reports[prec] = validate(prec, files[prec], samples, refs, out_specs, thr,
                                                 user_inputs=_user_inputs(config),
                                                 fp32_model=variant_src.get(prec, files["fp32"]))   # its FP32 source
                        if row is not None:
                            reports[prec]["results"].append(row)
                    except ValidationError as e:
                        hint = gate_hint(prec, e, files[prec], _user_inputs(config), config.task == DET_TASK,
                                         config.fp16.op_block_list, info.get("rnn_sequence_lengths", 0))
                        if reports:             # a bundle ships whole or not at all: say how to get the others
                            rest = [p for p in order if p != prec]
                            hint = ((hint + "\n") if hint else "") + (
                                f"Nothing was written. {', '.join(reports)} passed"
                                + (f" ({', '.join(p for p in rest if p not in reports)} not yet judged)"
                                   if len(rest) > len(reports) else "")
                                + f": convert with --precision {','.join(rest)} for a bundle without {prec}.")
                        raise (e.with_hint(hint) if hint else e)
                    s = summary(reports[prec])
                    log.info("%s passed: %s", prec, gate_text(s))
                bar.update()

            _save_samples(stage / SAMPLES_NAME, samples)
            if refs is not None:
                _save_references(stage / REFERENCE_NAME, refs)
            for rel, src in config.extra_files.items():
                dst = stage / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(src, bytes):
                    dst.write_bytes(src)
                else:
                    (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
            write_json(stage / VALIDATION_NAME, {"validated": config.validate, "reports": reports,
                                                 "samples_from": "inputs" if _user_inputs(config) else "generated",
                                                 **({"host": describe_host()} if config.validate else {})})
            manifest = Manifest(
                schema_version=SCHEMA_VERSION,
                name=config.name or source.model_file.parent.name or source.model_file.stem,
                task=config.task, labels=config.labels, inputs=tuple(in_specs), outputs=tuple(out_specs),
                opset=exp.opset_written,
                models={p: ModelFile(precision=p, file=f.name, sha256=sha256_file(f),
                                     size_bytes=export_stage.model_bytes(f),
                                     io_dtype="float32" if (p != "fp16" or config.fp16.keep_io_types) else "float16",
                                     options=options[p], max_graph_optimization=highest_loading_level(f))
                        for p, f in files.items()},
                source={**source.describe(), "opset_requested": config.opset, "operators": info["ops"],
                        "repairs": exp.repairs},
                versions=_versions(info),
                validation={p: summary(r) for p, r in reports.items()} if config.validate else None,
                tokenizer=config.tokenizer,
                extra={**config.extra, **({"fusions": fused.fusions} if fused.fusions else {}),
                       **({"last_layer_first_row": list(fused.first_row)} if fused.first_row else {})},
                created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                files=file_entries(stage),
            )
            write_json(stage / MANIFEST_NAME, manifest.to_json())
            load_bundle(stage, verify=True)              # what we wrote reads back and verifies
        finally:
            bar.close()
            shutil.rmtree(work, ignore_errors=True)
    return ConvertResult(config.output, manifest, reports)


FP16_HINT = ("FP16 failing where FP32 passes is usually one operator type overflowing or losing precision in float16 "
             "(BatchNormalization with large running variances, Exp/Pow/ReduceSum over wide ranges): keep it in FP32 "
             "with --fp16-block-ops and convert again, or leave fp16 out of --precision.")


FP32_SELECTION_FLOOR = 0.9      # an FP32 detection agreement below this is no near-tie: the export selects otherwise


def gate_hint(precision: str, e: ValidationError, model_path: Path, user_inputs: bool,
              deployment_feed: bool = False, fp16_block: tuple[str, ...] | None = None,
              rnn_lengths: int = 0) -> str | None:
    """The likely fix of a failed gate, where the failure says which. deployment_feed: the samples were built from
    the export's own preprocessing (a PaddleDetection infer_cfg.yml), not drawn at random; rnn_lengths: how many of
    the Paddle program's RNN layers take a sequence_length (inspect)."""
    import onnx

    from .repair.output_shapes import data_dependent_outputs
    model = onnx.load(str(model_path), load_external_data=False)      # the graph: every rule below reads it
    unbounded = precision == "fp32" and rnn_lengths and unbounded_rnns(model.graph)   # FP16/INT8: another cause
    if unbounded:
        return (f"paddle2onnx wrote the model's {unbounded} RNN layer(s) without the sequence lengths Paddle gives "
                f"them ({rnn_lengths} pd_op.rnn with a sequence_length): in ONNX a padded row runs over its padding, "
                "so it differs from Paddle wherever a row is shorter than its batch's longest (the gate's rows are). "
                "The export is exact only on full-length rows: to ship it for such inputs (batch 1, or rows of "
                "equal length), convert with --inputs FILE.npz of full-length rows; padded batches it cannot serve.")
    hard = set(mask_sources(model, [f["output"] for f in e.failures if f.get("output") != LINEAGE_ROW]))
    if hard and precision != "fp32" and all(f["metrics"].get("cosine", 0) >= 0.999 for f in e.failures
                                            if f["output"] in hard):
        return (f"{', '.join(map(repr, sorted(hard)))} is computed from an ArgMax's classes by arithmetic (a hard "
                f"mask: Equal/Cast/Mul...), not judged as labels: where the scores it reads nearly tie, {precision} "
                "rounding picks the other class and those values jump by the mask's step; the cosine stayed "
                f"high, so few did. If that is acceptable, stop judging the worst error of the {precision} "
                f"model's outputs: --threshold {precision}.max_rel_diff=1 (and a looser {precision}.max_rel_rmse if "
                "the rms error failed too); the cosine stays judged.")
    convs = sum(n.op_type == "ConvInteger" for n in model.graph.node)
    if precision == "int8" and any(thresholded(f) for f in e.failures) and convs:
        return (f"{convs} convolution(s) were quantized (ConvInteger): onnxruntime's dynamic INT8 gives each "
                "convolution weight one scale whatever --int8-per-channel says, and convolutions lose most there (a "
                "trial RepVGG: cosine 0.88, 0.89 per channel). Leave Conv out of --int8-op-types (the default "
                "MatMul,Gemm quantizes the linear layers only), or leave int8 out of --precision.")
    selected = sorted({f["output"] for f in e.failures} & data_dependent_outputs(model.graph))
    lost = [f["output"] for f in e.failures if f["output"] in selected
            and (f["metrics"].get("argmax_agreement") or 1.0) < FP32_SELECTION_FLOOR]
    if selected and precision == "fp32" and lost:
        return (f"{', '.join(map(repr, lost))}: the FP32 model selects other rows than Paddle for most of them. FP32 "
                "rounding moves a candidate at the cut, not most: the export computes the selection otherwise (one "
                "known case: paddle2onnx 2.1.0 indexes multiclass_nms3's scores wrongly when the program does not "
                "know the candidate count, i.e. a dynamic input size: export the model with a fixed image size). "
                "Report the model if it is exported with fixed sizes.")
    if selected and user_inputs and precision != "fp32":
        return (f"{', '.join(map(repr, selected))} select(s) a data-dependent set of rows (NMS, top-k), judged as "
                f"sets of detections where they are lists of them: on your inputs {precision} rounding changed which "
                "rows are selected, or their values, beyond the bounds above (selection amplifies small errors: "
                "a candidate near the cut leaves, another enters). If that is acceptable, loosen the failing bounds "
                f"with --threshold {precision}.METRIC=VALUE; else leave {precision} out of --precision.")
    if selected and not user_inputs:
        where = ("on the synthetic images built from infer_cfg.yml's preprocessing that selection may hinge on "
                 "near-ties" if deployment_feed else "on generated random inputs that selection is meaningless and "
                 "breaks ties differently")
        return (f"{', '.join(map(repr, selected))} select(s) a data-dependent set of rows (NMS, top-k): {where}. "
                "Validate on real inputs: "
                "--inputs FILE.npz with arrays named after the model's inputs (a preprocessed image and the real "
                "values of its companion inputs).")
    if precision == "fp16":
        block = FP16Options().op_block_list if fp16_block is None else fp16_block
        return FP16_HINT + (_fp16_block_hint(model, block) or (
            f" --fp16-block-ops replaces the list in force ({','.join(block)}): give it whole with your op added, "
            f"--fp16-block-ops {','.join(block)},OP."))
    if precision == "int8" and any(thresholded(f) for f in e.failures) and _int8_per_tensor(model):
        return ("Dynamic INT8 quantized each weight with one scale (per tensor); weights whose rows differ in range "
                "lose most there (a random-weight PVTv2 was refused at cosine 0.94 and passed per channel): convert "
                "again with --int8-per-channel, or leave int8 out of --precision.")
    return None


def unbounded_rnns(graph) -> int:
    """ONNX RNN/GRU/LSTM nodes without a sequence_lens input (each row runs over the whole sequence axis)."""
    return sum(1 for n in graph.node if n.op_type in ("RNN", "GRU", "LSTM")
               and (len(n.input) < 5 or not n.input[4]))


def _fp16_block_hint(model, block: tuple[str, ...]) -> str:
    """The --fp16-block-ops value that adds BatchNormalization to `block` (the list in force), where the FP16 model
    computes one in float16 (EfficientNet-B0's FP16 cosine 0.955 -> 0.99999 with it kept in FP32)."""
    if "BatchNormalization" in block or not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return ""
    return (f" This model has BatchNormalization in float16; try --fp16-block-ops "
            f"{','.join(block)},BatchNormalization.")


def _int8_per_tensor(model) -> bool:
    """Whether an INT8 model's quantized MatMul/Gemm weights carry one scale each, where --int8-per-channel would
    give them one a column (ConvInteger weights are per tensor either way: onnxruntime's dynamic quantizer)."""
    from onnx import numpy_helper
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    weights = {i for n in g.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for i in n.input
               if i.endswith("_quantized") and i in inits}
    scales = [inits.get(w[:-len("_quantized")] + "_scale") for w in weights]
    return bool(scales) and all(t is not None and numpy_helper.to_array(t).size == 1 for t in scales)


def check_same_source(recorded: dict, got: dict[str, str], source_path: Path) -> None:
    """The gate's bounds hold between a bundle and the model it came from: another model (a retrained or re-exported
    one) would fail the gate as if the bundle were broken. The manifest's sha256 of the source files say which
    (`got`: file name -> sha256 of the files at source_path)."""
    want = recorded.get("sha256") or {}
    if want and got != want:
        diff = sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))
        shown = ", ".join(f"{n} ({(got.get(n) or 'absent')[:12]} here, {(want.get(n) or 'absent')[:12]} in the "
                          f"manifest)" for n in diff[:3])
        raise BadInputError(f"--source {source_path} is not the Paddle model this bundle was converted from: {shown}. "
                            "Pass the model the bundle came from (its manifest's source.sha256), or convert this one")


def revalidate(bundle_dir: Path, source_path: Path, thresholds: dict[str, Thresholds] | None = None,
               overrides: dict[str, float] | None = None, device: str = "cpu") -> dict:
    """Re-run the gate on an existing bundle against its Paddle source (release pipelines, tampering checks).
    Every file's sha256 is checked first: a changed, missing or added file fails (BundleError, exit 2). A
    text-generation bundle's source is its PaddleNLP checkpoint, exported again as convert-llm did; its fused
    decoders are judged too (reports "fused-PREC"). Every model is judged whatever another did; the failures (a
    refused gate, a model onnxruntime cannot load or run, samples a model cannot be judged on) are raised together
    as GateRerunError (exit code: the most serious of theirs). thresholds: default those the bundle's converter
    gates with (convert-llm's for a text-generation bundle); overrides: {"PREC.METRIC": value} on top; device:
    where the models run ("cpu", or "gpu": onnxruntime's CUDA provider). Without Paddle: convert.hostcheck.
    -> name -> report of every model (all passed)."""
    check_gate_device(device)
    bundle = load_bundle(bundle_dir, verify=True)
    m = bundle.manifest
    llm = is_llm_bundle(m)
    thresholds = rerun_thresholds(bundle, thresholds, overrides)
    if llm:                                 # a PaddleNLP checkpoint: exported again as convert-llm did
        from .llm.api import check_llm_source
        check_llm_source(m, Path(source_path))
        if not (bundle.path / SAMPLES_NAME).is_file():
            raise BadInputError(f"bundle {bundle_dir} has no {SAMPLES_NAME} (the recorded steps its gate ran on): "
                                "convert the model again with convert-llm (--overwrite) to re-check it")
    else:
        source = locate(source_path)
        check_same_source(m.source, source.describe()["sha256"], source_path)
    with sigterm_as_interrupt():
        work = make_workdir()
        try:
            if llm:
                from .llm.api import reexport
                source = locate(reexport(m, Path(source_path), bundle.path / SAMPLES_NAME, work))
            source = prepare(source, work)
            info = inspect(source, work)
            samples_path = bundle.path / SAMPLES_NAME
            samples = (load_samples(samples_path, info["inputs"]) if samples_path.is_file()
                       else make_samples(info["inputs"], SampleConfig()))
            refs = paddle_reference(source, samples, work)
            params = None if llm else paddle_parameters(source, work)
            return judge_bundle(bundle, Path(bundle_dir), samples, refs, thresholds, device, params=params)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def judge_bundle(bundle, bundle_dir: Path, samples: list[dict], refs: list[list[np.ndarray]], thresholds: dict,
                 device: str = "cpu", only: set[str] | None = None, params=None) -> dict:
    """Every model of `bundle` (and a text-generation bundle's fused decoders) judged on `samples` against Paddle's
    outputs `refs`, each whatever another did, run on `device`: -> name -> report (all passed), else GateRerunError
    naming every failure (a refused gate, a model onnxruntime cannot load or run, samples it cannot be judged on)."""
    m = bundle.manifest
    passed, failed = {}, {}
    given = _samples_given(bundle)
    for prec in (p for p in m.models if only is None or p in only):     # only: the precisions asked about
        thr = thresholds.get(prec, DEFAULT_THRESHOLDS[prec])
        try:
            reference, weights_only = _lineage_reference(bundle, prec)
            row = (gate_parameters(prec, bundle.model_path(prec), params, thr, len(samples))
                   if prec == "fp32" and params is not None else None)     # --source: Paddle's parameters at hand
            passed[prec] = validate(prec, bundle.model_path(prec), samples, refs, list(m.outputs), thr, given,
                                    fp32_model=reference, device=device, lineage_weights_only=weights_only,
                                    level=m.models[prec].max_graph_optimization or "all")   # what runtimes get
            if row is not None:
                passed[prec]["results"].append(row)
        except ValidationError as e:
            failed[prec] = e
        except (ConversionError, BadInputError) as e:   # crashed, or cannot be judged: this model only
            failed[prec] = e
    for prec, e in failed.items():
        if isinstance(e, ValidationError):
            hints = [h for h in (_recorded_bounds_hint(bundle, prec, thresholds.get(prec, DEFAULT_THRESHOLDS[prec])),
                                 _changed_fp32_hint(prec, e, passed, params is not None)) if h]
            if hints:
                e.with_hint("\n".join(hints))
    if is_llm_bundle(m) and m.extra.get("fused"):       # the fused decoders, on Paddle's logits of the same steps
        from .llm.api import regate_fused
        for prec, rep in regate_fused(bundle, samples, refs, thresholds, device, only).items():
            (failed if isinstance(rep, Exception) else passed)[f"fused-{prec}"] = rep
    if failed:
        raise GateRerunError(bundle_dir, failed, passed)
    return passed


def _changed_fp32_hint(precision: str, e: ValidationError, passed: dict, params_checked: bool) -> str | None:
    """A variant whose copies of the FP32 weights differ from model.fp32.onnx while the FP32 model passed its outputs:
    the variant may be the changed file, or model.fp32.onnx (a change below its output bounds). Say how to tell."""
    weights = any(f.get("kind") == "lineage" and any(v.startswith("weight ") for v in f["violations"])
                  for f in e.failures)
    if precision == "fp32" or "fp32" not in passed or not weights or params_checked:
        return None
    return (f"The {precision} model's weights differ from model.fp32.onnx's, which passed on its outputs: either "
            f"file may be the changed one (a change in the FP32 file below its output bounds shows only here). "
            "`paddle2ort validate BUNDLE --source MODEL_DIR` compares the FP32 weights with Paddle's parameters.")


def check_gate_device(device: str) -> None:
    """Where a gate re-run's models run: "cpu", or "gpu" where onnxruntime has a usable CUDA provider."""
    if device not in ("cpu", "gpu"):
        raise BadInputError(f"device must be cpu or gpu, got {device!r}")
    if device == "gpu":
        from paddle2ort.runtime.session import available_providers, gpu_available
        if not gpu_available():
            raise BadInputError("--device gpu: onnxruntime here has no usable CUDA provider (providers: "
                                f"{', '.join(available_providers())}); install onnxruntime-gpu on a host with an "
                                "NVIDIA GPU, or check this host's CPU with --device cpu")


def is_llm_bundle(m) -> bool:
    return m.task == "text-generation" and "llm" in m.extra


def rerun_thresholds(bundle, thresholds: dict[str, Thresholds] | None, overrides: dict[str, float] | None) -> dict:
    """The bounds a re-run of `bundle`'s gate judges with (its converter's defaults, `overrides` on top), checked
    with the bundle's kind before anything runs."""
    m = bundle.manifest
    from .metrics import LLM_THRESHOLDS, thresholds_with_overrides
    llm = is_llm_bundle(m)
    thresholds = thresholds_with_overrides(overrides or {}, thresholds or (LLM_THRESHOLDS if llm else None))
    check_thresholds(thresholds)
    gated = {*m.models, *((m.extra.get("fused") or {}) if llm else {})}
    stray = sorted({k.partition(".")[0] for k in (overrides or {})} - gated)
    if stray:                               # a bound on a model the bundle lacks would be accepted and never used
        raise BadInputError(f"--threshold names {', '.join(stray)}, which bundle {bundle.path} has no model of (it "
                            f"has: {', '.join(sorted(gated))}); override the bounds of those it has")
    if m.task == "text2text-generation":
        raise BadInputError(f"bundle {bundle.path} is a text2text-generation bundle: `validate` re-runs the gate of "
                            "`convert` and `convert-llm` bundles; convert-seq2seq's gate runs as it converts: convert "
                            "the model again (--overwrite) to re-check it")
    return thresholds


def _recorded_bounds_hint(bundle, precision: str, used: Thresholds) -> str | None:
    """A failed re-run judged with other bounds than the bundle passed its conversion gate with (convert's
    --threshold, recorded in validation.json): name them. Not taken on their own: the bundle is what is checked,
    and a loosened bound of its own must not pass it."""
    try:
        recorded = read_json_object(bundle.path / VALIDATION_NAME, "validation report", "convert again")
        rec = recorded["reports"][precision]["thresholds"]
    except (BadInputError, KeyError, TypeError):
        return None
    diff = [f"{precision}.{f.name}={rec[f.name]}" for f in fields(used) if f.name != "allow_nonfinite"
            and f.name in rec and rec[f.name] is not None and rec[f.name] != getattr(used, f.name)]
    if not diff:
        return None
    return (f"The bundle passed its conversion gate with other bounds ({', '.join(diff)}, in its {VALIDATION_NAME}): "
            f"this run used the defaults or your --threshold. To re-run the gate it passed, give "
            + " ".join(f"--threshold {d}" for d in diff) + ".")


def _samples_given(bundle) -> bool:
    """Whether the bundle's gate samples are the user's --inputs (validation.json; a bundle written before it said
    so: generated), so a refusal on them speaks of the user's inputs, not of generated ones."""
    try:
        recorded = read_json_object(bundle.path / VALIDATION_NAME, "validation report", "convert again")
    except BadInputError:
        return False
    return recorded.get("samples_from") == "inputs"


def _lineage_reference(bundle, precision: str) -> tuple[Path | None, bool]:
    """The FP32 model a variant's weights and nodes are checked against: the bundle's own, and whether by its weights
    alone. A variant made from a differently fused or pruned FP32 graph (convert/fusion: FP16 gets the whole encoder
    pass, INT8 none; the CPU precisions the first-row layer) had its nodes checked at conversion against that graph,
    which the bundle does not carry; against the bundle's FP32 file its weights still are (the ones both hold under
    one name, the constants INT8 folds), not its nodes (every node fused otherwise would read as missing)."""
    m = bundle.manifest
    if "fp32" not in m.models:
        return None, False
    fusions, first_row = m.extra.get("fusions") or {}, m.extra.get("last_layer_first_row") or []
    other = fusions.get(precision) != fusions.get("fp32") or (precision in first_row) != ("fp32" in first_row)
    if other:
        log.info("%s: made from a differently fused FP32 graph than the bundle's model.fp32.onnx; its weights are "
                 "checked against that file, its nodes were at conversion", precision)
    return bundle.model_path("fp32"), other
