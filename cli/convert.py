"""`paddle2ort convert` and `paddle2ort validate`: over paddle2ort.convert.convert, convert.revalidate and
convert.hostcheck."""
from __future__ import annotations

import argparse
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.files import module_available

from .common import (add_threshold, check_exists, check_output_file, command, csv, csv_of, nonneg_int, positive_int,
                     require_convert_extra)

PRECISIONS = ("fp32", "fp16", "int8", "int4")
PADDLE_SIDE = ("paddle", "paddle2onnx", "onnx")


def _shape_arg(s: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = s.partition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want NAME:D0,D1,... with integers, got {s!r}") from None
    if not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"want NAME:D0,D1,... with positive dims, got {s!r}")
    return name, shape


def add_conversion_options(c, precision_default: tuple[str, ...] | None = ("fp32",),
                           precision_help: str = "comma list of fp32,fp16,int8,int4 (int4: weight-only MatMulNBits; "
                                                 "fp32 is always included as the reference file)",
                           tokenizer_help: str = "WordPiece tokenizer directory to carry in the bundle: vocab.txt "
                                                 "(+ tokenizer.json; without one, as PaddleNLP's save_pretrained "
                                                 "writes it, it is made from vocab.txt)"
                           ) -> None:
    """The options of every command that converts a Paddle inference model into a bundle (convert, release)."""
    c.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to create")
    c.add_argument("--precision", type=csv_of(PRECISIONS), default=precision_default, help=precision_help)
    c.add_argument("--inputs", type=Path, help="sample inputs .npz for the gate (arrays named after the inputs; real "
                   "samples make INT8 fair); without it, samples are generated from the input specs")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle (only a paddle2ort bundle, only once the new one passed)")
    c.add_argument("--output-names", type=csv, help="comma list naming the outputs (without it: after the op "
                   "producing each, e.g. softmax)")
    c.add_argument("--int8-per-channel", action="store_true", help="per-channel INT8 weight quantization")
    c.add_argument("--int8-full-range", action="store_true",
                   help="8-bit INT8 weights instead of 7: slightly finer on CPUs with VNNI, but saturating (wrong "
                        "results) on CPUs without it (AVX2), so the bundle's numbers depend on the host")
    c.add_argument("--int8-op-types", type=csv, default=("MatMul", "Gemm"), help="ONNX op types to quantize")
    c.add_argument("--name", help="model name for the manifest (without it: the source directory's name)")
    c.add_argument("--labels", type=csv, help="comma list of class labels for the manifest")
    c.add_argument("--labels-file", type=Path, help="the labels from a UTF-8 file, one a line; with --task "
                   "text-recognition: the recognizer's character dictionary (PaddleOCR's rec_char_dict_path)")
    c.add_argument("--tokenizer", type=Path, help=tokenizer_help)
    c.add_argument("--max-seq-length", type=positive_int, default=128, help="tokenizer truncation length")
    add_threshold(c)


def conversion_config(args, precisions: tuple[str, ...], **options):
    """The ConvertConfig of the options `add_conversion_options` added, plus a command's own `options`."""
    from paddle2ort.convert import ConvertConfig, Int8Options
    from paddle2ort.convert.api import tokenizer_files
    from paddle2ort.convert.validate import thresholds_with_overrides

    tokenizer, extra_files = tokenizer_files(args.tokenizer, args.max_seq_length) if args.tokenizer else (None, {})
    labels, characters = args.labels, None
    if args.labels_file is not None:
        from paddle2ort.convert.ocr import TASK, read_dictionary
        if args.labels is not None:
            raise BadInputError("--labels and --labels-file both name the labels: give one of them")
        entries = read_dictionary(args.labels_file)
        labels, characters = (None, entries) if getattr(args, "task", None) == TASK else (entries, None)
    return ConvertConfig(source=args.src, output=args.output, precisions=precisions, overwrite=args.overwrite,
                         inputs_npz=args.inputs, output_names=args.output_names,
                         thresholds=thresholds_with_overrides(dict(args.threshold)),
                         int8=Int8Options(per_channel=args.int8_per_channel, reduce_range=not args.int8_full_range,
                                          op_types=args.int8_op_types),
                         name=args.name, labels=labels, characters=characters, tokenizer=tokenizer,
                         extra_files=extra_files, **options)


def run_convert(args) -> int:
    require_convert_extra("convert", PADDLE_SIDE)
    check_exists(args.inputs, "--inputs")
    check_exists(args.tokenizer, "--tokenizer")
    from paddle2ort.convert import FP16Options, SampleConfig, convert
    from paddle2ort.convert.validate import gate_text

    cfg = conversion_config(
        args, args.precision, opset=args.opset, validate=not args.no_validate,
        samples=SampleConfig(seed=args.seed, input_shapes=dict(args.input_shape) or None),
        fp16=FP16Options(op_block_list=args.fp16_block_ops) if args.fp16_block_ops is not None else FP16Options(),
        task=args.task, fuse=not args.no_fuse)
    result = convert(cfg)
    m = result.manifest
    print(f"bundle: {result.bundle}  (opset {m.opset})")
    for prec, mf in m.models.items():
        v = (m.validation or {}).get(prec)
        gate = "not validated" if v is None else f"validated: {gate_text(v)}"
        print(f"  {prec:5s} {mf.file:22s} {mf.size_bytes / 1e6:8.2f} MB  {gate}")
    return 0


def run_validate(args) -> int:
    """Every model of the bundle judged; those that pass printed, every failure named (one line each) in the error,
    whose exit code is the most serious of theirs. With --source against the Paddle model; without it against the
    Paddle outputs the bundle keeps (no Paddle needed: the gate re-run on a deployment host). --report gets the
    verdict whatever stops the run, so an earlier run's never stands for this one."""
    if args.source is not None:             # before any import of paddle2ort.convert (it imports onnx)
        require_convert_extra("validate --source", PADDLE_SIDE)
    elif not module_available("onnx"):      # the gate's rules read the graph; Paddle is not needed
        raise BadInputError("`paddle2ort validate` without --source needs onnx (not installed here): pip install "
                            "'paddle2ort[check]' (or give --source on a host with 'paddle2ort[convert]')")
    check_output_file(args.report, "--report", ours=_our_report, bundles=(args.bundle,))
    from paddle2ort.convert.validate import GateRerunError, gate_text, summary
    from paddle2ort.runtime.errors import Paddle2OrtError
    from paddle2ort.runtime.host import describe_host, host_line

    def show(reports: dict) -> None:
        for prec, rep in reports.items():
            s = summary(rep)
            print(f"{prec:10s} passed: {gate_text(s)}")
    host = describe_host(args.device)
    try:
        if args.source is not None:
            from paddle2ort.convert.api import revalidate
            reports = revalidate(args.bundle, args.source, overrides=dict(args.threshold), device=args.device)
        else:
            from paddle2ort.convert.hostcheck import check_host
            result = check_host(args.bundle, args.device, overrides=dict(args.threshold))
            reports = result.reports
            print(f"gate ran on: {host_line(result.gate_host) if result.gate_host else 'not recorded'}")
            print(f"re-run here: {host_line(host)}")
    except GateRerunError as e:
        show(e.passed)
        _report(args.report, args.bundle, host, e.passed, e.errors)
        raise
    except (Paddle2OrtError, KeyboardInterrupt) as e:    # not judged at all: the report says so, not an old verdict
        _report(args.report, args.bundle, host, {}, {}, error=e)
        raise
    show(reports)
    _report(args.report, args.bundle, host, reports, {})
    return 0


def _our_report(path: Path) -> bool:
    """An earlier --report of this command (it is replaced; any other file is not)."""
    import json
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(rep, dict) and {"bundle", "passed", "host", "models"} <= set(rep)


def _report(path: Path | None, bundle: Path, host: dict, passed: dict, failed: dict,
            error: BaseException | None = None) -> None:
    """--report: the re-run's verdict as JSON, for a release pipeline to keep beside its logs; `error`: what stopped
    the run before any model was judged (no verdict on any: passed false)."""
    if path is None:
        return
    from paddle2ort.convert.bundle import write_json
    from paddle2ort.convert.validate import failure_line, summary
    write_json(path, {"bundle": str(bundle), "passed": not failed and error is None, "host": host,
                      **({"error": failure_line(error) if isinstance(error, Exception) else "interrupted",
                          "exit_code": getattr(error, "exit_code", 130)} if error is not None else {}),
                      "models": {**{p: summary(r) for p, r in passed.items()},
                                 **{p: {"passed": False, "error": failure_line(e)} for p, e in failed.items()}}})


def register(sub) -> None:
    c = command(sub, "convert", "Paddle inference model -> validated ONNX deploy bundle",
                "paddle2ort convert inference/ -o bundle/ --precision fp32,fp16,int8 --inputs samples.npz",
                description="Convert a Paddle inference model (PIR *.json or legacy *.pdmodel, with *.pdiparams) "
                            "to ONNX, make the requested precision variants, prove each matches Paddle on sample "
                            "inputs, and write a bundle directory (atomically). Needs " "the converter side: "
                            "pip install 'paddle2ort[convert]'.")
    c.add_argument("src", type=Path, help="model directory, program file (*.json / *.pdmodel) or path prefix")
    add_conversion_options(c)
    c.add_argument("--opset", type=positive_int, default=17,
                   help="ONNX opset to request (paddle2onnx may raise it; the manifest records the one written)")
    c.add_argument("--input-shape", type=_shape_arg, action="append", default=[], metavar="NAME:D0,D1,...",
                   help="shape of a generated sample input (default dynamic dims: batch 2/1, an image's height x width "
                   "96x160/64x128, others 64/32); repeatable")
    c.add_argument("--seed", type=nonneg_int, default=0, help="seed of the generated sample inputs")
    c.add_argument("--no-validate", action="store_true", help="skip the Paddle-vs-ONNX gate (not for release)")
    c.add_argument("--fp16-block-ops", type=csv, help="ONNX op types kept in FP32 in the fp16 model, replacing "
                   "the built-in list")
    c.add_argument("--no-fuse", action="store_true",
                   help="keep transformer encoders unfused (default: attention, SkipLayerNorm, BiasGelu and "
                        "EmbedLayerNorm fused per precision, see convert/fusion/)")
    c.add_argument("--task", help="task recorded in the manifest: text-classification (with --labels), "
                   "text-recognition (a CTC OCR recognizer, with --labels-file DICT; read from a PaddleX export), "
                   "text-detection (a DB OCR detector), text-direction (PaddleOCR's cls: are lines upside down?); "
                   "a PaddleDetection export (infer_cfg.yml beside the model) is object-detection by itself, a "
                   "PaddleSeg export (deploy.yaml) semantic-segmentation")
    c.set_defaults(func=run_convert)

    v = command(sub, "validate", "re-run the Paddle-vs-ONNX gate on an existing bundle (here, or against its source)",
                "paddle2ort validate bundle/ --device gpu --report gate-here.json",
                description="Re-run the Paddle-vs-ONNX gate on an existing bundle (the bundle's checksums are "
                            "verified first). Without --source: against the Paddle outputs on the gate's samples "
                            "that the bundle keeps, with this host's onnxruntime on its CPU (whose INT8 and FP16 "
                            "kernels may round otherwise than the converter's) or GPU; needs no Paddle, only onnx. "
                            "With --source: against the Paddle model itself (needs pip install "
                            "'paddle2ort[convert]'). Every model is judged: those that pass are printed, each failure "
                            "is named on a line of its own, and the exit code is the most serious of theirs (4 a "
                            "model failing in onnxruntime, 3 a refused gate).")
    v.add_argument("bundle", type=Path, help="the bundle directory")
    v.add_argument("--source", type=Path, help="the Paddle model the bundle was converted from (default: the "
                   "Paddle outputs the bundle keeps)")
    v.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="where the models run: this host's CPU, or onnxruntime's CUDA provider")
    v.add_argument("--report", type=Path, help="also write the verdict, figures and host as JSON to this file")
    add_threshold(v)
    v.set_defaults(func=run_validate)
