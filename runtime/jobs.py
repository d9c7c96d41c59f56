"""JSONL generation jobs (PaddleNLP predictor format): `{"src": ...}` a line in, `{"src", "output"}` a line out
(the output field is the caller's: text2text bundles write `tgt`, as PaddleNLP's seq2seq data names the target).

Every line is checked before the first batch runs (JSON, prompt field, chat template, length against the model's
context), and errors name the line. Results are written atomically after every batch, each with its input line
number and the sha256 of that line, so a failure keeps what finished and a rerun of the same command resumes:
lines whose result is already in the output file (same line, same hash) are skipped.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError, Paddle2OrtError
from .files import atomic_open
from .textio import split_lines

log = logging.getLogger(__name__)

FORMAT_HINT = 'one JSON object a line, e.g. {"src": "your prompt"}'


@dataclass(frozen=True)
class JobLine:
    line: int                 # 1-based line number in the input file
    text: str | tuple[str, ...]   # the prompt, or a conversation (user, assistant, ..., user turns: --chat)
    sha256: str               # of the raw input line (what a resumed run must match)


def _line_hash(raw: str) -> str:
    return hashlib.sha256(raw.strip().encode("utf-8")).hexdigest()


def read_jsonl_lines(path: Path) -> list[JobLine]:
    """Parse every line up front; blank lines are skipped; any problem names `path:LINE`."""
    from .textio import read_utf8_lines
    path = Path(path)
    out = []
    for no, line in enumerate(read_utf8_lines(path, FORMAT_HINT), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{no} is not valid JSON ({e.msg}); {FORMAT_HINT}") from e
        text = obj.get("src", obj.get("prompt")) if isinstance(obj, dict) else None
        if isinstance(text, list):          # PaddleNLP's predictor: a conversation, turns from the user's first
            if not text or not all(isinstance(t, str) and t.strip() for t in text) or len(text) % 2 == 0:
                raise BadInputError(f"{path}:{no}: a list \"src\" is a conversation: an odd number of non-empty "
                                    "turns, user first and last (user, assistant, ..., user)")
            text = tuple(text) if len(text) > 1 else text[0]
        if not isinstance(text, (str, tuple)):
            raise BadInputError(f"{path}:{no} has no string field \"src\" (or \"prompt\")")
        if isinstance(text, str) and not text.strip():
            raise BadInputError(f"{path}:{no} has an empty prompt; remove the line or give it text")
        out.append(JobLine(no, text, _line_hash(line)))
    if not out:
        raise BadInputError(f"{path} has no prompts; {FORMAT_HINT}")
    return out


def read_jsonl_prompts(path: Path) -> list[str]:
    """The prompts of a JSONL file (see read_jsonl_lines)."""
    return [j.text for j in read_jsonl_lines(path)]


def _context_limit(gen) -> int | None:
    model = gen.model
    return getattr(model, "max_context", None) or getattr(model, "capacity", None)


def prepare(gen, lines: list[JobLine], path: Path, cfg, src_length: int | None, chat: bool) -> list[list[int]]:
    """Token ids of every line, each checked against the model's context; errors name the line."""
    if src_length is not None and (isinstance(src_length, bool) or not isinstance(src_length, int) or src_length < 1):
        raise BadInputError(f"src_length must be a positive number of tokens, got {src_length}")
    limit = _context_limit(gen)
    source_limit = getattr(gen, "source_limit", None)       # an encoder's positions (text2text)
    ids = []
    for j in lines:
        if isinstance(j.text, tuple) and not chat:
            fix = getattr(gen, "conversation_fix", "pass --chat so its turns go through the model's chat template")
            raise BadInputError(f"{path}:{j.line} is a conversation (a list \"src\" of {len(j.text)} turns): {fix}")
        try:
            t = gen.prompt_ids(j.text, chat)
        except BadInputError as e:
            raise BadInputError(f"{path}:{j.line}: {e}") from None
        if src_length and chat and len(t) > src_length:
            raise BadInputError(f"{path}:{j.line}: the chat prompt is {len(t)} tokens with its template, over "
                                f"--src-length {src_length}; a templated prompt is not cut (its end is the template's "
                                "tail, the same for every line): shorten the message or raise --src-length")
        if src_length:                          # (a text2text generator's prompt_ids kept a source's head already)
            t = t[-src_length:]                 # keep the end: what the model continues from
        if source_limit is not None and len(t) > source_limit:
            raise BadInputError(f"{path}:{j.line}: the source is {len(t)} tokens, over the encoder's {source_limit} "
                                f"positions; shorten it, or pass --src-length {source_limit} (keeps its first tokens)")
        if limit is not None and len(t) + cfg.max_new_tokens > limit:
            raise BadInputError(f"{path}:{j.line}: prompt ({len(t)} tokens) + max_new_tokens ({cfg.max_new_tokens}) "
                                f"exceeds the model's context of {limit} tokens; shorten the prompt, pass "
                                "--src-length, or lower --max-new-tokens")
        ids.append(t)
    return ids


def job_key(gen, cfg, src_length: int | None, chat: bool) -> str:
    """What makes two runs the same job (besides the input lines): generation options, prompt handling, model."""
    import dataclasses
    opts = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    bundle = getattr(gen, "bundle", None)
    model = {p: m.sha256 for p, m in bundle.manifest.models.items()} if bundle is not None else None
    key = {"cfg": opts, "src_length": src_length, "chat": chat, "model": model,
           "precision": getattr(gen, "precision", None), "graph": getattr(gen, "graph", None)}
    if src_length is not None and getattr(gen, "source_limit", None) is not None:
        key["src_cut"] = "head+end"     # a text2text source keeps its head and end token (it kept its tail before)
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def load_done(output_file: Path, lines: list[JobLine], key: str = "", output_field: str = "output") -> dict[int, dict]:
    """Results a previous run of this job left in output_file: line -> record (only lines whose hash matches).
    Results of another configuration (key) are refused, never mixed in."""
    output_file = Path(output_file)
    if not output_file.exists():
        return {}
    if not output_file.is_file():
        raise BadInputError(f"output file {output_file} exists and is not a file; choose another --output-file")
    by_line = {j.line: j for j in lines}
    done, foreign, other = {}, 0, 0
    try:
        text = output_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"output file {output_file} exists and cannot be read ({e}); move it away") from e
    for raw in split_lines(text):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            foreign += 1
            continue
        if not (isinstance(rec, dict) and isinstance(rec.get("line"), int) and output_field in rec
                and isinstance(rec.get("input_sha256"), str)):
            foreign += 1
            continue
        if rec.get("job") != key:
            other += 1
            continue
        j = by_line.get(rec["line"])
        if j is not None and j.sha256 == rec["input_sha256"]:
            done[j.line] = rec
    if foreign:
        raise BadInputError(f"output file {output_file} exists and holds {foreign} line(s) that are not results of "
                            "a paddle2ort job; it is not replaced: move it away or choose another --output-file")
    if other:
        raise BadInputError(f"output file {output_file} holds {other} result(s) of a run with other options (or "
                            "another model); rerun with the same options to resume, or choose another --output-file")
    return done


def _write_atomic(path: Path, records: list[dict]) -> None:
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


DEFAULT_BATCH = 8           # prompts a batch in a job


def run_jsonl_job(gen, data_file: Path, output_file: Path, cfg, batch_size: int = DEFAULT_BATCH,
                  src_length: int | None = None, chat: bool = False, output_field: str = "output") -> int:
    """The predictor-style batch job. Returns the number of prompts now in output_file. A rerun resumes.
    SIGTERM stops it like Ctrl-C: the finished batches stay written. output_field: each record's generated text
    ("output"; text2text: "tgt")."""
    from .signals import sigterm_as_interrupt
    with sigterm_as_interrupt():
        return _run_jsonl_job(gen, data_file, output_file, cfg, batch_size, src_length, chat, output_field)


def _run_jsonl_job(gen, data_file: Path, output_file: Path, cfg, batch_size: int, src_length: int | None,
                   chat: bool, output_field: str = "output") -> int:
    from tqdm.auto import tqdm
    data_file, output_file = Path(data_file), Path(output_file)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
    if output_file.resolve() == data_file.resolve():
        raise BadInputError(f"--output-file {output_file} is the input file; choose another path")
    lines = read_jsonl_lines(data_file)
    cfg = gen.stop_ids(cfg)
    ids = prepare(gen, lines, data_file, cfg, src_length, chat)
    key = job_key(gen, cfg, src_length, chat)
    done = load_done(output_file, lines, key, output_field)
    if done:
        log.info("resuming: %d of %d lines already in %s", len(done), len(lines), output_file)
    todo = [(j, t) for j, t in zip(lines, ids) if j.line not in done]
    for s in tqdm(range(0, len(todo), batch_size), desc="generate", unit="batch", disable=None):
        chunk = todo[s:s + batch_size]
        try:
            outs = gen.generate_token_ids([t for _, t in chunk], cfg)
        except BaseException as e:
            where = (f"line {chunk[0][0].line}" if len(chunk) == 1 else
                     f"lines {', '.join(str(j.line) for j, _ in chunk)}")
            kept = f"{len(done)} finished result(s) kept in {output_file}" if done else "no results yet"
            msg = f"{data_file}: generation failed on {where} ({type(e).__name__}: {e}); {kept}; " \
                  "rerun the same command to resume"
            if isinstance(e, Paddle2OrtError):
                e.args = (msg,)
                raise
            if isinstance(e, KeyboardInterrupt):
                log.error("%s", msg)
                raise
            raise Paddle2OrtError(msg) from e
        for (j, _), o in zip(chunk, outs):
            done[j.line] = {"src": j.text, output_field: cfg.cut(gen.tokenizer.decode(o)), "line": j.line,
                            "input_sha256": j.sha256, "job": key}
        _write_atomic(output_file, [done[k] for k in sorted(done)])
    if not todo:
        _write_atomic(output_file, [done[k] for k in sorted(done)])
    return len(done)
