"""`paddle2ort release`: the release gate, over paddle2ort.benchmarks.release.run_release."""
from __future__ import annotations

from pathlib import Path

from .common import (check_exists, check_output_dir, command, csv_of, fraction, nonneg_float, nonneg_int,
                     positive_int, require_convert_extra)
from .convert import add_conversion_options, conversion_config

EXAMPLE = """paddle2ort release inference/ -o bundle/ --dataset-dir data/ --budget 1.0 --tokenizer tok/ \\
    --output-names logits || exit $?      # 0: released; 3: no precision within budget"""


def is_llm_source(src: Path) -> bool:
    """A PaddleNLP model directory (config.json + *.pdparams / *.safetensors), not a Paddle inference model."""
    return (src.is_dir() and (src / "config.json").is_file() and not any(src.glob("*.pdiparams"))
            and (any(src.glob("*.pdparams")) or any(src.glob("*.safetensors"))))


# (flag, argparse dest, default): options a classifier release reads and an LLM release would ignore
CLASSIFIER_ONLY = (("--labels", "labels", None), ("--labels-file", "labels_file", None),
                   ("--inputs", "inputs", None), ("--output-names", "output_names", None),
                   ("--int8-per-channel", "int8_per_channel", False), ("--int8-full-range", "int8_full_range", False),
                   ("--int8-op-types", "int8_op_types", ("MatMul", "Gemm")),
                   ("--max-seq-length", "max_seq_length", 128), ("--batch-size", "batch_size", 32),
                   ("--warmup", "warmup", 8), ("--limit", "limit", None))
# and those an LLM release reads and a classifier release would ignore
LLM_ONLY = (("--block-size", "block_size", 32), ("--window", "window", 128), ("--windows", "windows", 8),
            ("--new-tokens", "new_tokens", 32))


def _refuse_other_kind(args, options, kind: str, src_is: str, theirs: str) -> None:
    """Options of the other kind of release: refused by name, never ignored without a word."""
    given = [flag for flag, dest, default in options if getattr(args, dest) != default]
    if given:
        from paddle2ort.runtime.errors import BadInputError
        one = len(given) == 1
        raise BadInputError(f"{', '.join(given)} appl{'ies' if one else 'y'} to {kind} releases; {args.src} is "
                            f"{src_is}: leave {'it' if one else 'them'} out ({theirs})")


def _conversion(args):
    from paddle2ort.convert.validate import LLM_THRESHOLDS, thresholds_with_overrides
    if is_llm_source(args.src):
        from paddle2ort.convert.llm import LLMConvertConfig
        from paddle2ort.runtime.errors import BadInputError
        if args.tokenizer is None:
            raise BadInputError("an LLM release needs --tokenizer DIR (tokenizer.json + tokenizer_config.json)")
        _refuse_other_kind(args, CLASSIFIER_ONLY, "classifier", "an LLM (PaddleNLP model directory)",
                           "LLM options: --window, --windows, --new-tokens, --block-size")
        # the graph `generate` runs on the CPU is the one convert-llm builds by default (fused where it fits)
        return LLMConvertConfig(source=args.src, output=args.output, tokenizer=args.tokenizer,
                                precisions=args.precision or ("fp32", "int8", "int4"), block_size=args.block_size,
                                overwrite=args.overwrite, name=args.name, default_graph="auto",
                                thresholds=thresholds_with_overrides(dict(args.threshold), LLM_THRESHOLDS))
    _refuse_other_kind(args, LLM_ONLY, "LLM", "a Paddle inference model (a text-classifier release)",
                       "classifier options: --batch-size, --warmup, --limit, --max-seq-length")
    return conversion_config(args, args.precision or ("fp32", "fp16", "int8"))


def run(args) -> int:
    require_convert_extra("release", ("paddle", "paddle2onnx", "onnx"))
    check_exists(args.src, "SRC")
    check_exists(args.tokenizer, "--tokenizer")
    check_exists(args.inputs, "--inputs")
    if args.report_dir is not None:
        check_output_dir(args.report_dir, "--report-dir", stem="report")
        out, rep = args.output.expanduser().resolve(), args.report_dir.expanduser().resolve()
        from paddle2ort.runtime.errors import BadInputError
        if rep == out or rep.is_relative_to(out):
            raise BadInputError(f"--report-dir {args.report_dir} is inside the output bundle {args.output}, which is "
                                "written whole at the end (the bundle keeps its own copy of the report); give a "
                                "folder outside it, e.g. --report-dir ci-report")
        src = args.src.expanduser().resolve()
        src = src if src.is_dir() else src.parent
        if rep == src or rep.is_relative_to(src):
            # report.json beside inference.json would make the model folder hold two programs for the next convert
            raise BadInputError(f"--report-dir {args.report_dir} is inside the source model folder {src}, which "
                                "release reads and leaves as it is; give a folder outside it, e.g. --report-dir "
                                "ci-report")
    from paddle2ort.benchmarks.release import ReleaseConfig, ReleaseError, markdown, run_release

    cfg = ReleaseConfig(conversion=_conversion(args), dataset_dir=args.dataset_dir, budget=args.budget,
                        split=args.split, devices=args.device, tie_margin=args.tie_margin,
                        report_dir=args.report_dir, batch_size=args.batch_size, warmup=args.warmup,
                        repeats=args.repeats, limit=args.limit, threads=args.threads, window=args.window,
                        windows=args.windows, new_tokens=args.new_tokens)
    try:
        res = run_release(cfg)
    except ReleaseError as e:               # nothing written; exit 3 (no precision fits) or 4 (a crash)
        if e.report.get("devices"):         # figures measured: the table; the error names the rest
            print(markdown(e.report))
        raise
    print(markdown(res.report))
    print("released: " + ", ".join(f"{d} -> {p}" for d, p in res.chosen.items()) + f"  ({res.bundle})")
    return 0


def register(sub) -> None:
    r = command(sub, "release", "release gate: convert every precision, measure on your data, pick per device",
                EXAMPLE,
                description="Convert every precision (each gated against Paddle), measure quality and speed on "
                            "your dataset on this host (CPU, and the GPU when onnxruntime sees one), pick per device "
                            "the fastest precision whose quality loss vs FP32 is within --budget (accuracy points "
                            "for text classifiers, perplexity % for LLMs), and write the bundle with the decision "
                            "in its manifest (extra.release) and release/report.{json,md,png}. `classify` and "
                            "`generate` then use the chosen precision unless --precision is given. Exit 3 (nothing "
                            "written) when no precision fits; exit 4 (nothing written) when a candidate's conversion "
                            "crashed, once the others are measured and the report names it. Needs pip install "
                            "'paddle2ort[convert]'.",
                exit_note="  3  also: no precision within --budget on some device (the figures are printed)\n"
                          "  4  also: a candidate's conversion crashed (the others' figures are printed); the most "
                          "serious code wins")
    r.add_argument("src", type=Path, help="Paddle inference model (classifier) or PaddleNLP model directory (LLM)")
    r.add_argument("--dataset-dir", type=Path, required=True,
                   help="classifier: label.txt + <split>.txt (text<TAB>label a line); LLM: <split>.txt plain text")
    r.add_argument("--budget", type=nonneg_float, default=1.0,
                   help="quality FP32 may lose: accuracy points (classifier) or perplexity %% (LLM)")
    r.add_argument("--split", default="dev", choices=["dev", "test"], help="which split to measure on")
    add_conversion_options(r, None, "candidate precisions (default: fp32,fp16,int8 for classifiers, "
                           "fp32,int8,int4 for LLMs); fp32 is always converted and measured as the baseline",
                           "classifier: vocab.txt (+ tokenizer.json); LLM: tokenizer.json + tokenizer_config.json")
    r.add_argument("--device", type=csv_of(("cpu", "gpu")), help="devices to release for (default: cpu, and gpu "
                   "when onnxruntime sees one)")
    r.add_argument("--tie-margin", type=fraction, default=0.05, help="a more exact precision within this "
                   "fraction of the fastest one's speed is preferred")
    r.add_argument("--report-dir", type=Path, help="also write report.{json,md,png} here, pass or fail (CI artifacts)")
    r.add_argument("--block-size", type=positive_int, default=32, help="LLM int8/int4 quantization block")
    r.add_argument("--batch-size", type=positive_int, default=32, help="classifier batch size for the timing")
    r.add_argument("--warmup", type=nonneg_int, default=8, help="classifier warm-up batches")
    r.add_argument("--repeats", type=positive_int, default=3, help="timed passes; median reported")
    r.add_argument("--limit", type=positive_int, help="classifier: N examples spread evenly over the split only")
    r.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads (0: all usable cores)")
    r.add_argument("--window", type=positive_int, default=128, help="LLM perplexity window in tokens")
    r.add_argument("--windows", type=positive_int, default=8, help="LLM perplexity windows")
    r.add_argument("--new-tokens", type=positive_int, default=32, help="LLM tokens generated per speed run")
    r.set_defaults(func=run)
