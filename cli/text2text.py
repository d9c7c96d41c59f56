"""`paddle2ort generate` on a text2text-generation bundle (T5, BART: runtime.seq2seq.Text2TextGenerator):
--prompt sources print their targets; --data-file runs the predictor-style JSONL job (`{"src": ...}` a line in,
`{"src", "tgt"}` a line out, resumable) through the same job runner as causal LMs."""
from __future__ import annotations

import logging

from paddle2ort.runtime.errors import BadInputError

log = logging.getLogger("paddle2ort.cli")


def run_text2text(args, cfg, precision: str) -> int:
    for flag, given in (("--stream", args.stream), ("--chat", args.chat),
                        (f"--graph {args.graph}", args.graph in ("fused", "kernels")),
                        ("--max-context", getattr(args, "max_context", None) is not None),
                        ("--ray", getattr(args, "ray", None) is not None)):
        if given:
            raise BadInputError(f"{flag} is for text-generation bundles; a text2text-generation bundle takes "
                                "--prompt SOURCE or --data-file")
    if args.src_length is not None and args.src_length < 2:
        raise BadInputError(f"--src-length {args.src_length} leaves no source token: a text2text source keeps its "
                            "first --src-length - 1 tokens and its end token; pass --src-length 2 or more")
    from paddle2ort.runtime.jobs import run_jsonl_job
    from paddle2ort.runtime.progress import busy
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    from paddle2ort.runtime.session import SessionOptions

    from .generate import batch_size, in_batches, print_answers

    gen = Text2TextGenerator(args.bundle, precision=precision,
                             session=SessionOptions(device=args.device, device_id=args.device_id,
                                                    intra_op_threads=args.threads),
                             src_length=args.src_length if args.data_file else None)
    if args.data_file:                # every line is checked (a list, the encoder's positions) before the first batch
        n = run_jsonl_job(gen, args.data_file, args.output_file, cfg, batch_size(args), args.src_length,
                          output_field="tgt")
        log.info("%d sources -> %s", n, args.output_file)
        return 0
    with busy(f"generate ({len(args.prompt)} source{'s' if len(args.prompt) > 1 else ''}, "
              f"<= {cfg.max_new_tokens} tokens)"):
        outs = in_batches(lambda ps: gen(ps, cfg), args.prompt, args.batch_size)
    print_answers(args.prompt, outs)
    return 0

