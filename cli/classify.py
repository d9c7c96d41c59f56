"""`paddle2ort classify`: over paddle2ort.runtime.pipelines.TextClassifier (JSON lines out)."""
from __future__ import annotations

import json
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import check_output_file, command, jsonl_with_keys, nonneg_int, positive_int

CHUNK_BATCHES = 16          # texts go to the classifier in chunks of this many batches: progress between chunks


def read_texts(path: Path) -> list[str]:
    from paddle2ort.runtime.textio import read_utf8_lines
    texts = read_utf8_lines(path, "give a text file, one text a line")
    if not texts:
        raise BadInputError(f"{path} has no texts; give a UTF-8 file with one text a line")
    return texts


def classify_all(clf, texts: list[str], show_progress: bool):
    from tqdm.auto import tqdm
    step = clf.batch_size * CHUNK_BATCHES
    preds = []
    with tqdm(total=len(texts), desc="classify", unit="text", leave=False,
              disable=None if show_progress else True) as bar:
        for s in range(0, len(texts), step):
            preds += clf(texts[s:s + step])
            bar.update(len(texts[s:s + step]))
    return preds


def add_ray_args(p) -> None:
    """--ray [ADDRESS] and the actor size (classify and generate jobs)."""
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the job on Ray Data over an actor pool of sessions (one per GPU, or per "
                        "--ray-cpus-per-actor cores), order kept; no ADDRESS: a local Ray started here; "
                        "ADDRESS (auto, HOST:6379, ray://HOST:10001): join that cluster (the bundle at the same path "
                        "on every node). Needs the ray extra (ray:// also Ray Client: pip install "
                        "'ray[client]==2.60.0')")
    p.add_argument("--ray-cpus-per-actor", type=positive_int, default=None,
                   help="with --ray --device cpu: cores (and intra-op threads) of each actor's session (default: 4, "
                        "or the cluster's cores where it has fewer)")


def ray_config(args):
    from paddle2ort.runtime.distributed import RayConfig
    return RayConfig(address=args.ray or None, cpus_per_actor=args.ray_cpus_per_actor)


def run(args) -> int:
    from paddle2ort.runtime.files import atomic_write
    from paddle2ort.runtime.pipelines import TextClassifier
    from paddle2ort.runtime.session import SessionOptions

    if bool(args.text) == bool(args.input):
        raise BadInputError("give texts with --text (repeatable) or --input FILE (one text a line), not both")
    if args.ray is not None and not args.input:
        raise BadInputError("--ray runs --input FILE jobs; classify --text directly, without --ray")
    check_output_file(args.output, "--output", inputs=(args.input,), ours=jsonl_with_keys("text", "label", "score"))
    texts = list(args.text) if args.text else read_texts(args.input)
    if args.ray is not None:
        from paddle2ort.runtime.distributed import classify_job
        from paddle2ort.runtime.manifest import load_bundle
        load_bundle(args.bundle)                          # a bad bundle: its error now, not from every actor
        preds = classify_job(args.bundle, texts, args.batch_size * CHUNK_BATCHES, args.precision, args.batch_size,
                             args.device, args.threads, ray_config(args))
    else:
        clf = TextClassifier(args.bundle, precision=args.precision, batch_size=args.batch_size,
                             session=SessionOptions(device=args.device, device_id=args.device_id,
                                                    intra_op_threads=args.threads))
        preds = [(p.label, p.score) for p in classify_all(clf, texts, show_progress=args.input is not None)]
    lines = [json.dumps({"text": t, "label": label, "score": round(score, 6)}, ensure_ascii=False)
             for t, (label, score) in zip(texts, preds)]
    if args.output:
        atomic_write(args.output, "\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    return 0


def register(sub) -> None:
    k = command(sub, "classify", "classify texts with a text-classification bundle (JSON lines out)",
                'paddle2ort classify bundles/minilm --text "I love self-driving cars"\n'
                "paddle2ort classify bundles/minilm --input texts.txt --output preds.jsonl --precision int8\n"
                "paddle2ort classify bundles/minilm --input texts.txt --output preds.jsonl --ray auto",
                description="Classify texts with a text-classification bundle: one JSON object a text "
                            '({"text", "label", "score"}), on stdout or into --output (written atomically). '
                            "Runs without Paddle.")
    k.add_argument("bundle", type=Path, help="the bundle directory")
    k.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    k.add_argument("--input", type=Path, help="UTF-8 file, one text a line (-: standard input)")
    k.add_argument("--output", type=Path, help="write JSON lines to this file instead of stdout")
    k.add_argument("--precision", help="which model of the bundle (fp32, fp16, int8); default: the one "
                   "`paddle2ort release` chose for --device, else fp32")
    k.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where onnxruntime runs")
    k.add_argument("--device-id", type=nonneg_int, default=0, help="CUDA device with --device gpu")
    k.add_argument("--threads", type=nonneg_int, default=0, help="intra-op threads (0: onnxruntime's choice)")
    k.add_argument("--batch-size", type=positive_int, default=32, help="texts a batch")
    add_ray_args(k)
    k.set_defaults(func=run)
