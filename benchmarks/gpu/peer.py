"""The peer benchmark of one model config with random weights (seeded): the same prompts (random ids from the
config's vocabulary) for every system — ours (fused decoder + on-device loop, FP16 and int4), onnxruntime-genai
(FP16, its own builder from the saved HF model, as built and with CUDA graphs), HF transformers eager and
torch.compile — batch 1 and 8; TTFT, decode tokens/s, % of the HBM roofline (`roofline`)."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import (CONFIGS, FUSED_VARIANTS, agreement, device_info, kernel_times, median, pad_id, random_prompts,
                     special_ids)
from .genai_config import genai_with_cuda_graph
from .roofline import decode_row, initializer_bytes, op_counts, row_weight_bytes

log = logging.getLogger(__name__)

HF_INIT_STD = 0.05           # 2-D weights ~ N(0, 0.05): larger than HF's default init, so logits are not all ties


def hf_config(name: str) -> tuple[dict, str]:
    """(HF config kwargs, architecture) of a CONFIGS entry."""
    c = dict(CONFIGS[name])
    return c, c.pop("arch")


def make_hf_model(name: str, hf_dir: Path, tokenizer_dir: Path, seed: int = 0):
    """Random-weight HF model of the config (fp16, cuda), saved with a tokenizer for onnxruntime-genai's builder."""
    import torch
    import transformers as T
    c, arch = hf_config(name)
    torch.manual_seed(seed)
    cls = T.Qwen2Config if arch == "qwen2" else T.LlamaConfig
    cfg = cls(**c, tie_word_embeddings=True, torch_dtype="float16", use_cache=True)
    model = T.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, HF_INIT_STD)
    model = model.cuda().eval()
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    shutil.copy(tokenizer_dir / "tokenizer.json", hf_dir / "tokenizer.json")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "model_max_length": c["max_position_embeddings"]}))
    return model, arch


def torch_state(model) -> dict[str, np.ndarray]:
    """A torch model's state dict as float32 NumPy arrays."""
    return {k: v.float().cpu().numpy() for k, v in model.state_dict().items()}


def timed_generation(reps: int, first_token, rest, prepare=None, warmup: int = 1) -> dict:
    """The one timing loop of every system: `warmup` untimed passes, then `reps` timed ones:
    first_token(prepare()) (prompt + first token, synchronized; the untimed prepare() is omitted when None) ->
    state, then rest(state) to the last token. -> median TTFT (ms) and seconds of rest, and the last pass's state."""
    ttft, dec_s = [], []
    for r in range(reps + warmup):
        args = (prepare(),) if prepare else ()
        t0 = time.perf_counter()
        state = first_token(*args)
        t1 = time.perf_counter()
        rest(state)
        t2 = time.perf_counter()
        if r >= warmup:
            ttft.append(t1 - t0)
            dec_s.append(t2 - t1)
    return {"ttft_ms": 1e3 * median(ttft), "decode_s": median(dec_s), "state": state}


def time_ours(path: Path, spec: dict, prompts: np.ndarray, new: int, reps: int, pad: int,
              cuda_graph: bool = True, device: str = "gpu") -> dict:
    """Our fused decoder + loop through the timing loop (device="cpu": the same path on the CPU, its test)."""
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.generation import GenerationConfig, Generator
    from paddle2ort.runtime.session import SessionOptions
    dec = FusedDecoder(path, spec, session=SessionOptions(device=device), max_length=prompts.shape[1] + new,
                       cuda_graph=cuda_graph)
    cfg = GenerationConfig(max_new_tokens=new)
    rows = prompts.tolist()

    def first_token():
        gen = Generator(dec, cfg, pad)
        gen.append_tokens(rows)                             # prefill
        gen.generate_next_token()                           # token 1
        dec.synchronize()
        return gen

    def rest(gen):
        while not gen.is_done():
            gen.generate_next_token()
        dec.synchronize()

    r = timed_generation(reps, first_token, rest)           # the warm-up pass also captures the CUDA graph
    r["tokens"] = r.pop("state").results()
    dec.release()
    return r


def profile_ours(path: Path, spec: dict, prompts: np.ndarray, pad: int, steps: int = 32,
                 cuda_graph: bool = True) -> dict:
    """GPU kernel time of our decode steps (CUPTI through torch.profiler sees onnxruntime's kernels too):
    kernels per step, GPU-busy time per step, the kernels that take it."""
    from torch.profiler import ProfilerActivity, profile

    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.generation import GenerationConfig, Generator
    from paddle2ort.runtime.session import SessionOptions
    dec = FusedDecoder(path, spec, session=SessionOptions(device="gpu"),
                       max_length=prompts.shape[1] + 2 * steps + 2, cuda_graph=cuda_graph)
    cfg = GenerationConfig(max_new_tokens=2 * steps + 1)
    gen = Generator(dec, cfg, pad)
    gen.append_tokens(prompts.tolist())
    gen.generate_next_token()                             # prefill + token 1
    for _ in range(steps):                                # warm-up, graph capture
        gen.generate_next_token()
    dec.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            gen.generate_next_token()
        dec.synchronize()
        wall = time.perf_counter() - t0
    kernels = {k: {"count_per_step": n, "us_per_step": us} for k, (n, us) in kernel_times(prof, steps, 90).items()}
    dec.release()
    busy = sum(k["us_per_step"] for k in kernels.values())
    top = dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_step"])[:15])
    return {"cuda_graph": cuda_graph, "wall_us_per_step": 1e6 * wall / steps, "gpu_busy_us_per_step": busy,
            "kernels_per_step": sum(k["count_per_step"] for k in kernels.values()), "top_kernels": top}


def time_genai(model_dir: Path, prompts: np.ndarray, new: int, reps: int) -> dict:
    import onnxruntime_genai as og
    model = og.Model(str(model_dir))
    b, p = prompts.shape

    def prepare():                                 # not timed: the generator object, as before the prompt
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=p + new, min_length=p + new, batch_size=b, do_sample=False)
        return og.Generator(model, params)

    def first_token(gen):
        gen.append_tokens(prompts.astype(np.int32))
        gen.generate_next_token()
        gen.get_next_tokens()
        return gen

    def rest(gen):
        while not gen.is_done():
            gen.generate_next_token()
        gen.get_next_tokens()

    r = timed_generation(reps, first_token, rest, prepare)
    gen = r.pop("state")
    r["tokens"] = [list(gen.get_sequence(i))[p:] for i in range(b)]
    return r


def time_hf(model, prompts: np.ndarray, new: int, reps: int, compiled: bool, pad: int) -> dict:
    """HF generate(): TTFT = a 1-token generate, decode = the full generate minus that (same timing loop)."""
    import torch
    ids = torch.tensor(prompts, device="cuda")
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=pad)
    if compiled:
        # transformers compiles the decode step itself (torch.compile, CUDA graphs) once the cache is static;
        # it marks CUDA-graph steps between calls, which wrapping model.forward by hand does not
        model.generation_config.cache_implementation = "static"
    out = []

    def first_token(_):
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        torch.cuda.synchronize()

    def rest(_):
        out[:] = [model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)]
        torch.cuda.synchronize()

    with torch.no_grad():                                 # compiled: the first calls compile / capture
        r = timed_generation(reps, first_token, rest, prepare=torch.cuda.synchronize, warmup=2 if compiled else 1)
    if compiled:
        model.generation_config.cache_implementation = None
    return {"ttft_ms": r["ttft_ms"], "decode_s": max(r["decode_s"] - r["ttft_ms"] / 1e3, 1e-9),
            "tokens": out[0][:, prompts.shape[1]:].tolist(),
            "compiled": getattr(model, "_compiled_call", None) is not None}


def build_genai(hf_dir: Path, genai_dir: Path, cache: Path) -> str | None:
    """onnxruntime-genai's own FP16 CUDA build of the saved HF model; -> the builder's stderr tail on failure."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o",
                        str(genai_dir), "-p", "fp16", "-e", "cuda", "-c", str(cache)], capture_output=True, text=True)
    log.info("genai builder: %.1f s", time.perf_counter() - t)
    if r.returncode != 0:
        log.error("genai builder failed: %s", r.stderr[-2000:])
        return r.stderr[-2000:]
    return None


def bench(args) -> dict:
    import cupy as cp
    import torch

    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.convert.llm.hf_mapping import hf_to_paddlenlp
    from paddle2ort.runtime.kernels.bench import copy_bandwidth

    started = time.perf_counter()
    work = Path(args.work) / args.config
    hf_dir, genai_dir = work / "hf", work / "genai-fp16"
    model, arch = make_hf_model(args.config, hf_dir, Path(args.tokenizer))
    c = CONFIGS[args.config]
    pad, specials = pad_id(model.config.to_dict()), special_ids(model.config.to_dict())
    spec = DecoderSpec.from_config({k: v for k, v in c.items() if k != "arch"}, qkv_bias=(arch == "qwen2"))
    state = hf_to_paddlenlp(torch_state(model))
    paths = {}
    for name in args.ours:
        prec, head_dtype = FUSED_VARIANTS[name]
        paths[name] = work / f"fused.{name}.onnx"
        t = time.perf_counter()
        build_variant(spec, state, prec, paths[name], head_dtype=head_dtype)
        log.info("built ours %s in %.1f s", name, time.perf_counter() - t)
    del state
    genai_error = build_genai(hf_dir, genai_dir, work / "genai-cache") if "genai" in args.systems else None
    if "genai" in args.systems and genai_error is None:
        genai_graph_dir = genai_with_cuda_graph(genai_dir, work / "genai-fp16-cudagraph")
    bw = copy_bandwidth(cp)
    weights = {p: initializer_bytes(paths[p]) for p in paths}
    rng = np.random.default_rng(0)
    rows, tokens, errors = [], {}, {}
    spec_j = spec.to_json()

    def add(system, prec, b, r):
        if "compile" in system and r.get("compiled") is False:
            system += " (did not compile)"
        row = decode_row(system, prec, b, r["ttft_ms"], r["decode_s"], new_tokens=args.new,
                         prompt_tokens=args.prompt, weight_bytes=row_weight_bytes(system, prec, weights, spec_j),
                         spec=spec_j, bandwidth=bw)
        rows.append(row)
        tokens[(system, b)] = r["tokens"]
        log.info("%-22s b=%d ttft %.1f ms  %.2f ms/step  %.0f tok/s/seq  %.1f%% roofline", system, b, row["ttft_ms"],
                 row["step_ms"], row["tok_s_per_seq"], row["pct_hbm_roofline"])

    def attempt(key, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one system failing must not lose the others
            errors[key] = f"{type(e).__name__}: {str(e)[:500]}"
            log.exception("%s failed", key)

    for b in args.batch:
        prompts = random_prompts(rng, b, args.prompt, spec.vocab_size, specials)
        for prec in args.ours:
            for graph in ((True, False) if (prec == "fp16" and args.nograph) else (True,)):
                name = f"ours-{prec}" + ("" if graph else " (no CUDA graph)")
                attempt(f"{name} b{b}", lambda: add(name, prec, b, time_ours(paths[prec], spec_j, prompts, args.new,
                                                                             args.reps, pad, graph)))
            if "engine" in args.systems:                 # our kernels on the same file (runtime/kernels/engine.py)
                from .engine_bench import time_engine
                attempt(f"ours-engine-{prec} b{b}", lambda: add(f"ours-engine-{prec}", prec, b, time_engine(
                    paths[prec], spec_j, prompts, args.new, args.reps, pad)))
            if "engine-plain-prompt" in args.systems:    # the same with its prompt pass launched as it is
                from .engine_bench import OURS_PLAIN, time_engine
                attempt(f"ours-engine-plain-{prec} b{b}", lambda: add(f"ours-engine-plain-{prec}", prec, b,
                                                                      time_engine(paths[prec], spec_j, prompts,
                                                                                  args.new, args.reps, pad,
                                                                                  OURS_PLAIN)))
        if "genai" in args.systems and genai_error is None:
            for name, d in (("onnxruntime-genai", genai_dir), ("onnxruntime-genai (CUDA graph)", genai_graph_dir)):
                attempt(f"{name} b{b}", lambda: add(name, "fp16", b, time_genai(d, prompts, args.new, args.reps)))
        if "hf-eager" in args.systems:
            add("hf-eager", "fp16", b, time_hf(model, prompts, args.new, 1, False, pad))
    profiles = {}
    for prec in args.ours:
        def prof():
            profiles[prec] = profile_ours(paths[prec], spec_j, random_prompts(np.random.default_rng(1), 1, 128,
                                                                             spec.vocab_size, specials), pad)
            log.info("profile %s: %s", prec, {k: v for k, v in profiles[prec].items() if k != "top_kernels"})
        attempt(f"profile {prec}", prof)
    if "hf-compile" in args.systems and time.perf_counter() - started < args.budget_s:
        rng = np.random.default_rng(0)                     # the same prompts as the rows above
        for b in args.batch:
            prompts = random_prompts(rng, b, args.prompt, spec.vocab_size, specials)
            attempt(f"hf-compile b{b}", lambda: add("hf-torch.compile", "fp16", b,
                                                    time_hf(model, prompts, args.new, 2, True, pad)))
    # same weights, same greedy prompts: how often do the systems pick the same tokens as HF eager (fp16 noise
    # flips near-ties on random weights, so this is a sanity figure, not an exactness claim)
    agree = {}
    for (system, b), toks in tokens.items():
        ref = tokens.get(("hf-eager", b))
        if ref is not None and system != "hf-eager":
            agree[f"{system} b{b}"] = agreement([t[:16] for t in toks], [t[:16] for t in ref])["token_agreement"]
    return {"config": args.config, "model": dict(c), "spec": spec_j, "device": device_info(), "pad_id": pad,
            "prompt_tokens": args.prompt, "new_tokens": args.new, "copy_bandwidth_gb_s": bw / 1e9,
            "weight_bytes": weights, "ops_per_step": {p: op_counts(paths[p]) for p in paths},
            "profile_batch1": profiles, "rows": rows, "agreement_first16_vs_hf_eager": agree,
            "errors": errors, "genai_builder_error": genai_error, "seconds": time.perf_counter() - started,
            "torch_cuda": torch.version.cuda}
