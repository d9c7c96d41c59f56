"""`paddle2ort generate`: over paddle2ort.runtime.llm.TextGenerator (prompts, streaming, JSONL batch jobs)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.jobs import DEFAULT_BATCH as JOB_BATCH

from .common import (check_exists, check_output_file, command, finite_float, nonneg_float, nonneg_int, nonempty,
                     positive_float, positive_int, probability, seed_int)

log = logging.getLogger("paddle2ort.cli")

DEFAULT_MAX_NEW_TOKENS = 64


def new_tokens(args) -> int:
    """--max-new-tokens, or PaddleNLP's name for it, --max-length; both at once is ambiguous."""
    if args.max_new_tokens is not None and args.max_length is not None:
        raise BadInputError("--max-length is PaddleNLP's name for --max-new-tokens: give one of them, not both")
    for v in (args.max_new_tokens, args.max_length):
        if v is not None:
            return v
    return DEFAULT_MAX_NEW_TOKENS


def generation_config(args):
    from paddle2ort.runtime.generation import GenerationConfig
    # a sampling option at its "off" value (--top-k 0, --top-p 1) keeps greedy decoding, as its help says
    sampling = (args.top_k or 0) > 0 or (args.top_p is not None and args.top_p < 1) or (args.temperature or 0) > 0
    return GenerationConfig(
        max_new_tokens=new_tokens(args), min_new_tokens=args.min_new_tokens, do_sample=sampling,
        temperature=1.0 if args.temperature is None else args.temperature, top_k=args.top_k or 0,
        top_p=1.0 if args.top_p is None else args.top_p, repetition_penalty=args.repetition_penalty,
        stop_strings=tuple(args.stop), seed=args.seed, num_beams=args.num_beams, length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, beam_rules=args.beam_rules,
        forced_bos_token_id=args.forced_bos_token_id, forced_eos_token_id=args.forced_eos_token_id)


def run(args) -> int:
    if bool(args.prompt) == bool(args.data_file):
        raise BadInputError("give --prompt (repeatable) or --data-file IN.jsonl --output-file OUT.jsonl")
    if args.data_file and not args.output_file:
        raise BadInputError("--data-file needs --output-file")
    if args.output_file and not args.data_file:
        raise BadInputError("--output-file goes with --data-file (prompts given with --prompt print to stdout)")
    if args.src_length is not None and not args.data_file:
        raise BadInputError("--src-length applies to --data-file jobs; shorten a --prompt yourself")
    if args.stream and args.data_file:
        raise BadInputError("--stream prints --prompt answers as they come; a --data-file job writes a file")
    if args.ray is not None and not args.data_file:
        raise BadInputError("--ray runs --data-file jobs; generate --prompt directly, without --ray")
    beam_only = [f for f, on in (("--length-penalty", args.length_penalty != 1.0),
                                 ("--beam-rules", args.beam_rules != "default")) if on]
    if beam_only and args.num_beams == 1:
        raise BadInputError(f"{' and '.join(beam_only)} shape{'s' if len(beam_only) == 1 else ''} beam search, "
                            "which is off (--num-beams 1): add --num-beams N (N > 1) or drop "
                            f"{'it' if len(beam_only) == 1 else 'them'}")
    if args.batch_size is not None and args.stream:
        raise BadInputError("--batch-size does not apply to --stream, which answers one prompt at a time; drop one")
    check_exists(args.data_file, "--data-file", stdin=True)
    check_output_file(args.output_file, "--output-file",
                      inputs=(args.data_file,) if args.data_file and str(args.data_file) != "-" else (),
                      bundles=(args.bundle,))
    cfg = generation_config(args)
    if args.seed is not None and not cfg.do_sample:
        log.warning("--seed %d has no effect: %s decoding is deterministic (sampling needs --temperature, --top-k "
                    "or --top-p)", args.seed, "beam-search" if cfg.num_beams > 1 else "greedy")
    from paddle2ort.runtime.llm import TextGenerator, run_jsonl_job
    from paddle2ort.runtime.progress import busy
    from paddle2ort.runtime.session import SessionOptions

    from paddle2ort.runtime.manifest import load_bundle
    bundle = load_bundle(args.bundle, verify=False)     # its task and default precision (files checked when run)
    precision = args.precision
    if precision is None:   # what `paddle2ort release` chose for this device (generic graph), else fp32
        from paddle2ort.runtime.selection import default_precision
        fused = tuple(bundle.manifest.extra.get("fused") or ()) if args.graph in ("fused", "kernels") else None
        precision = default_precision(bundle, args.device, available=fused or None)
    if (args.task or bundle.manifest.task) == "text2text-generation":
        from .text2text import run_text2text
        return run_text2text(args, cfg, precision)
    if args.ray is not None:
        from paddle2ort.runtime.distributed import generate_job

        from .classify import ray_config
        n = generate_job(args.bundle, args.data_file, args.output_file, cfg, batch_size(args), args.src_length,
                         args.chat, precision, args.graph, args.device, args.threads, ray_config(args))
        log.info("%d prompts -> %s", n, args.output_file)
        return 0
    gen = TextGenerator(args.bundle, precision=precision,
                        session=SessionOptions(device=args.device, device_id=args.device_id,
                                               intra_op_threads=args.threads),
                        graph=args.graph, max_length=args.max_context)
    if args.data_file:
        n = run_jsonl_job(gen, args.data_file, args.output_file, cfg, batch_size(args), args.src_length, args.chat)
        log.info("%d prompts -> %s", n, args.output_file)
        return 0
    if args.stream:
        for i, p in enumerate(args.prompt):
            sys.stdout.write(answer_header(i, args.prompt))
            for delta in gen.stream(p, cfg, chat=args.chat):
                sys.stdout.write(delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    with busy(f"generate ({len(args.prompt)} prompt{'s' if len(args.prompt) > 1 else ''}, "
              f"<= {cfg.max_new_tokens} tokens)"):
        outs = in_batches(lambda ps: gen(ps, cfg, chat=args.chat), args.prompt, args.batch_size)
    print_answers(args.prompt, outs)
    return 0


def batch_size(args) -> int:
    """--batch-size, else a job's default (JOB_BATCH)."""
    return JOB_BATCH if args.batch_size is None else args.batch_size


def in_batches(run_batch, prompts: list, size: int | None) -> list:
    """Answers of `prompts`, `size` at a time (None: all in one batch)."""
    size = size or len(prompts)
    return [o for s in range(0, len(prompts), size) for o in run_batch(prompts[s:s + size])]


def answer_header(i: int, prompts: list[str]) -> str:
    """With several prompts, a line before each answer saying whose it is (answers may span lines); none for one."""
    if len(prompts) < 2:
        return ""
    shown = " ".join(prompts[i].split())
    return f"--- [{i + 1}/{len(prompts)}] {shown[:60] + '...' if len(shown) > 60 else shown}\n"


def print_answers(prompts: list[str], outs: list[str]) -> None:
    for i, out in enumerate(outs):
        sys.stdout.write(answer_header(i, prompts) + out + "\n")


def register(sub) -> None:
    g = command(sub, "generate", "generate text with a text-generation bundle",
                'paddle2ort generate bundles/smollm2 --prompt "What is the capital of France?" --chat --stream\n'
                "paddle2ort generate bundles/smollm2 --data-file in.jsonl --output-file out.jsonl --max-length 128\n"
                "paddle2ort generate bundles/smollm2 --data-file in.jsonl --output-file out.jsonl --ray auto",
                description="Generate text with a text-generation bundle through paddle2ort's decode loop: "
                            "greedy by default; sampling with --temperature/--top-k/--top-p; beam search with "
                            "--num-beams. Runs without Paddle.")
    g.add_argument("bundle", type=Path, help="the bundle directory")
    g.add_argument("--prompt", action="append", default=[], help="prompt (repeatable: one batch)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--max-new-tokens", type=positive_int,
                   help=f"new tokens a prompt at most (default: {DEFAULT_MAX_NEW_TOKENS})")
    g.add_argument("--max-length", type=positive_int, help="PaddleNLP predictor's name for --max-new-tokens "
                   "(give one of the two; default: --max-new-tokens's)")
    g.add_argument("--min-new-tokens", type=nonneg_int, default=0, help="stop tokens are ignored until this many")
    g.add_argument("--temperature", type=nonneg_float, help="sampling temperature; 0 means greedy (default: greedy)")
    g.add_argument("--top-k", type=nonneg_int, help="sample from the k most likely tokens (default: off)")
    g.add_argument("--top-p", type=probability, help="nucleus sampling mass, in (0, 1] (default: off)")
    g.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="> 1 discourages repeats; 1 = off")
    g.add_argument("--num-beams", type=positive_int, default=1, help="beam search with this many beams; 1 = off")
    g.add_argument("--length-penalty", type=finite_float, default=1.0, help="beam score = log-prob / length^this")
    g.add_argument("--beam-rules", default="default", choices=["default", "paddlenlp"],
                   help="paddlenlp: PaddleNLP generate()'s beam scorer (GNMT length penalty ((len+5)/6)^this, its "
                        "stopping rule); default: log-prob / length^this")
    g.add_argument("--no-repeat-ngram-size", type=nonneg_int, default=0,
                   help="no n-gram of this size occurs twice in an output (0 = off)")
    g.add_argument("--forced-bos-token-id", type=nonneg_int,
                   help="the first generated token of an encoder-decoder (mBART-50: the target language's id); "
                        "default: the bundle's (its model config's)")
    g.add_argument("--forced-eos-token-id", type=nonneg_int,
                   help="the token generated at --max-new-tokens; default: the bundle's (BART: eos)")
    g.add_argument("--task", choices=["text-generation", "text2text-generation"],
                   help="the bundle's task (default: its manifest's); text2text-generation: an encoder-decoder "
                        "bundle (convert-seq2seq), --prompt is the source text")
    g.add_argument("--stop", action="append", type=nonempty, default=[], help="stop string, not empty (repeatable)")
    g.add_argument("--seed", type=seed_int, help="seed for reproducible sampling, >= 0 (default: fresh entropy)")
    g.add_argument("--precision", help="which model of the bundle (fp32, fp16, int8, int4); default: the one "
                   "`paddle2ort release` chose for --device, else fp32")
    g.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where onnxruntime runs")
    g.add_argument("--device-id", type=nonneg_int, default=0, help="CUDA device with --device gpu")
    g.add_argument("--graph", default="auto", choices=["auto", "generic", "fused", "kernels"],
                   help="auto: the bundle's default for --device and the precision (convert-llm records the fused "
                        "decoder on the CPU where it was built, else generic; on the CPU that fused decoder runs as "
                        "kernels where this host compiles our step); generic: the paddle2onnx export (host loop); "
                        "fused: onnxruntime's fused decoder graph (on the GPU with CUDA graphs and the sampler "
                        "kernel); kernels: the fused decoder's weights run by our own kernels (LLaMA/Qwen2 family): "
                        "CUDA with --device gpu and CuPy, on the CPU the compiled step (built once with the host's C "
                        "compiler and OpenMP; without them onnxruntime's fused graph)")
    g.add_argument("--max-context", type=positive_int, help="tokens the fused decoder's cache holds, prompt + new "
                   "tokens (the fused and kernels graphs; default: the model's positions up to 4096, which bounds "
                   "the cache memory; up to the model's positions)")
    g.add_argument("--threads", type=nonneg_int, default=0, help="intra-op threads, and the compiled CPU step's "
                   "(0: one per physical core)")
    g.add_argument("--data-file", type=Path, help='JSON lines in ({"src": ...} a line; -: standard input)')
    g.add_argument("--output-file", type=Path, help='JSON lines out ({"src", "output"} a line; text2text bundles: '
                   '{"src", "tgt"}), written atomically')
    g.add_argument("--batch-size", type=positive_int, help=f"prompts a batch (default: {JOB_BATCH} with --data-file, "
                   "every --prompt in one batch)")
    g.add_argument("--src-length", type=positive_int,
                   help="with --data-file: keep at most this many prompt tokens, the last ones (a text2text "
                        "source: its first ones and its end token) (default: all)")
    from .classify import add_ray_args
    add_ray_args(g)
    g.set_defaults(func=run)
