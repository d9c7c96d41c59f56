"""llama.cpp (through llama-cpp-python) as the CPU decode peer of `bench-llm`, on the same weights as the bundle.

Two halves, one file:
- in the project's environment: `write_gguf` rewrites the bundle's source GGUF as F32 (its dequantized weights:
  exactly our FP32 model's) or Q8_0 (those weights quantized by `gguf`'s Q8_0, llama.cpp's 8-bit type); `peer`
  runs the other half in the benchmark's own environment (`make bench-llamacpp-env` builds llama.cpp from source
  into .venv-llamacpp; never a project dependency) and returns its rows, or why it was skipped;
- in that environment (`python benchmarks/llamacpp.py JOB.json`, nothing of paddle2ort imported): one model, the
  same token ids as ours, timed like runtime.timing.time_generation (TTFT = prompt eval + first argmax; decode =
  the remaining steps), then greedy ids + each step's top-2 logit margin on the check prompts.
Written by hand because llama-cpp-python's own `generate` samples with its sampler chain and times nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

QTYPES = {"F32": ("ALL_F32", "F32"), "Q8_0": ("MOSTLY_Q8_0", "Q8_0")}     # llama.cpp type -> (file type, tensor type)
PEER_OF = {"fp32": "F32", "int8": "Q8_0"}                                # our precision -> llama.cpp's at equal bits
ENV_DIR = ".venv-llamacpp"
SKIP_FIELDS = ("GGUF.", "general.architecture", "general.file_type")


# ------------------------------------------------------------------ the project's side (gguf + subprocess)
def write_gguf(src: Path, dst: Path, qtype: str) -> Path:
    """src GGUF -> dst with every tensor dequantized to float32, then (Q8_0) every 2-D weight quantized to Q8_0 as
    llama.cpp's quantize does (1-D norms stay F32); all metadata copied. Cached: an existing dst is kept."""
    import gguf
    if qtype not in QTYPES:
        raise ValueError(f"llama.cpp peer type must be one of {', '.join(QTYPES)}, got {qtype!r}")
    dst = Path(dst)
    if dst.is_file():
        return dst
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    tmp = dst.with_name(dst.name + ".part")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_peer(gguf, r, arch, tmp, qtype)
        os.replace(tmp, dst)
    except BaseException:                           # a failed or interrupted write leaves no half-written .part
        tmp.unlink(missing_ok=True)
        raise
    return dst


def _write_peer(gguf, r, arch: str, tmp: Path, qtype: str) -> None:
    """write_gguf's body: reader `r`'s metadata and tensors, as F32 or Q8_0, into `tmp`."""
    w = gguf.GGUFWriter(str(tmp), arch)
    for name, f in r.fields.items():
        if name.startswith(SKIP_FIELDS):
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), f.types[0], sub)
    w.add_file_type(getattr(gguf.LlamaFileType, QTYPES[qtype][0]))
    q8 = gguf.GGMLQuantizationType.Q8_0
    for t in r.tensors:
        a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        a = a.reshape(tuple(int(x) for x in reversed(t.shape.tolist())))
        if qtype == "Q8_0" and a.ndim == 2 and a.shape[-1] % 32 == 0:
            w.add_tensor(t.name, gguf.quants.quantize(a, q8), raw_dtype=q8)
        else:
            w.add_tensor(t.name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def peer_name(src: Path, qtype: str) -> str:
    """The cached peer GGUF's file name: the source's stem and a fingerprint of the source file itself (its
    resolved path, size and mtime), so another model's GGUF of the same name, or the source rewritten in place,
    never reuses a conversion of the old one."""
    import hashlib
    st = src.stat()
    key = f"{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    return f"{src.stem}.{hashlib.sha256(key).hexdigest()[:12]}.{qtype}.gguf"


def check_source_gguf(path: Path, llm: dict) -> None:
    """--gguf is a GGUF of the bundle's model (vocabulary, layers, width as the manifest's llm entry records), checked
    before anything is dequantized; BadInputError naming what differs."""
    from paddle2ort.convert.llm.gguf_import import open_gguf
    from paddle2ort.runtime.errors import BadInputError
    try:
        r = open_gguf(path)
    except BadInputError as e:
        raise BadInputError(f"--gguf {e}; pass the GGUF the bundle was built from") from e

    def field(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()
    arch = field("general.architecture")
    emb = next((t for t in r.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        raise BadInputError(f"--gguf {path} has no token_embd.weight tensor; pass the GGUF the bundle was built from")
    got = {"vocab_size": int(emb.shape.tolist()[-1]), "num_layers": field(f"{arch}.block_count"),
           "hidden_size": field(f"{arch}.embedding_length")}
    bad = [f"{k} {v} (the bundle's: {llm[k]})" for k, v in got.items()
           if v is not None and llm.get(k) is not None and int(v) != int(llm[k])]
    if bad:
        raise BadInputError(f"--gguf {path} is not the bundle's model: its {', '.join(bad)}; pass the GGUF the bundle "
                            "was built from")


def default_python(root: Path | None = None) -> Path:
    """The benchmark environment's interpreter: .venv-llamacpp in the checkout (what `make bench-llamacpp-env`
    builds)."""
    root = root or Path(__file__).resolve().parent.parent
    return root / ENV_DIR / "bin" / "python"


def importable(python: Path) -> str | None:
    """None when `python` imports llama_cpp, else the reason (for the skipped row)."""
    if not Path(python).is_file():
        return f"no llama.cpp environment ({python} does not exist): run `make bench-llamacpp-env` once"
    out = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no error text)"])[-1]
        return f"llama_cpp is not importable by {python} ({last}): run `make bench-llamacpp-env` once"
    return None


def version(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                         text=True)
    return out.stdout.strip()


def system_info(python: Path) -> dict:
    """What the llama.cpp library was built for (llama_print_system_info): {"text": its line, "cpu": the CPU
    features it reports on (AVX2, AVX512, AVX512_VNNI, ...)}, so a run names the peer's ISA beside ours."""
    out = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
                         capture_output=True, text=True)
    return parse_system_info(out.stdout.strip())


def parse_system_info(text: str) -> dict:
    """'CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | ... |' -> {"text": text, "cpu": ["SSE3", "AVX2"]} (features = 1)."""
    cpu = []
    for part in text.replace(":", "|").split("|"):
        key, eq, val = part.partition("=")
        if eq and val.strip() == "1" and key.strip().isupper():
            cpu.append(key.strip())
    return {"text": text, "cpu": cpu}


def run_job(python: Path, job: dict, work: Path) -> dict:
    """One peer configuration in a fresh process of the benchmark environment -> its JSON."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"job-{job['qtype']}-{os.getpid()}.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    try:
        env = dict(os.environ)
        if not job.get("spin_wait", True):        # llama.cpp's OpenMP threads sleep at barriers instead of spinning
            env["OMP_WAIT_POLICY"] = "passive"
        out = subprocess.run([str(python), str(Path(__file__).resolve()), str(path)], capture_output=True, text=True,
                             env=env)
    finally:
        path.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"llama.cpp {job['qtype']} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the benchmark environment's side (llama_cpp)
def _logits(llm) -> np.ndarray:
    """The last evaluated token's logits, copied (llama-cpp-python 0.3.x keeps `scores` only with logits_all)."""
    import llama_cpp
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()


def _open(job: dict):
    import llama_cpp
    kw = dict(model_path=job["model"], n_ctx=int(job["n_ctx"]), n_batch=int(job["n_ctx"]),
              n_ubatch=int(job["n_ctx"]), n_threads=int(job["threads"]), n_threads_batch=int(job["threads"]),
              logits_all=False, verbose=False, flash_attn=bool(job.get("flash_attn", False)))
    if job.get("kv_f32"):                    # the token check: F32 weights and an F32 KV cache (no f16 rounding)
        kw.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(**kw)


def time_one(llm, prompt: list[int], new_tokens: int) -> dict:
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = int(_logits(llm).argmax())
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([tok])
        tok = int(_logits(llm).argmax())
    decode = time.perf_counter() - t1
    steps = new_tokens - 1
    return {"batch": 1, "ttft_ms": ttft * 1e3, "decode_ms_per_step": decode / max(steps, 1) * 1e3,
            "tokens_per_s_per_sequence": steps / decode if decode else float("inf"),
            "tokens_per_s_total": new_tokens / (ttft + decode),
            "decode_tokens_per_s_total": steps / decode if decode else float("inf")}


def greedy(job: dict, prompt: list[int], new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy ids and each step's top-2 logit margin (a fresh context: nothing of another prompt is cached)."""
    llm = _open(job)
    ids, margins = [], []
    llm.eval(prompt)
    for k in range(new_tokens):
        lg = _logits(llm)
        top2 = np.partition(lg, -2)[-2:]
        ids.append(int(lg.argmax()))
        margins.append(float(top2[1] - top2[0]))
        if k + 1 < new_tokens:
            llm.eval([ids[-1]])
    del llm
    return ids, margins


def run(job: dict) -> dict:
    import resource
    res = {}
    if job.get("prompts"):
        p = job["prompts"][0]
        warm = _open(job)
        time_one(warm, p[:16], 4)                                              # warm-up (pages, caches)
        del warm
        llm = _open(job)                                                       # a fresh, empty cache
        res.update(time_one(llm, p, int(job["new_tokens"])))
        del llm
    if job.get("check"):
        out = [greedy(job, p, int(job["check_new_tokens"])) for p in job["check"]]
        res["check"] = {"ids": [o[0] for o in out], "margins": [o[1] for o in out]}
    try:                                       # VmHWM: reset by execve (ru_maxrss keeps the forking parent's peak)
        with open("/proc/self/status", encoding="utf-8") as f:
            res["peak_rss_mb"] = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["settings"] = {"flash_attn": bool(job.get("flash_attn", False)),
                       "kv_cache": "f32" if job.get("kv_f32") else "f16 (llama.cpp's default)",
                       "n_threads": int(job["threads"]), "n_batch": int(job["n_ctx"]),
                       "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset: active)")}
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/llamacpp.py JOB.json  (run by `paddle2ort bench-llm`)", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    print(json.dumps(run(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
