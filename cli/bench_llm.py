"""`paddle2ort bench-llm`: over paddle2ort.benchmarks.llm.run_llm_bench."""
from __future__ import annotations

from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.textio import read_utf8_lines

from .common import (check_exists, check_output_dir, check_unique, command, csv, csv_ints, nonneg_int,
                     positive_int, require_convert_extra)
from .perplexity import write_results


def run(args) -> int:
    check_output_dir(args.output, "--output", stem="llm", bundle=args.bundle)
    check_unique("--precision", args.precision)
    check_unique("--batch-sizes", args.batch_sizes)
    if args.paddle_model is not None:
        check_exists(args.paddle_model, "--paddle-model")
        require_convert_extra("bench-llm --paddle-model", ("paddle", "paddlenlp"))
    check_exists(args.gguf, "--gguf")
    check_exists(args.llamacpp_python, "--llamacpp-python")
    check_exists(args.check_prompts, "--check-prompts")
    for option, value in (("--check-prompts", args.check_prompts), ("--llamacpp-python", args.llamacpp_python)):
        if value is not None and args.gguf is None:
            raise BadInputError(f"{option} is for the llama.cpp peer: pass --gguf (the bundle's source GGUF) too")
    if args.check_new_tokens is not None and args.check_prompts is None:
        raise BadInputError("--check-new-tokens sets the token check's length: pass --check-prompts FILE (and "
                            "--gguf) too, or leave it out")
    if args.gguf is not None:
        require_convert_extra("bench-llm --gguf", ("gguf",))
    prompts = ()
    if args.check_prompts is not None:
        if args.check_prompts.is_dir():
            raise BadInputError(f"--check-prompts {args.check_prompts} is a directory; give a text file, a prompt "
                                "a line")
        prompts = tuple(ln for ln in read_utf8_lines(args.check_prompts) if ln.strip())
        if not prompts:
            raise BadInputError(f"--check-prompts {args.check_prompts} holds no prompt (it is empty, or every line "
                                "is blank); write a prompt a line")
    from paddle2ort.benchmarks.llm import LLMBenchConfig, markdown, run_llm_bench
    res = run_llm_bench(LLMBenchConfig(bundle=args.bundle, paddle_model=args.paddle_model, precisions=args.precision,
                                       batch_sizes=args.batch_sizes, prompt_len=args.prompt_len,
                                       new_tokens=args.new_tokens, threads=args.threads, gguf=args.gguf,
                                       llamacpp_python=args.llamacpp_python, check_prompts=prompts,
                                       repeats=args.repeats, spin_wait=not args.no_spin, floor=not args.no_floor,
                                       kernels=not args.no_kernels,
                                       check_new_tokens=args.check_new_tokens or LLMBenchConfig.check_new_tokens))
    md = markdown(res)
    write_results(args.output, "llm", res, md)
    from paddle2ort.benchmarks.llm import plot
    if not plot(res, args.output / "llm.png"):         # no batch-1 row, or no matplotlib: no plot of this run
        (args.output / "llm.png").unlink(missing_ok=True)   # (an earlier run's: check_output_dir made sure it is ours)
    print(md)
    return 0


def register(sub) -> None:
    bl = command(sub, "bench-llm", "TTFT / tokens/s / peak RSS of a text-generation bundle vs Paddle",
                 "paddle2ort bench-llm bundles/smollm2 --batch-sizes 1,8 --paddle-model zoo/smollm2/model",
                 description="Time to first token, decode ms/step, tokens/s and peak RSS per precision and batch "
                             "size, each configuration in a fresh process; --paddle-model adds PaddleNLP dygraph "
                             "rows under the same loop (needs pip install 'paddle2ort[convert]').")
    bl.add_argument("bundle", type=Path, help="the bundle directory")
    bl.add_argument("--paddle-model", type=Path, help="the PaddleNLP model dir: adds the Paddle dygraph rows")
    bl.add_argument("--precision", type=csv, help="comma list (default: every model in the bundle)")
    bl.add_argument("--batch-sizes", type=csv_ints, default=(1, 8), help="comma list of batch sizes")
    bl.add_argument("--prompt-len", type=positive_int, default=128, help="prompt tokens a row")
    bl.add_argument("--new-tokens", type=positive_int, default=128, help="tokens generated a row")
    bl.add_argument("--threads", type=nonneg_int, default=0, help="CPU threads (0: all usable cores)")
    bl.add_argument("--gguf", type=Path, help="the GGUF the bundle was built from: adds llama.cpp rows at equal "
                    "bits (F32 for fp32, Q8_0 for int8; batch 1) from its weights, run in .venv-llamacpp (`make "
                    "bench-llamacpp-env`); skipped with the reason when llama_cpp is not importable there")
    bl.add_argument("--llamacpp-python", type=Path, help="the llama.cpp environment's python "
                    "(default: .venv-llamacpp/bin/python in the checkout; needs --gguf)")
    bl.add_argument("--check-prompts", type=Path, help="text file, a prompt a line: greedy tokens of our FP32 "
                    "users' graph vs llama.cpp F32, near-tie aware (needs --gguf)")
    bl.add_argument("--check-new-tokens", type=positive_int, help="tokens a check prompt (with --check-prompts; "
                    "default: LLMBenchConfig's, 32)")
    bl.add_argument("--repeats", type=positive_int, default=1, help="runs of every configuration, round-robin; "
                    "medians reported")
    bl.add_argument("--no-spin", action="store_true", help="worker threads sleep between ops instead of "
                    "spinning, in onnxruntime and llama.cpp alike (faster on a host shared with other jobs)")
    bl.add_argument("--no-floor", action="store_true", help="skip the products-floor rows (the users' fused graph's "
                    "weight products alone, a decode step's lower bound)")
    bl.add_argument("--no-kernels", action="store_true", help="skip the compiled-step rows (the fused decoder's "
                    "weights run by our compiled CPU step, graph 'kernels')")
    bl.add_argument("--output", type=Path, default=Path("bench-results"), help="results directory")
    bl.set_defaults(func=run)
