"""GPU generation: acceptance checks and the peer benchmark, one scripted device run each (results -> JSON + MD).

    python -m paddle2ort.benchmarks.gpu_llm check --bundle B --gguf F --golden G --out DIR
    python -m paddle2ort.benchmarks.gpu_llm bench --config qwen2.5-0.5b --tokenizer DIR --out DIR

`check`: greedy on the GPU vs the CPU loop's golden ids (generic FP32 bundle: token identity; fused FP16 / int4
built from the same GGUF weights: token agreement), the out-of-memory path, and a sampled generation.
`bench`: one model config with random weights (seeded), the same prompts (random ids) for every system — ours
(fused decoder + on-device loop, FP16 and int4), onnxruntime-genai (FP16, its own builder from the saved HF model),
HF transformers eager and torch.compile — batch 1 and 8; TTFT, decode tokens/s, % of the HBM roofline (weights + KV
bytes read per step / measured device copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CONFIGS = {
    "smollm2-135m": {"arch": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                     "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "qwen2.5-0.5b": {"arch": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                     "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768},
}


# ------------------------------------------------------------------------------------------ shared pieces
def device_info() -> dict:
    import cupy as cp

    from .env import gpu_names
    props = cp.cuda.runtime.getDeviceProperties(0)
    info = {"gpu": props["name"].decode(), "gpu_memory_gb": round(props["totalGlobalMem"] / 2**30, 1),
            "nvidia_smi": "; ".join(gpu_names())}
    vers = {}
    for mod in ("onnxruntime", "onnxruntime_genai", "torch", "transformers", "cupy", "numpy"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            vers[mod] = None
    info["versions"] = vers
    return info


def _write(out: Path, stem: str, res: dict, md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(md)


def agreement(got: list[list[int]], want: list[list[int]]) -> dict:
    """Position-wise token agreement and how many rows match exactly."""
    same = total = 0
    for g, w in zip(got, want):
        n = max(len(g), len(w))
        same += sum(1 for a, b in zip(g, w) if a == b)
        total += n
    return {"token_agreement": same / max(total, 1), "identical_rows": sum(g == w for g, w in zip(got, want)),
            "rows": len(want)}


# ------------------------------------------------------------------------------------------ check
def check(args) -> dict:
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.convert.zoo.smollm2 import read_gguf, to_paddlenlp
    from paddle2ort.runtime.fused import FusedDecoder, generate
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.session import SessionOptions

    golden = json.loads(Path(args.golden).read_text())
    prompts = [r["prompt_ids"] for r in golden["rows"]]
    want = [r["ids"] for r in golden["rows"]]
    n = int(golden["max_new_tokens"])
    res: dict = {"device": device_info(), "golden": golden["reference"], "max_new_tokens": n, "prompts": len(prompts)}
    greedy = GenerationConfig(max_new_tokens=n)          # no stop ids: the golden rows run the full length

    # 1. the generic FP32 bundle on CUDA (IO binding, host loop), batched and one at a time
    if args.bundle:
        gen = TextGenerator(args.bundle, session=SessionOptions(device="gpu"))
        assert gen.model.session.get_providers()[0] == "CUDAExecutionProvider"
        t = time.perf_counter()
        batched = gen.generate_token_ids(prompts, greedy)
        single = [gen.generate_token_ids([p], greedy)[0] for p in prompts]
        res["fp32_generic"] = {"batched": agreement(batched, want), "single": agreement(single, want),
                               "seconds": time.perf_counter() - t}
        log.info("fp32 generic on GPU: %s", res["fp32_generic"])
        del gen

    # 2. fused decoders built here from the same GGUF weights the Paddle model was made of
    cfg, tensors, _ = read_gguf(Path(args.gguf))
    state = to_paddlenlp(cfg, tensors)
    spec = DecoderSpec.from_config({**cfg, "tie_word_embeddings": True})
    work = Path(args.work)
    paths = {}
    for name in args.fused:
        prec, head_dtype = FUSED_VARIANTS[name]
        path = paths[name] = work / f"smollm2.fused.{name}.onnx"
        build_variant(spec, state, prec, path, head_dtype=head_dtype)
        if prec == "fp32":                      # a CPU graph (CUDA GroupQueryAttention is fp16/bf16): error check below
            continue
        try:
            fused_variant_check(res, name, path, spec, prompts, want, greedy)
        except Exception as e:  # noqa: BLE001 - recorded in the results, the rest is kept
            log.exception("%s failed", name)
            res.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"

    # 4. beam search on the device (beam kernel, cache reorder) vs the same loop and graph on the CPU (kernel twin)
    if "fp16" in paths and "fp16_fused" in res:
        beam = GenerationConfig(max_new_tokens=16, num_beams=4)
        cpu = generate(FusedDecoder(paths["fp16"], spec.to_json(), device="cpu", max_length=256), prompts[:6], beam, 2)
        dev = FusedDecoder(paths["fp16"], spec.to_json(), device="gpu", max_length=256)
        res["beam_search"] = {"config": "fp16 fused graph, 4 beams, 16 new tokens, 6 prompts; reference: the same "
                                        "graph and loop on the CPU", "fp16": agreement(generate(dev, prompts[:6], beam, 2), cpu)}
        log.info("beam search: %s", res["beam_search"])
    if "fp32" in paths:                                            # the fp32 graph asked for on the GPU: clear error
        try:
            FusedDecoder(paths["fp32"], spec.to_json(), device="gpu", max_length=256)
            res["fp32_fused_on_gpu"] = "no error"
        except Exception as e:  # noqa: BLE001
            res["fp32_fused_on_gpu"] = f"{type(e).__name__}: {e}"
    # 5. the GPT-2 family (random weights, GPT-2 small geometry): GPU vs CPU, same fused graph
    if args.gpt2:
        try:
            res["gpt2"] = gpt2_check(work)
        except Exception as e:  # noqa: BLE001 - recorded in the results, the rest is kept
            log.exception("gpt2 check failed")
            res.setdefault("errors", {})["gpt2"] = f"{type(e).__name__}: {e}"
    return res


def fused_variant_check(res: dict, name: str, path: Path, spec, prompts, want, greedy) -> None:
    """One fused variant on the GPU: greedy agreement with the golden rows (batched, one at a time,
    teacher-forced); for fp16 also seeded sampling and the out-of-memory path."""
    from paddle2ort.runtime.errors import DeviceError
    from paddle2ort.runtime.fused import FusedDecoder, generate
    from paddle2ort.runtime.generation import GenerationConfig
    dec = FusedDecoder(path, spec.to_json(), device="gpu", max_length=256)
    t = time.perf_counter()
    b = generate(dec, prompts, greedy, pad_id=2)
    s = [generate(dec, [p], greedy, pad_id=2)[0] for p in prompts]
    first_div = [next((i for i, (x, y) in enumerate(zip(g, w)) if x != y), len(w)) for g, w in zip(b, want)]
    res[f"{name}_fused"] = {"batched": agreement(b, want), "single": agreement(s, want),
                            "first_divergence": first_div, "teacher_forced": teacher_forced(dec, prompts, want),
                            "seconds": time.perf_counter() - t}
    log.info("%s fused: %s", name, res[f"{name}_fused"]["batched"])
    if name == "fp16":
        samp = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=0.8, top_k=40, top_p=0.9,
                                seed=7, repetition_penalty=1.1)
        a, a2 = generate(dec, prompts[:4], samp, 2), generate(dec, prompts[:4], samp, 2)
        res["fp16_sampling_reproducible"] = a == a2
        # 3. out of memory: a clear error naming a smaller batch, and the decoder still works afterwards
        big = FusedDecoder(path, spec.to_json(), device="gpu", max_length=8192)
        try:
            big.state(1000)
            res["oom"] = {"raised": False}
        except DeviceError as e:
            res["oom"] = {"raised": True, "message": str(e)}
        try:
            generate(big, [prompts[0]] * 512, GenerationConfig(max_new_tokens=4), 2)
        except DeviceError as e:
            res["oom"]["second_message"] = str(e)
        res["oom"]["usable_after"] = generate(big, [prompts[0]], greedy, 2)[0] == b[0]
        log.info("oom: %s", res["oom"])


FUSED_VARIANTS = {"fp32": ("fp32", None), "fp16": ("fp16", "float16"), "fp16-head32": ("fp16", "float32"),
                  "int4": ("int4", None)}             # name -> (precision, LM head dtype; None = the graph's)


def gpt2_check(work: Path, prompts: int = 16, new: int = 32) -> dict:
    """GPT-2 small geometry with seeded random weights: greedy of the fp16 graph on the GPU vs the CPU loop over
    the same fp16 graph and over the fp32 one."""
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, random_state
    from paddle2ort.convert.validate import compare
    from paddle2ort.runtime.fused import FusedDecoder, generate
    from paddle2ort.runtime.generation import GenerationConfig
    spec = DecoderSpec.from_config({"vocab_size": 50257, "hidden_size": 768, "num_hidden_layers": 12,
                                    "num_attention_heads": 12, "intermediate_size": 3072,
                                    "max_position_embeddings": 1024}, family="gpt")
    state = random_state(spec, seed=0, std=0.1)
    rows = np.random.default_rng(0).integers(3, spec.vocab_size, size=(prompts, 24)).tolist()
    rows = [r[:8 + i] for i, r in enumerate(rows)]                                  # lengths 8..23: right padding
    cfg = GenerationConfig(max_new_tokens=new)
    out = {"geometry": "GPT-2 small (12 x 768, vocab 50257), random weights std 0.1", "prompts": prompts, "new": new}
    paths = {}
    for prec in ("fp32", "fp16"):
        paths[prec] = work / f"gpt2.fused.{prec}.onnx"
        build_variant(spec, state, prec, paths[prec])
    decs = {"cpu_fp32": FusedDecoder(paths["fp32"], spec.to_json(), device="cpu", max_length=128),
            "cpu_fp16": FusedDecoder(paths["fp16"], spec.to_json(), device="cpu", max_length=128),
            "gpu_fp16": FusedDecoder(paths["fp16"], spec.to_json(), device="gpu", max_length=128)}
    toks = {k: generate(d, rows, cfg, 0) for k, d in decs.items()}
    out["gpu_fp16_vs_cpu_fp16"] = agreement(toks["gpu_fp16"], toks["cpu_fp16"])
    out["gpu_fp16_vs_cpu_fp32"] = agreement(toks["gpu_fp16"], toks["cpu_fp32"])
    out["cpu_fp16_vs_cpu_fp32"] = agreement(toks["cpu_fp16"], toks["cpu_fp32"])       # the noise floor of fp16
    # logits of every prompt position (no compounding): the graph's parity, not the near-ties' luck
    logits = {k: np.concatenate(d.prompt_logits(d.state(len(rows)), rows, 0)) for k, d in decs.items()}
    for k in ("gpu_fp16", "cpu_fp16"):
        m = compare(logits["cpu_fp32"], logits[k], class_axis=True)
        out[f"prefill_logits_{k}_vs_cpu_fp32"] = {x: m[x] for x in ("max_rel_diff", "cosine", "argmax_agreement")}
    log.info("gpt2: %s", out)
    return out


def teacher_forced(dec, prompts: list[list[int]], want: list[list[int]]) -> dict:
    """Per-token agreement without compounding: feed prompt + the golden continuation in one prompt call and
    compare the argmax at every position with the golden next token."""
    seqs = [p + w[:-1] for p, w in zip(prompts, want)]
    logits = dec.prompt_logits(dec.state(len(seqs)), seqs, pad_id=2)
    same = total = 0
    for lg, p, w in zip(logits, prompts, want):
        same += int((lg[len(p) - 1:].argmax(-1) == np.array(w)).sum())
        total += len(w)
    dec.release()
    return {"token_agreement": same / total, "tokens": total}


def check_markdown(r: dict) -> str:
    d = r["device"]
    lines = [f"# GPU generation checks — {d['gpu']}", "",
             f"Golden: {r['golden']} (CPU loop = Paddle), {r['prompts']} prompts x {r['max_new_tokens']} greedy tokens.",
             "", "| model | loop | batched: token agreement | identical rows | one at a time: agreement | identical |",
             "|---|---|---:|---:|---:|---:|"]
    keys = [("fp32_generic", "host loop, CUDA EP + IO binding")] + [
        (f"{v}_fused", "on-device (CUDA graph)") for v in FUSED_VARIANTS]
    for key, loop in keys:
        if key in r:
            b, s = r[key]["batched"], r[key]["single"]
            lines.append(f"| {key} | {loop} | {100 * b['token_agreement']:.1f}% | {b['identical_rows']}/{b['rows']} | "
                         f"{100 * s['token_agreement']:.1f}% | {s['identical_rows']}/{s['rows']} |")
    tf = {k: r[k]["teacher_forced"] for k, _ in keys if k in r and "teacher_forced" in r[k]}
    if tf:
        lines += ["", "Teacher-forced (each position fed the golden prefix, so one flipped near-tie does not change "
                  "the rest of the row): " + ", ".join(f"{k} {100 * v['token_agreement']:.1f}% of {v['tokens']} "
                                                       "tokens" for k, v in tf.items())]
    if "oom" in r:
        lines += ["", f"Out of memory: raised={r['oom']['raised']}; message: `{r['oom'].get('message', '')}`; "
                  f"second: `{r['oom'].get('second_message', '')}`; decoder usable afterwards: "
                  f"{r['oom'].get('usable_after')}"]
    if "fp32_fused_on_gpu" in r:
        lines += ["", f"Fused fp32 decoder asked to run on the GPU: `{r['fp32_fused_on_gpu']}`"]
    if "beam_search" in r:
        bs = r["beam_search"]
        lines += ["", f"Beam search ({bs['config']}): " + ", ".join(
            f"GPU {k}: {100 * v['token_agreement']:.1f}% tokens, {v['identical_rows']}/{v['rows']} rows identical"
            for k, v in bs.items() if k != "config")]
    if "gpt2" in r:
        g = r["gpt2"]
        lines += ["", f"GPT-2 fused decoder ({g['geometry']}, {g['prompts']} prompts x {g['new']} greedy tokens), "
                  "token agreement: " + ", ".join(
                      f"{k.replace('_', ' ')}: {100 * g[k]['token_agreement']:.1f}% tokens, "
                      f"{g[k]['identical_rows']}/{g[k]['rows']} rows" for k in g if k.endswith("_vs_cpu_fp16")
                      or k.endswith("vs_cpu_fp32") and not k.startswith("prefill"))]
        lines += ["", "GPT-2 prefill logits vs the CPU fp32 graph (every prompt position): " + ", ".join(
            f"{k[len('prefill_logits_'):].replace('_vs_cpu_fp32', '')}: max rel diff {v['max_rel_diff']:.2e}, cosine "
            f"{v['cosine']:.6f}, argmax {100 * v['argmax_agreement']:.1f}%" for k, v in g.items()
            if k.startswith("prefill_logits_"))]
    lines += ["", f"Seeded sampling reproducible on the device: {r.get('fp16_sampling_reproducible')}",
              "", f"Versions: {d['versions']}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ bench
def make_hf_model(name: str, hf_dir: Path, tokenizer_dir: Path, seed: int = 0):
    """Random-weight HF model of the config (fp16, cuda), saved with a tokenizer for onnxruntime-genai's builder."""
    import torch
    import transformers as T
    c = dict(CONFIGS[name])
    arch = c.pop("arch")
    torch.manual_seed(seed)
    cls = T.Qwen2Config if arch == "qwen2" else T.LlamaConfig
    cfg = cls(**c, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
              torch_dtype="float16", use_cache=True)
    model = T.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float16)
    with torch.no_grad():                        # larger than the default init, so logits are not all ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.05)
    model = model.cuda().eval()
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    shutil.copy(tokenizer_dir / "tokenizer.json", hf_dir / "tokenizer.json")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "model_max_length": c["max_position_embeddings"]}))
    return model, arch


def paddlenlp_state(model) -> dict[str, np.ndarray]:
    """HF LLaMA/Qwen2 state dict -> PaddleNLP LlamaForCausalLM names with Linear weights [in, out] (float32)."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.float().cpu().numpy()
        if k == "lm_head.weight":
            out[k] = a.T.copy()
            continue
        k2 = "llama." + k[len("model."):] if k.startswith("model.") else k
        out[k2] = a.T.copy() if (a.ndim == 2 and "embed_tokens" not in k2) else a
    return out


def step_bytes(weight_bytes: int, spec: dict, batch: int, ctx: float, kv_itemsize: int = 2) -> float:
    """Bytes one decode step must read: every weight once + the K/V of `ctx` positions per row."""
    kv = 2 * spec["num_layers"] * batch * spec["kv_heads"] * spec["head_dim"] * ctx * kv_itemsize
    return weight_bytes + kv


def initializer_bytes(path: Path, skip=("embed_tokens", "cos_cache", "sin_cache")) -> int:
    """Bytes of the weights a decode step reads (the embedding is gathered row by row, not read whole)."""
    import onnx
    m = onnx.load(str(path), load_external_data=True)
    total = 0
    for t in m.graph.initializer:
        if not any(s in t.name for s in skip):
            total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def genai_with_cuda_graph(src: Path, dst: Path) -> Path:
    """The same genai model with its CUDA provider's `enable_cuda_graph` on (its best configuration)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "genai_config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "genai_config.json").read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    provs = so.setdefault("provider_options", [])
    cuda = next((p["cuda"] for p in provs if "cuda" in p), None)
    if cuda is None:
        cuda = {}
        provs.append({"cuda": cuda})
    cuda["enable_cuda_graph"] = "1"
    (dst / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def op_counts(path: Path) -> dict:
    """Nodes per decode step by operator: each launches at least one kernel."""
    import collections

    import onnx
    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node).most_common())


def timed_generation(reps: int, first_token, rest, prepare=None) -> dict:
    """One warm-up pass, then `reps` timed ones: first_token(prepare()) (prompt + first token, synchronized; the
    untimed prepare() is omitted when None) -> state, then rest(state) to the last token.
    -> median TTFT (ms) and decode seconds, and the last pass's state."""
    ttft, dec_s = [], []
    for r in range(reps + 1):
        args = (prepare(),) if prepare else ()
        t0 = time.perf_counter()
        state = first_token(*args)
        t1 = time.perf_counter()
        rest(state)
        t2 = time.perf_counter()
        if r:
            ttft.append(t1 - t0)
            dec_s.append(t2 - t1)
    return {"ttft_ms": 1e3 * _median(ttft), "decode_s": _median(dec_s), "state": state}


def _median(xs):
    return float(np.median(xs))


def time_ours(path: Path, spec: dict, prompts: np.ndarray, new: int, reps: int, cuda_graph: bool = True) -> dict:
    from paddle2ort.runtime.fused import FusedDecoder, FusedGenerator
    from paddle2ort.runtime.generation import GenerationConfig
    dec = FusedDecoder(path, spec, device="gpu", max_length=prompts.shape[1] + new, cuda_graph=cuda_graph)
    cfg = GenerationConfig(max_new_tokens=new)
    rows = prompts.tolist()
    def first_token():
        gen = FusedGenerator(dec, rows, cfg, pad_id=2)
        dec.synchronize()
        return gen

    def rest(gen):
        while not gen.done:
            gen.step()
        dec.synchronize()

    r = timed_generation(reps, first_token, rest)           # the warm-up pass also captures the CUDA graph
    r["tokens"] = r.pop("state").results()
    dec.release()
    return r


def profile_ours(path: Path, spec: dict, prompts: np.ndarray, steps: int = 32, cuda_graph: bool = True) -> dict:
    """GPU kernel time of our decode steps (CUPTI through torch.profiler sees onnxruntime's kernels too):
    kernels per step, GPU-busy time per step, the kernels that take it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from paddle2ort.runtime.fused import FusedDecoder, FusedGenerator
    from paddle2ort.runtime.generation import GenerationConfig
    dec = FusedDecoder(path, spec, device="gpu", max_length=prompts.shape[1] + 2 * steps + 2, cuda_graph=cuda_graph)
    cfg = GenerationConfig(max_new_tokens=2 * steps + 1)
    gen = FusedGenerator(dec, prompts.tolist(), cfg, pad_id=2)
    for _ in range(steps):                                # warm-up, graph capture
        gen.step()
    dec.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            gen.step()
        dec.synchronize()
        wall = time.perf_counter() - t0
    kernels = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t and e.count:
            kernels[e.key[:90]] = {"count_per_step": e.count / steps, "us_per_step": t / steps}
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


def time_hf(model, prompts: np.ndarray, new: int, reps: int, compiled: bool) -> dict:
    import torch
    ids = torch.tensor(prompts, device="cuda")
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=2)
    if compiled:
        # transformers compiles the decode step itself (torch.compile, CUDA graphs) once the cache is static;
        # it marks CUDA-graph steps between calls, which wrapping model.forward by hand does not
        model.generation_config.cache_implementation = "static"
    ttft, tot = [], []
    with torch.no_grad():
        for r in range(reps + (2 if compiled else 1)):   # compiled: the first calls compile / capture
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if r >= (2 if compiled else 1):
                ttft.append(t1 - t0)
                tot.append(t2 - t1)
    t_first = _median(ttft)
    if compiled:
        model.generation_config.cache_implementation = None
    return {"ttft_ms": 1e3 * t_first, "decode_s": max(_median(tot) - t_first, 1e-9),
            "tokens": out[:, prompts.shape[1]:].tolist(), "compiled": getattr(model, "_compiled_call", None) is not None}


def bench(args) -> dict:
    import torch

    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.runtime.kernels.bench import copy_bandwidth
    import cupy as cp

    started = time.perf_counter()
    work = Path(args.work) / args.config
    hf_dir, genai_dir = work / "hf", work / "genai-fp16"
    model, arch = make_hf_model(args.config, hf_dir, Path(args.tokenizer))
    c = CONFIGS[args.config]
    spec = DecoderSpec.from_config({k: v for k, v in c.items() if k != "arch"}, qkv_bias=(arch == "qwen2"))
    state = paddlenlp_state(model)
    paths = {}
    for name in args.ours:
        prec, head_dtype = FUSED_VARIANTS[name]
        paths[name] = work / f"fused.{name}.onnx"
        t = time.perf_counter()
        build_variant(spec, state, prec, paths[name], head_dtype=head_dtype)
        log.info("built ours %s in %.1f s", name, time.perf_counter() - t)
    del state
    genai_error = None
    if "genai" in args.systems:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o",
                            str(genai_dir), "-p", "fp16", "-e", "cuda", "-c", str(work / "genai-cache")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            genai_error = r.stderr[-2000:]
            log.error("genai builder failed: %s", genai_error)
        log.info("genai builder: %.1f s", time.perf_counter() - t)
        if genai_error is None:
            genai_graph_dir = genai_with_cuda_graph(genai_dir, work / "genai-fp16-cudagraph")
    bw = copy_bandwidth(cp)
    weights = {p: initializer_bytes(paths[p]) for p in paths}
    fp16_bytes = weights.get("fp16", spec.weight_bytes(2))
    rng = np.random.default_rng(0)
    rows, tokens = [], {}
    spec_j = spec.to_json()

    def add(system, prec, b, r, wbytes):
        steps = args.new - 1
        step_s = r["decode_s"] / steps
        ctx = args.prompt + args.new / 2
        sb = step_bytes(wbytes, spec_j, b, ctx)
        rows.append({"system": system + (" (did not compile)" if "compile" in system and r.get("compiled") is False
                                         else ""),
                     "precision": prec, "batch": b, "ttft_ms": r["ttft_ms"],
                     "step_ms": 1e3 * step_s, "tok_s_per_seq": 1 / step_s, "tok_s_aggregate": b / step_s,
                     "bytes_per_step": sb, "pct_hbm_roofline": 100 * sb / step_s / bw})
        tokens[(system, b)] = r["tokens"]
        log.info("%-22s b=%d ttft %.1f ms  %.2f ms/step  %.0f tok/s/seq  %.1f%% roofline", system, b, r["ttft_ms"],
                 1e3 * step_s, 1 / step_s, rows[-1]["pct_hbm_roofline"])

    errors = {}
    for b in args.batch:
        prompts = rng.integers(3, 49152, size=(b, args.prompt))
        for prec in args.ours:
            for graph in ((True, False) if (prec == "fp16" and args.nograph) else (True,)):
                name = f"ours-{prec}" + ("" if graph else " (no CUDA graph)")
                try:
                    add(name, prec, b, time_ours(paths[prec], spec_j, prompts, args.new, args.reps, graph),
                        weights[prec])
                except Exception as e:  # noqa: BLE001 - one system failing must not lose the others
                    errors[f"{name} b{b}"] = f"{type(e).__name__}: {e}"
                    log.exception("%s failed", name)
        if "genai" in args.systems and genai_error is None:
            for name, d in (("onnxruntime-genai", genai_dir), ("onnxruntime-genai (CUDA graph)", genai_graph_dir)):
                try:
                    add(name, "fp16", b, time_genai(d, prompts, args.new, args.reps), fp16_bytes)
                except Exception as e:  # noqa: BLE001
                    errors[f"{name} b{b}"] = f"{type(e).__name__}: {e}"
                    log.exception("%s failed", name)
        if "hf-eager" in args.systems:
            add("hf-eager", "fp16", b, time_hf(model, prompts, args.new, 1, False), fp16_bytes)
    profiles = {}
    for prec in args.ours:
        try:
            profiles[prec] = profile_ours(paths[prec], spec_j, np.random.default_rng(1).integers(3, 49152, (1, 128)))
            log.info("profile %s: %s", prec, {k: v for k, v in profiles[prec].items() if k != "top_kernels"})
        except Exception as e:  # noqa: BLE001
            errors[f"profile {prec}"] = f"{type(e).__name__}: {e}"
            log.exception("profile failed")
    if "hf-compile" in args.systems and time.perf_counter() - started < args.budget_s:
        for b in args.batch:
            prompts = np.random.default_rng(0).integers(3, 49152, size=(b, args.prompt))
            try:
                add("hf-torch.compile", "fp16", b, time_hf(model, prompts, args.new, 2, True), fp16_bytes)
            except Exception as e:  # noqa: BLE001
                errors[f"hf-compile b{b}"] = f"{type(e).__name__}: {str(e)[:500]}"
                log.exception("torch.compile failed")
    # same weights, same greedy prompts: how often do the systems pick the same tokens as HF eager (fp16 noise
    # flips near-ties on random weights, so this is a sanity figure, not an exactness claim)
    agree = {}
    for (system, b), toks in tokens.items():
        ref = tokens.get(("hf-eager", b))
        if ref is not None and system != "hf-eager":
            agree[f"{system} b{b}"] = agreement([t[:16] for t in toks], [t[:16] for t in ref])["token_agreement"]
    return {"config": args.config, "model": {k: v for k, v in c.items()}, "spec": spec_j, "device": device_info(),
            "prompt_tokens": args.prompt, "new_tokens": args.new, "copy_bandwidth_gb_s": bw / 1e9,
            "weight_bytes": weights, "ops_per_step": {p: op_counts(paths[p]) for p in paths}, "profile_batch1": profiles, "rows": rows, "agreement_first16_vs_hf_eager": agree,
            "errors": errors, "genai_builder_error": genai_error, "seconds": time.perf_counter() - started,
            "torch_cuda": torch.version.cuda}


def bench_markdown(r: dict) -> str:
    d = r["device"]
    lines = [f"# {r['config']} (random weights) on {d['gpu']}", "",
             f"Prompt {r['prompt_tokens']} random tokens, {r['new_tokens']} greedy new tokens; decode = tokens after "
             f"the first. Roofline: bytes read per step (weights + K/V at the mean context) / measured copy "
             f"bandwidth {r['copy_bandwidth_gb_s']:.0f} GB/s.", "",
             "| system | batch | TTFT ms | ms/step | tok/s per seq | tok/s aggregate | % HBM roofline |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(f"| {x['system']} | {x['batch']} | {x['ttft_ms']:.1f} | {x['step_ms']:.2f} | "
                     f"{x['tok_s_per_seq']:.0f} | {x['tok_s_aggregate']:.0f} | {x['pct_hbm_roofline']:.1f}% |")
    if r.get("errors"):
        lines += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    if r.get("genai_builder_error"):
        lines += ["", f"onnxruntime-genai builder failed: {r['genai_builder_error'][-500:]}"]
    for prec, pr in (r.get("profile_batch1") or {}).items():
        lines += ["", f"Profile, ours-{prec} batch 1 (CUPTI): {pr['kernels_per_step']:.0f} kernels a step, GPU busy "
                  f"{pr['gpu_busy_us_per_step']:.0f} us of {pr['wall_us_per_step']:.0f} us wall; top kernels:", "",
                  "| kernel | per step | us per step |", "|---|---:|---:|"]
        lines += [f"| `{k}` | {v['count_per_step']:.0f} | {v['us_per_step']:.1f} |" for k, v in pr["top_kernels"].items()]
    lines += ["", f"Token agreement with HF eager, first 16 tokens: {r['agreement_first16_vs_hf_eager']}",
              "", f"Versions: {d['versions']}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--bundle", help="generic FP32 SmolLM2 bundle (token identity on the GPU); omit to skip")
    c.add_argument("--gguf", required=True)
    c.add_argument("--golden", required=True)
    c.add_argument("--fused", type=lambda v: v.split(","), default=["fp16", "fp16-head32", "int4"],
                   help=f"fused variants, comma-separated, of {', '.join(FUSED_VARIANTS)}")
    c.add_argument("--no-gpt2", dest="gpt2", action="store_false", help="skip the GPT-2 family check")
    c.add_argument("--work", default="/tmp/p2o-work")
    c.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("bench")
    b.add_argument("--config", choices=sorted(CONFIGS), required=True)
    b.add_argument("--tokenizer", required=True, help="dir with tokenizer.json (saved into the HF model dir)")
    b.add_argument("--ours", nargs="+", default=["fp16", "int4"], choices=sorted(FUSED_VARIANTS))
    b.add_argument("--systems", nargs="+", default=["genai", "hf-eager", "hf-compile"], help="peers ('none': ours only)")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    b.add_argument("--prompt", type=int, default=128)
    b.add_argument("--new", type=int, default=128)
    b.add_argument("--reps", type=int, default=3)
    b.add_argument("--nograph", action="store_true", help="also time ours FP16 without CUDA graphs (profile)")
    b.add_argument("--budget-s", type=float, default=420, help="skip torch.compile when past this many seconds")
    b.add_argument("--work", default="/tmp/p2o-work")
    b.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.cmd == "check":
        r = check(a)
        _write(a.out, "check", r, check_markdown(r))
    else:
        r = bench(a)
        _write(a.out, f"bench-{a.config}", r, bench_markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
