"""The `paddle2ort` command: a thin argparse layer over the library calls of each part.

Exit codes: 0 ok, 2 bad input or usage, 3 validation failed, 4 conversion failed, 1 unexpected error.
Subcommands import their part lazily, so runtime-only commands never import Paddle.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError, Paddle2OrtError

log = logging.getLogger("paddle2ort")

EPILOG = """exit codes: 0 ok, 2 bad input or usage, 3 validation failed (ONNX does not match Paddle),
4 conversion failed (unsupported operators, paddle2onnx crash or unusable output), 1 unexpected error"""


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _shape_arg(s: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = s.partition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape wants NAME:D0,D1,... with integers, got {s!r}") from None
    if not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape wants NAME:D0,D1,... with positive dims, got {s!r}")
    return name, shape


def _threshold_arg(s: str) -> tuple[str, float]:
    key, _, value = s.partition("=")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold wants PRECISION.METRIC=NUMBER, got {s!r}") from None


def _add_threshold(p):
    p.add_argument("--threshold", action="append", type=_threshold_arg, default=[], metavar="PREC.METRIC=V",
                   help="override a validation threshold, e.g. fp16.min_cosine=0.995 "
                        "(metrics: max_rel_diff, min_cosine, min_argmax_agreement); repeatable")


def _cmd_convert(args) -> int:
    from paddle2ort.convert import ConvertConfig, FP16Options, Int8Options, SampleConfig, convert
    from paddle2ort.convert.validate import thresholds_with_overrides

    from paddle2ort.convert.api import tokenizer_files

    tokenizer, extra_files = tokenizer_files(args.tokenizer, args.max_seq_length) if args.tokenizer else (None, {})
    cfg = ConvertConfig(
        source=args.src, output=args.output, precisions=args.precision, opset=args.opset,
        validate=not args.no_validate, overwrite=args.overwrite, inputs_npz=args.inputs,
        samples=SampleConfig(seed=args.seed, input_shapes=dict(args.input_shape) or None),
        output_names=args.output_names, thresholds=thresholds_with_overrides(dict(args.threshold)),
        fp16=FP16Options(op_block_list=args.fp16_block_ops) if args.fp16_block_ops is not None else FP16Options(),
        int8=Int8Options(per_channel=args.int8_per_channel, op_types=args.int8_op_types),
        name=args.name, task=args.task, labels=args.labels, tokenizer=tokenizer, extra_files=extra_files,
    )
    result = convert(cfg)
    m = result.manifest
    print(f"bundle: {result.bundle}  (opset {m.opset})")
    for prec, mf in m.models.items():
        v = (m.validation or {}).get(prec)
        gate = ("not validated" if v is None else
                f"validated: max_rel_diff {v['max_rel_diff']:.2e}, cosine {v['min_cosine']:.6f}"
                + (f", argmax {v['min_argmax_agreement']:.4f}" if v["min_argmax_agreement"] is not None else ""))
        print(f"  {prec:5s} {mf.file:22s} {mf.size_bytes / 1e6:8.2f} MB  {gate}")
    return 0


def _cmd_validate(args) -> int:
    from paddle2ort.convert import revalidate
    from paddle2ort.convert.validate import summary, thresholds_with_overrides

    reports = revalidate(args.bundle, args.source, thresholds_with_overrides(dict(args.threshold)))
    for prec, rep in reports.items():
        s = summary(rep)
        print(f"{prec:5s} passed: max_rel_diff {s['max_rel_diff']:.2e}, cosine {s['min_cosine']:.6f}")
    return 0


def _cmd_zoo_build(args) -> int:
    from paddle2ort.convert.zoo import build
    out = build(args.name, args.output, force=args.force)
    parts = [f"{what} in {out / sub}" for what, sub in (("Paddle model", "model"), ("tokenizer", "tokenizer"),
                                                        ("dataset", "dataset")) if (out / sub).is_dir()]
    print(f"{args.name}: " + ", ".join(parts))
    return 0


def _read_texts(path: Path) -> list[str]:
    from paddle2ort.runtime.textio import read_utf8_lines
    return read_utf8_lines(path, "give a text file, one text a line")


def _cmd_classify(args) -> int:
    import json as _json

    from paddle2ort.runtime.pipelines import TextClassifier
    from paddle2ort.runtime.session import SessionOptions

    if bool(args.text) == bool(args.input):
        raise BadInputError("give texts with --text (repeatable) or --input FILE (one text a line), not both")
    texts = list(args.text) if args.text else _read_texts(args.input)
    clf = TextClassifier(args.bundle, precision=args.precision, batch_size=args.batch_size,
                         session=SessionOptions(device=args.device, device_id=args.device_id,
                                                intra_op_threads=args.threads))
    lines = [_json.dumps({"text": t, "label": p.label, "score": round(p.score, 6)}, ensure_ascii=False)
             for t, p in zip(texts, clf(texts))]
    if args.output:
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(args.output)
    else:
        print("\n".join(lines))
    return 0


def _cmd_bench(args) -> int:
    from paddle2ort.benchmarks.classifier import BenchConfig, run_bench
    from paddle2ort.benchmarks.report import markdown, write_results

    cfg = BenchConfig(bundle=args.bundle, dataset_dir=args.dataset_dir, split=args.split, device=args.device,
                      device_id=args.device_id, precisions=args.precision, batch_size=args.batch_size,
                      warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                      paddle_model=args.paddle_model, limit=args.limit)
    res = run_bench(cfg)
    paths = write_results(res, args.output)
    print(markdown(res))
    log.info("results: %s", ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_convert_llm(args) -> int:
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.validate import LLM_THRESHOLDS, thresholds_with_overrides

    res = convert_llm(LLMConvertConfig(
        source=args.src, output=args.output, tokenizer=args.tokenizer, precisions=args.precision,
        opset=args.opset, block_size=args.block_size, validate=not args.no_validate, overwrite=args.overwrite,
        name=args.name, thresholds=thresholds_with_overrides(dict(args.threshold), LLM_THRESHOLDS),
        fused=args.fused, fused_head_dtype=args.fused_head_dtype))
    print(f"bundle: {res.bundle}  (opset {res.manifest.opset})")
    rows = [(p, mf.file, mf.size_bytes, (res.manifest.validation or {}).get(p)) for p, mf in res.manifest.models.items()]
    rows += [(p, e["file"], e["size_bytes"], e["validation"]) for p, e in (res.manifest.extra.get("fused") or {}).items()]
    for prec, file, size, v in rows:
        gate = "not validated" if v is None else f"max_rel_diff {v['max_rel_diff']:.2e}, cosine {v['min_cosine']:.6f}"
        print(f"  {prec:5s} {file:22s} {size / 1e6:8.2f} MB  {gate}")
    return 0


def _generation_config(args):
    from paddle2ort.runtime.generation import GenerationConfig
    sampling = any(v is not None for v in (args.top_k, args.top_p)) or (args.temperature or 0) > 0
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, do_sample=sampling,
        temperature=1.0 if args.temperature is None else args.temperature, top_k=args.top_k or 0,
        top_p=1.0 if args.top_p is None else args.top_p, repetition_penalty=args.repetition_penalty,
        stop_strings=tuple(args.stop), seed=args.seed, num_beams=args.num_beams, length_penalty=args.length_penalty)


def _cmd_generate(args) -> int:
    from paddle2ort.runtime.llm import TextGenerator, run_jsonl_job
    from paddle2ort.runtime.session import SessionOptions

    if bool(args.prompt) == bool(args.data_file):
        raise BadInputError("give --prompt (repeatable) or --data-file IN.jsonl --output-file OUT.jsonl")
    if args.data_file and not args.output_file:
        raise BadInputError("--data-file needs --output-file")
    if args.max_new_tokens_job is not None:
        args.max_new_tokens = args.max_new_tokens_job
    cfg = _generation_config(args)
    gen = TextGenerator(args.bundle, precision=args.precision,
                        session=SessionOptions(device=args.device, device_id=args.device_id,
                                               intra_op_threads=args.threads), graph=args.graph)
    if args.data_file:
        n = run_jsonl_job(gen, args.data_file, args.output_file, cfg, args.batch_size, args.src_length, args.chat)
        log.info("%d prompts -> %s", n, args.output_file)
        return 0
    if args.stream:
        for p in args.prompt:
            for delta in gen.stream(p, cfg, chat=args.chat):
                sys.stdout.write(delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    for out in gen(args.prompt, cfg, chat=args.chat):
        print(out)
    return 0


def _write(out_dir: Path, stem: str, res: dict, md: str) -> None:
    import json as _json

    from paddle2ort.benchmarks.report import _atomic_write
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / f"{stem}.json", _json.dumps(res, indent=2) + "\n")
    _atomic_write(out_dir / f"{stem}.md", md)


def _cmd_perplexity(args) -> int:
    from paddle2ort.benchmarks.perplexity import PerplexityConfig, markdown, run_perplexity
    res = run_perplexity(PerplexityConfig(bundle=args.bundle, paddle_model=args.paddle_model,
                                          precisions=args.precision, window=args.window, windows=args.windows))
    md = markdown(res)
    _write(args.output, "perplexity", res, md)
    print(md)
    return 0 if all(c["met"] for c in res["checks"]) else 3


def _cmd_bench_llm(args) -> int:
    from paddle2ort.benchmarks.llm import LLMBenchConfig, markdown, run_llm_bench
    res = run_llm_bench(LLMBenchConfig(bundle=args.bundle, paddle_model=args.paddle_model, precisions=args.precision,
                                       batch_sizes=tuple(int(b) for b in args.batch_sizes),
                                       prompt_len=args.prompt_len, new_tokens=args.new_tokens, threads=args.threads))
    md = markdown(res)
    _write(args.output, "llm", res, md)
    print(md)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paddle2ort", description="Paddle models -> validated ONNX -> ONNX Runtime",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="Paddle inference model -> validated ONNX deploy bundle", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a Paddle inference model (PIR *.json or legacy *.pdmodel, with "
                                   "*.pdiparams) to ONNX, make the requested precision variants, prove each matches "
                                   "Paddle on sample inputs, and write a bundle directory (atomically).")
    c.add_argument("src", type=Path, help="model directory, program file (*.json / *.pdmodel) or path prefix")
    c.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to create")
    c.add_argument("--precision", type=_csv, default=("fp32",), help="comma list of fp32,fp16,int8 (default fp32; "
                   "fp32 is always included as the reference file)")
    c.add_argument("--opset", type=int, default=17, help="ONNX opset to request (default 17; paddle2onnx may "
                   "raise it, the manifest records the one written)")
    c.add_argument("--inputs", type=Path, help="sample inputs .npz (arrays named after the inputs); default: "
                   "generated from the input specs with --seed")
    c.add_argument("--input-shape", type=_shape_arg, action="append", default=[], metavar="NAME:D0,D1,...",
                   help="shape of a generated sample input (dynamic dims default to batch 2/1 and size 64/32)")
    c.add_argument("--seed", type=int, default=0, help="seed of the generated sample inputs (default 0)")
    c.add_argument("--no-validate", action="store_true", help="skip the Paddle-vs-ONNX gate (not for release)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle (only once the new passed)")
    c.add_argument("--output-names", type=_csv, help="comma list naming the outputs (default: after the op "
                   "producing each, e.g. softmax)")
    c.add_argument("--fp16-block-ops", type=_csv, help="ONNX op types kept in FP32 in the fp16 model, replacing "
                   "the default list")
    c.add_argument("--int8-per-channel", action="store_true", help="per-channel weight quantization")
    c.add_argument("--int8-op-types", type=_csv, default=("MatMul", "Gemm"),
                   help="ONNX op types to quantize (default MatMul,Gemm)")
    c.add_argument("--name", help="model name for the manifest (default: the source directory's name)")
    c.add_argument("--task", help="task recorded in the manifest, e.g. text-classification")
    c.add_argument("--labels", type=_csv, help="comma list of class labels for the manifest")
    c.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json + vocab.txt to carry in the bundle")
    c.add_argument("--max-seq-length", type=int, default=128, help="tokenizer truncation length (default 128)")
    _add_threshold(c)
    c.set_defaults(func=_cmd_convert)

    v = sub.add_parser("validate", help="re-run the Paddle-vs-ONNX gate on an existing bundle", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("bundle", type=Path)
    v.add_argument("--source", type=Path, required=True, help="the Paddle model the bundle was converted from")
    _add_threshold(v)
    v.set_defaults(func=_cmd_validate)

    z = sub.add_parser("zoo", help="build reproducible Paddle source models from installed assets")
    zsub = z.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zb = zsub.add_parser("build", help="build a zoo model (cached)")
    zb.add_argument("name", choices=["minilm-sentiment", "smollm2-135m"])
    zb.add_argument("-o", "--output", type=Path, required=True)
    zb.add_argument("--force", action="store_true", help="rebuild even if cached")
    zb.set_defaults(func=_cmd_zoo_build)

    k = sub.add_parser("classify", help="classify texts with a text-classification bundle (JSON lines out)")
    k.add_argument("bundle", type=Path)
    k.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    k.add_argument("--input", type=Path, help="UTF-8 file, one text a line")
    k.add_argument("--output", type=Path, help="write JSON lines here instead of stdout")
    k.add_argument("--precision", default="fp32", help="which model of the bundle (fp32, fp16, int8)")
    k.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    k.add_argument("--device-id", type=int, default=0)
    k.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    k.add_argument("--batch-size", type=int, default=32)
    k.set_defaults(func=_cmd_classify)

    cl = sub.add_parser("convert-llm", help="PaddleNLP causal LM -> validated KV-cache decoder bundle",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cl.add_argument("src", type=Path, help="PaddleNLP model directory (save_pretrained: config.json + weights)")
    cl.add_argument("-o", "--output", type=Path, required=True)
    cl.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json + "
                    "tokenizer_config.json (e.g. from `paddle2ort zoo build smollm2-135m`)")
    cl.add_argument("--precision", type=_csv, default=("fp32",), help="comma list of fp32,fp16,int8,int4 "
                    "(int8/int4: weight-only MatMulNBits)")
    cl.add_argument("--block-size", type=int, default=32, help="int8/int4 quantization block (default 32)")
    cl.add_argument("--fused", type=_csv, default=(), help="also build the fused decoder (GroupQueryAttention, "
                    "MatMulNBits; LLaMA family) at these precisions: fp32 (CPU), fp16, int8, int4 (GPU), each "
                    "gated against Paddle")
    cl.add_argument("--fused-head-dtype", choices=["float32", "float16"], help="dtype of the LM head and logits "
                    "in the fp16/int8/int4 fused graphs (default: float32 for fp16, where float16 logits turn "
                    "near-ties into ties: SmolLM2 on an H100 16/20 -> 20/20 golden rows, 8%% fewer tok/s at 0.5B; "
                    "float16 for int8/int4)")
    cl.add_argument("--opset", type=int, default=17)
    cl.add_argument("--no-validate", action="store_true")
    cl.add_argument("--overwrite", action="store_true")
    cl.add_argument("--name")
    _add_threshold(cl)
    cl.set_defaults(func=_cmd_convert_llm)

    g = sub.add_parser("generate", help="generate text with a text-generation bundle")
    g.add_argument("bundle", type=Path)
    g.add_argument("--prompt", action="append", default=[], help="prompt (repeatable: one batch)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--min-new-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float, help="sampling temperature; 0 means greedy (default: greedy)")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--length-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    g.add_argument("--precision", default="fp32")
    g.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    g.add_argument("--device-id", type=int, default=0)
    g.add_argument("--graph", default="generic", choices=["generic", "fused"],
                   help="generic: the paddle2onnx export (host loop); fused: the fused decoder with the on-device "
                        "loop (CUDA graphs + sampler kernel on GPU)")
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--data-file", type=Path, help="JSON lines in ({\"src\": ...} a line)")
    g.add_argument("--output-file", type=Path, help="JSON lines out ({\"src\", \"output\"} a line)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--src-length", type=int, help="keep at most this many prompt tokens (the last ones)")
    g.add_argument("--max-length", type=int, dest="max_new_tokens_job",
                   help="with --data-file: new tokens per prompt (PaddleNLP predictor's name for --max-new-tokens)")
    g.set_defaults(func=_cmd_generate)

    pp = sub.add_parser("perplexity", help="perplexity of a text-generation bundle on Shakespeare vs Paddle "
                        "(exit 3 when a budget is missed)")
    pp.add_argument("bundle", type=Path)
    pp.add_argument("--paddle-model", type=Path, help="the PaddleNLP model dir: adds the Paddle reference row")
    pp.add_argument("--precision", type=_csv)
    pp.add_argument("--window", type=int, default=256)
    pp.add_argument("--windows", type=int, default=8)
    pp.add_argument("--output", type=Path, default=Path("bench-results"))
    pp.set_defaults(func=_cmd_perplexity)

    bl = sub.add_parser("bench-llm", help="TTFT / tokens/s / peak RSS of a text-generation bundle vs Paddle")
    bl.add_argument("bundle", type=Path)
    bl.add_argument("--paddle-model", type=Path, help="the PaddleNLP model dir: adds the Paddle dygraph rows")
    bl.add_argument("--precision", type=_csv)
    bl.add_argument("--batch-sizes", type=_csv, default=("1", "8"))
    bl.add_argument("--prompt-len", type=int, default=128)
    bl.add_argument("--new-tokens", type=int, default=128)
    bl.add_argument("--threads", type=int, default=0)
    bl.add_argument("--output", type=Path, default=Path("bench-results"))
    bl.set_defaults(func=_cmd_bench_llm)

    b = sub.add_parser("bench", help="accuracy/latency perf run of a classification bundle (JSON + Markdown + PNG)")
    b.add_argument("bundle", type=Path)
    b.add_argument("--dataset-dir", type=Path, required=True,
                   help="label.txt + dev.txt/test.txt (text<TAB>label a line)")
    b.add_argument("--split", default="dev", choices=["dev", "test"])
    b.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    b.add_argument("--device-id", type=int, default=0)
    b.add_argument("--precision", type=_csv, help="comma list (default: every model in the bundle; GPU: not int8)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--warmup", type=int, default=8, help="warm-up batches spread over the length range (default 8)")
    b.add_argument("--repeats", type=int, default=3, help="timed passes over the split; median reported (default 3)")
    b.add_argument("--threads", type=int, default=0, help="CPU threads for every system (default: all usable cores)")
    b.add_argument("--paddle-model", type=Path, help="the bundle's Paddle source: adds the Paddle Inference CPU row")
    b.add_argument("--limit", type=int, help="first N examples only (quick runs)")
    b.add_argument("--output", type=Path, default=Path("bench-results"), help="results directory")
    b.set_defaults(func=_cmd_bench)
    return p


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    # Libraries (onnxruntime.quantization logs on the root logger) stay at WARNING unless --verbose.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("paddle2ort").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:             # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    setup_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except Paddle2OrtError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (OSError, UnicodeError) as e:
        log.error("%s", BadInputError(str(e)))
        return 2


if __name__ == "__main__":
    sys.exit(main())
