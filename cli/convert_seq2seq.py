"""`paddle2ort convert-seq2seq`: over paddle2ort.convert.seq2seq.api.convert_seq2seq."""
from __future__ import annotations

from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import add_threshold, check_exists, command, csv_of, nonempty, positive_int, require_convert_extra

PRECISIONS = ("fp32", "fp16", "int8")


def check_thresholds(args) -> None:
    """--threshold must reach the gate: refused with --no-validate or for a precision not converted."""
    if args.threshold and args.no_validate:
        raise BadInputError("--threshold sets the validation gate, which --no-validate skips: drop one of them")
    unused = sorted({k.partition(".")[0] for k, _ in args.threshold} - set(args.precision))
    if unused:
        raise BadInputError(f"--threshold names {', '.join(unused)}, which is not converted (--precision "
                            f"{','.join(args.precision)}); add it to --precision or drop that --threshold")


def run(args) -> int:
    check_thresholds(args)
    check_exists(args.src, "SRC")
    check_exists(args.tokenizer, "--tokenizer")
    require_convert_extra("convert-seq2seq", ("paddle", "paddlenlp", "paddle2onnx", "onnx"))
    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    from paddle2ort.convert.validate import LLM_THRESHOLDS, thresholds_with_overrides

    res = convert_seq2seq(Seq2SeqConvertConfig(
        source=args.src, output=args.output, tokenizer=args.tokenizer, precisions=args.precision, opset=args.opset,
        validate=not args.no_validate, overwrite=args.overwrite, name=args.name,
        thresholds=thresholds_with_overrides(dict(args.threshold), LLM_THRESHOLDS)))
    s = res.manifest.extra.get("seq2seq") or res.manifest.extra["prefix_lm"]     # prefix LMs: one step graph
    print(f"bundle: {res.bundle}  ({s['architecture']}: {s['num_layers']} decoder layers, {s['heads']} heads x "
          f"{s['head_dim']}; opset {res.manifest.opset})")
    for prec, mf in res.manifest.models.items():
        v = (res.manifest.validation or {}).get(prec)
        gate = "not validated" if v is None else f"max_rel_diff {v['max_rel_diff']:.2e}, cosine {v['min_cosine']:.6f}"
        own = "  (encoder/: its own gate)" if "seq2seq" in res.manifest.extra else ""       # prefix LMs: one graph
        print(f"  {prec:5s} decoder {mf.file:18s} {mf.size_bytes / 1e6:8.2f} MB  {gate}{own}")
    return 0


def register(sub) -> None:
    c = command(sub, "convert-seq2seq", "PaddleNLP encoder-decoder or prefix LM (T5, BART, mBART, UNIMO-text, "
                "ChatGLM v1) -> validated text2text bundle",
                "paddle2ort convert-seq2seq my-t5/ -o bundles/t5 --tokenizer my-t5-tokenizer/ --precision fp32,int8",
                description="Export a PaddleNLP T5 or BART as an encoder graph (run once a source; it also writes "
                            "every decoder layer's cross-attention K/V) and a decoder-step graph with a "
                            "self-attention KV cache, prove both match Paddle on a recorded generation, and write "
                            "a text2text-generation bundle (`paddle2ort generate` runs it). Needs "
                            "pip install 'paddle2ort[convert]'.")
    c.add_argument("src", type=Path, help="PaddleNLP model directory (save_pretrained: config.json + weights)")
    c.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to create")
    c.add_argument("--tokenizer", type=Path, required=True,
                   help="directory with tokenizer.json + tokenizer_config.json (bos/eos/pad tokens)")
    c.add_argument("--precision", type=csv_of(PRECISIONS), default=("fp32",),
                   help="comma list of fp32,fp16,int8 (int8: weight-only MatMulNBits)")
    c.add_argument("--opset", type=positive_int, default=17, help="ONNX opset to request")
    c.add_argument("--name", type=nonempty, help="bundle name (default: the source directory's name)")
    c.add_argument("--no-validate", action="store_true", help="skip the gate against Paddle")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle paddle2ort wrote")
    add_threshold(c)
    c.set_defaults(func=run)
