"""`paddle2ort classify`: over paddle2ort.runtime.pipelines.TextClassifier (JSON lines out)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import (add_bundle_session_options, check_output_file, command, jsonl_with_keys, positive_int,
                     session_options)

log = logging.getLogger(__name__)
CHUNK_BATCHES = 16          # texts go to the classifier in chunks of this many batches: progress between chunks


def read_texts(path: Path) -> list[str]:
    from paddle2ort.runtime.textio import read_utf8_lines
    texts = read_utf8_lines(path, "give a text file, one text a line")
    name = "standard input" if str(path) == "-" else str(path)
    blank = sum(1 for t in texts if not t.strip())
    if blank == len(texts):
        what = f"only {blank} blank line(s)" if texts else "no lines"
        raise BadInputError(f"{name} has no texts ({what}); give a UTF-8 file with one text a line")
    if blank:
        log.warning("%s has %d blank line(s): each is classified as an empty text (what the model says for no "
                    "words), so that result N stays input line N; remove them to leave them out", name, blank)
    return texts


def check_texts(texts: list[str]) -> None:
    """--text values are what the shell passed: bytes that are not UTF-8 arrive as lone surrogates
    (surrogateescape), which the tokenizer drops silently and no UTF-8 output can hold."""
    for i, t in enumerate(texts, 1):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = t[e.start].encode("utf-8", "surrogateescape") if 0xDC80 <= ord(t[e.start]) <= 0xDCFF else None
            raise BadInputError(f"--text #{i} is not valid UTF-8 (at character {e.start}: "
                                f"{f'byte {bad!r}' if bad else repr(t[e.start])}); pass UTF-8 text (check the "
                                "terminal's or the script's encoding), or put the texts in a UTF-8 file for "
                                "--input") from None


def check_output(output: Path | None, bundle: Path, inputs: tuple) -> None:
    """--output: a new or earlier-written JSONL file, not an input, not inside the bundle (a file added to a bundle
    fails its integrity check: every later load of it is refused)."""
    if output is None or is_stream(output):
        return
    check_output_file(output, "--output", inputs=inputs, ours=jsonl_with_keys("text", "label", "score"),
                      bundles=(bundle,))


def classify_chunks(clf, texts: list[str], show_progress: bool):
    """(texts, predictions) a chunk at a time, in input order."""
    from tqdm.auto import tqdm
    step = clf.batch_size * CHUNK_BATCHES
    with tqdm(total=len(texts), desc="classify", unit="text", leave=False,
              disable=None if show_progress else True) as bar:
        for s in range(0, len(texts), step):
            chunk = texts[s:s + step]
            yield chunk, clf(chunk)
            bar.update(len(chunk))


def classify_all(clf, texts: list[str], show_progress: bool):
    return [p for _, preds in classify_chunks(clf, texts, show_progress) for p in preds]


def json_lines(texts: list[str], preds) -> str:
    return "".join(json.dumps({"text": t, "label": label, "score": round(score, 6)}, ensure_ascii=False) + "\n"
                   for t, (label, score) in zip(texts, preds))


def is_stream(path: Path | None) -> bool:
    """--output a pipe, a device or a descriptor (a FIFO, /dev/null, /dev/stdout, a shell's >(...)): written straight
    through, as it comes. An atomic rename would replace the FIFO or the /dev entry by a regular file that its reader
    never sees (as root: /dev/null or /dev/stdout of the whole host), or fail: /dev/fd holds no new files."""
    if path is None or str(path) == "-":
        return path is not None
    where = Path(os.path.abspath(path))               # not resolved: /dev/stdout's target may be a regular file
    special = (where.is_relative_to("/dev") and not where.is_relative_to("/dev/shm")) or where.is_relative_to("/proc")
    return special or path.is_fifo() or path.is_char_device() or path.is_socket()


def write_stream(chunks, out) -> int:
    """Each chunk's lines as soon as it is classified (a reader sees results while the job runs); a reader that
    closes the pipe early (`| head`) ends the job quietly: it has what it asked for."""
    n = 0
    try:
        for texts, preds in chunks:
            out.write(json_lines(texts, preds))
            out.flush()
            n += len(texts)
    except BrokenPipeError:
        if out is sys.stdout:                           # the interpreter's last flush must not fail on it again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        log.debug("the output was closed by its reader after %d result(s); stopped", n)
    return 0


def write_output(chunks, output: Path | None) -> int:
    from paddle2ort.runtime.files import atomic_open
    if output is None or str(output) == "-":
        return write_stream(chunks, sys.stdout)
    if is_stream(output):
        f = open(output, "w", encoding="utf-8")
        try:
            return write_stream(chunks, f)
        finally:
            try:
                f.close()
            except BrokenPipeError:                     # its reader went away with lines still buffered
                pass
    with atomic_open(output) as f:                      # appears whole when every text is classified
        for chunk, preds in chunks:
            f.write(json_lines(chunk, preds))
    return 0


def partial_path(output: Path) -> Path:
    """Where --resume keeps the results so far: OUTPUT.partial beside OUTPUT (ours: made by a --resume run)."""
    return output.with_name(output.name + ".partial")


def resume_point(partial: Path, texts: list[str]) -> int:
    """How many texts the partial results of an earlier --resume run already hold: its complete lines, each the
    result of the input line of the same number (a line cut off by the kill is dropped from the file)."""
    data = partial.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(partial, "r+b") as f:                  # the line being written when the run stopped
            f.truncate(cut)
    fix = f"give the --input that run classified, or delete {partial} (ours, from that run) to start over"
    try:
        lines = data[:cut].decode("utf-8").splitlines()
        rows = [json.loads(x) for x in lines]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{partial} is not the partial results of a classify --resume run ({e}); {fix}") from None
    if len(rows) > len(texts):
        raise BadInputError(f"{partial} holds {len(rows)} results but the input has {len(texts)} texts; {fix}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get("text") != texts[i]:
            raise BadInputError(f"{partial} line {i + 1} is not the result of input line {i + 1} "
                                f"({texts[i][:40]!r}); {fix}")
    return len(rows)


def write_resumable(chunks, output: Path, partial: Path) -> int:
    """--resume: each chunk's lines appended to OUTPUT.partial and flushed as it is classified (a run killed midway
    loses at most the chunk in flight); OUTPUT appears, by a rename, once every text is classified."""
    with open(partial, "a", encoding="utf-8") as f:
        for chunk, preds in chunks:
            f.write(json_lines(chunk, preds))
            f.flush()
            os.fsync(f.fileno())
    os.replace(partial, output)
    return 0


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
    from paddle2ort.runtime.pipelines import TextClassifier

    if bool(args.text) == bool(args.input):
        raise BadInputError("give texts with --text (repeatable) or --input FILE (one text a line), not both")
    if args.ray is not None and args.rows_alone:
        raise BadInputError("--rows-alone is not available with --ray (its actors batch); leave one of them out")
    if args.ray is not None and not args.input:
        raise BadInputError("--ray runs --input FILE jobs; classify --text directly, without --ray")
    if args.resume and (args.output is None or str(args.output) == "-" or is_stream(args.output)):
        raise BadInputError("--resume keeps the results so far beside --output FILE (FILE.partial): give --output a "
                            "regular file path")
    check_texts(args.text)
    check_output(args.output, args.bundle, inputs=(args.input,) if args.input and str(args.input) != "-" else ())
    texts = list(args.text) if args.text else read_texts(args.input)
    done = 0
    if args.resume:
        partial = partial_path(args.output)
        if partial.is_symlink() or (partial.exists() and not partial.is_file()):
            raise BadInputError(f"{partial} (where --resume keeps its results) is not a regular file; move it away")
        done = resume_point(partial, texts) if partial.exists() else 0
        if done:
            log.info("resuming: %d of %d texts are classified in %s", done, len(texts), partial)
        texts = texts[done:]
        if not texts:                                     # stopped after its last line, before the rename
            return write_resumable(iter(()), args.output, partial)
    if args.ray is not None:
        from paddle2ort.runtime.distributed import classify_job
        from paddle2ort.runtime.manifest import load_bundle
        load_bundle(args.bundle)                          # a bad bundle: its error now, not from every actor
        chunks = iter([(texts, classify_job(args.bundle, texts, args.batch_size * CHUNK_BATCHES, args.precision,
                                            args.batch_size, args.device, args.threads, ray_config(args)))])
    else:
        clf = TextClassifier(args.bundle, precision=args.precision, batch_size=args.batch_size,
                             rows_alone=args.rows_alone, session=session_options(args))
        chunks = ((chunk, [(p.label, p.score) for p in preds])
                  for chunk, preds in classify_chunks(clf, texts, show_progress=args.input is not None))
    if args.resume:
        return write_resumable(chunks, args.output, partial_path(args.output))
    return write_output(chunks, args.output)


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
    k.add_argument("--output", type=Path, help="write JSON lines to this file instead of stdout (-: stdout; a "
                   "FIFO or a device such as /dev/null: written into as results come)")
    add_bundle_session_options(k)
    k.add_argument("--batch-size", type=positive_int, default=32, help="texts a batch")
    k.add_argument("--rows-alone", action="store_true",
                   help="a dynamically quantized (INT8) model classifies each text alone: its answer then does not "
                        "depend on the texts batched with it (one activation scale a batch), at about half the "
                        "batched speed; no effect on FP32/FP16")
    k.add_argument("--resume", action="store_true",
                   help="with --output FILE: results go to FILE.partial as they come (flushed a chunk at a time) and "
                        "become FILE when all are done; a run stopped midway and started again with --resume "
                        "continues after the last complete line (the same --input)")
    add_ray_args(k)
    k.set_defaults(func=run)
