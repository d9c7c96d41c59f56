"""`paddle2ort convert-llm`: over paddle2ort.convert.llm.convert_llm."""
from __future__ import annotations

from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import add_threshold, check_exists, command, csv_of, positive_int, require_convert_extra

PRECISIONS = ("fp32", "fp16", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)        # MatMulNBits: a power of two >= 16
DEFAULT_BLOCK_SIZE = 32


def check_options(args) -> None:
    """Options that would be accepted and then ignored: --block-size with no int8/int4 graph to quantize,
    --threshold with --no-validate or for a precision no graph is built at."""
    quantized = {"int8", "int4"} & {*args.precision, *args.fused}
    if args.block_size is not None and args.block_size not in BLOCK_SIZES:
        raise BadInputError(f"--block-size {args.block_size} is not supported; MatMulNBits takes a power of two "
                            f">= 16: {', '.join(map(str, BLOCK_SIZES))}")
    if args.block_size is None:
        args.block_size = DEFAULT_BLOCK_SIZE
    elif not quantized:
        raise BadInputError(f"--block-size {args.block_size} sets the int8/int4 quantization block, and no int8 or "
                            "int4 graph is built: add int8 (or int4) to --precision or --fused, or leave the option "
                            "out")
    if args.threshold and args.no_validate:
        raise BadInputError("--threshold sets the validation gate, which --no-validate skips: drop one of them")
    built = {*args.precision, *args.fused, *(("fp32",) if args.lora or args.prefix else ())}
    unused = sorted({k.partition(".")[0] for k, _ in args.threshold} - built)
    if unused:
        raise BadInputError(f"--threshold names {', '.join(unused)}, and no graph is built at it (--precision "
                            f"{','.join(args.precision)}{' --fused ' + ','.join(args.fused) if args.fused else ''}): "
                            "add it to --precision or --fused, or drop that --threshold")


def run(args) -> int:
    check_options(args)
    check_exists(args.src, "SRC")
    check_exists(args.tokenizer, "--tokenizer")
    check_exists(args.lora, "--lora")
    check_exists(args.prefix, "--prefix")
    require_convert_extra("convert-llm", ("paddle", "paddlenlp", "paddle2onnx", "onnx"))
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.validate import LLM_THRESHOLDS, thresholds_with_overrides

    res = convert_llm(LLMConvertConfig(
        source=args.src, output=args.output, tokenizer=args.tokenizer, precisions=args.precision,
        opset=args.opset, block_size=args.block_size, validate=not args.no_validate, overwrite=args.overwrite,
        name=args.name, thresholds=thresholds_with_overrides(dict(args.threshold), LLM_THRESHOLDS),
        fused=args.fused, fused_head_dtype=args.fused_head_dtype, fused_compute_dtype=args.fused_compute_dtype,
        default_graph=args.default_graph, lora=args.lora, prefix=args.prefix))
    print(f"bundle: {res.bundle}  (opset {res.manifest.opset})")
    m = res.manifest
    rows = [(p, mf.file, mf.size_bytes, (m.validation or {}).get(p)) for p, mf in m.models.items()]
    rows += [(p, e["file"], e["size_bytes"], e["validation"]) for p, e in (m.extra.get("fused") or {}).items()]
    for prec, file, size, v in rows:
        gate = "not validated" if v is None else f"max_rel_diff {v['max_rel_diff']:.2e}, cosine {v['min_cosine']:.6f}"
        print(f"  {prec:5s} {file:22s} {size / 1e6:8.2f} MB  {gate}")
    ad = res.manifest.extra.get("adapter")
    if ad:
        what = (f"LoRA r={ad['rank']} alpha={ad['alpha']:g} (scaling {ad['scaling']:g}), merged into "
                f"{ad['merged_modules']} modules" if ad["kind"] == "lora" else
                f"PTuning prefix of {ad['num_prefix_tokens']} tokens ({ad['file']})")
        v = ad.get("validation")
        gate = ("not validated" if v is None else
                f"vs PaddleNLP max_rel_diff {v['max_rel_diff']:.2e}, cosine {v['min_cosine']:.6f}")
        print(f"  adapter {ad['dir']}: {what}; {gate}")
    return 0


def register(sub) -> None:
    cl = command(sub, "convert-llm", "PaddleNLP causal LM -> validated KV-cache decoder bundle",
                 "paddle2ort zoo build smollm2-135m -o zoo/smollm2\n"
                 "paddle2ort convert-llm zoo/smollm2/model -o bundles/smollm2 --tokenizer zoo/smollm2/tokenizer "
                 "--precision fp32,int8",
                 description="Export a PaddleNLP causal LM with an explicit KV cache, convert it, prove each "
                             "precision matches Paddle on recorded prefill + decode steps, and write a "
                             "text-generation bundle. Needs pip install 'paddle2ort[convert]'.")
    cl.add_argument("src", type=Path, help="PaddleNLP model directory (save_pretrained: config.json + weights)")
    cl.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to create")
    cl.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json + "
                    "tokenizer_config.json (e.g. from `paddle2ort zoo build smollm2-135m`)")
    cl.add_argument("--precision", type=csv_of(PRECISIONS), default=("fp32",),
                    help="comma list of fp32,fp16,int8,int4 (int8/int4: weight-only MatMulNBits)")
    cl.add_argument("--block-size", type=positive_int,
                    help=f"int8/int4 quantization block, one of {','.join(map(str, BLOCK_SIZES))} (default: "
                         f"{DEFAULT_BLOCK_SIZE}; only with int8/int4 in --precision or --fused)")
    cl.add_argument("--fused", type=csv_of(PRECISIONS), default=(),
                    help="also build the fused decoder (GroupQueryAttention, MatMulNBits; LLaMA family) at these "
                         "precisions: fp32 (CPU), fp16, int8, int4 (GPU), each gated against Paddle")
    cl.add_argument("--fused-head-dtype", choices=["float32", "float16"], help="dtype of the LM head and logits "
                    "in the fp16/int8/int4 fused graphs (without it: float32 for fp16, where float16 logits turn "
                    "near-ties into ties: SmolLM2 on an H100 16/20 -> 20/20 golden rows, 8%% fewer tok/s at 0.5B; "
                    "float16 for int8/int4)")
    cl.add_argument("--fused-compute-dtype", choices=["float32", "float16"], help="compute dtype of the int8/int4 "
                    "fused graphs: float16 (the default, GPU) or float32 (CPU: int8 weights, float32 activations)")
    cl.add_argument("--default-graph", choices=["auto", "fused", "generic"], default="auto",
                    help="the graph `generate` runs on the CPU: auto (the default) builds and gates the CPU fused "
                         "decoder of each requested fp32/int8 precision where the family fits it (measured faster: "
                         "benchmarks/results/llm-cpu/) and records it in the manifest; generic keeps the "
                         "paddle2onnx graph, which is built and gated either way")
    ad = cl.add_mutually_exclusive_group()
    ad.add_argument("--lora", type=Path, metavar="DIR", help="PaddleNLP LoRA adapter (lora_config.json + "
                    "lora_model_state.pdparams): merged into the base before the export, checked against "
                    "PaddleNLP's LoRAModel")
    ad.add_argument("--prefix", type=Path, metavar="DIR", help="PaddleNLP prefix-tuning adapter (PTuning v2: "
                    "prefix_config.json + prefix_model_state.pdparams): its cache rows (pre_caches) ship in the "
                    "bundle and start every generation; checked against PrefixModelForCausalLM")
    cl.add_argument("--opset", type=positive_int, default=17, help="ONNX opset to request")
    cl.add_argument("--no-validate", action="store_true", help="skip the Paddle-vs-ONNX gate (not for release)")
    cl.add_argument("--overwrite", action="store_true",
                    help="replace an existing bundle (only a paddle2ort bundle, only once the new one passed)")
    cl.add_argument("--name", help="model name for the manifest (without it: the source directory's name)")
    add_threshold(cl)
    cl.set_defaults(func=run)
