"""GPU acceptance checks: greedy on the GPU vs the CPU loop's golden ids (generic FP32 bundle: token identity;
fused FP16 / int4 built from the same GGUF weights: token agreement, teacher-forced agreement), seeded sampling,
the out-of-memory path, beam search vs the CPU, the fp32 fused graph's clear error, and the GPT-2 family."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .common import FUSED_VARIANTS, GPT2_CONFIG, agreement, device_info, gguf_special_ids, pad_id, random_prompts, \
    special_ids

log = logging.getLogger(__name__)


def check(args) -> dict:
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.convert.zoo.smollm2 import read_gguf, to_paddlenlp
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.generation import GenerationConfig, generate
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
        providers = gen.model.session.get_providers()
        if providers[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"the generic bundle's session runs on {providers}, not CUDA")
        t = time.perf_counter()
        batched = gen.generate_token_ids(prompts, greedy)
        single = [gen.generate_token_ids([p], greedy)[0] for p in prompts]
        res["fp32_generic"] = {"batched": agreement(batched, want), "single": agreement(single, want),
                               "seconds": time.perf_counter() - t}
        log.info("fp32 generic on GPU: %s", res["fp32_generic"])
        del gen

    # 2. fused decoders built here from the same GGUF weights the Paddle model was made of
    cfg, tensors, tok = read_gguf(Path(args.gguf))
    cfg = {**cfg, **gguf_special_ids(tok), "tie_word_embeddings": True}
    pad = pad_id(cfg)
    state = to_paddlenlp(cfg, tensors)
    spec = DecoderSpec.from_config(cfg)
    work = Path(args.work)
    paths = {}
    for name in args.fused:
        prec, head_dtype = FUSED_VARIANTS[name]
        path = paths[name] = work / f"smollm2.fused.{name}.onnx"
        build_variant(spec, state, prec, path, head_dtype=head_dtype)
        if prec == "fp32":                      # a CPU graph (CUDA GroupQueryAttention is fp16/bf16): error check below
            continue
        try:
            fused_variant_check(res, name, path, spec, prompts, want, greedy, pad)
        except Exception as e:  # noqa: BLE001 - recorded in the results, the rest is kept
            log.exception("%s failed", name)
            res.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"

    # 4. beam search on the device (beam kernel, cache reorder) vs the same loop and graph on the CPU (kernel twin)
    if "fp16" in paths and "fp16_fused" in res:
        beam = GenerationConfig(max_new_tokens=16, num_beams=4)
        cpu = generate(FusedDecoder(paths["fp16"], spec.to_json(), max_length=256), prompts[:6], beam,
                       pad)
        dev = FusedDecoder(paths["fp16"], spec.to_json(), session=SessionOptions(device="gpu"), max_length=256)
        res["beam_search"] = {"config": "fp16 fused graph, 4 beams, 16 new tokens, 6 prompts; reference: the same "
                                        "graph and loop on the CPU",
                              "fp16": agreement(generate(dev, prompts[:6], beam, pad), cpu)}
        log.info("beam search: %s", res["beam_search"])
    if "fp32" in paths:                                            # the fp32 graph asked for on the GPU: clear error
        try:
            FusedDecoder(paths["fp32"], spec.to_json(), session=SessionOptions(device="gpu"), max_length=256)
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


def fused_variant_check(res: dict, name: str, path: Path, spec, prompts, want, greedy, pad: int) -> None:
    """One fused variant on the GPU: greedy agreement with the golden rows (batched, one at a time,
    teacher-forced); for fp16 also seeded sampling and the out-of-memory path."""
    from paddle2ort.runtime.errors import DeviceError
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.generation import GenerationConfig, generate
    from paddle2ort.runtime.session import SessionOptions
    dec = FusedDecoder(path, spec.to_json(), session=SessionOptions(device="gpu"), max_length=256)
    t = time.perf_counter()
    b = generate(dec, prompts, greedy, pad_id=pad)
    s = [generate(dec, [p], greedy, pad_id=pad)[0] for p in prompts]
    first_div = [next((i for i, (x, y) in enumerate(zip(g, w)) if x != y), len(w)) for g, w in zip(b, want)]
    res[f"{name}_fused"] = {"batched": agreement(b, want), "single": agreement(s, want),
                            "first_divergence": first_div, "teacher_forced": teacher_forced(dec, prompts, want, pad),
                            "seconds": time.perf_counter() - t}
    log.info("%s fused: %s", name, res[f"{name}_fused"]["batched"])
    if name == "fp16":
        samp = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=0.8, top_k=40, top_p=0.9,
                                seed=7, repetition_penalty=1.1)
        a, a2 = generate(dec, prompts[:4], samp, pad), generate(dec, prompts[:4], samp, pad)
        res["fp16_sampling_reproducible"] = a == a2
        # 3. out of memory: a clear error naming a smaller batch, and the decoder still works afterwards
        big = FusedDecoder(path, spec.to_json(), session=SessionOptions(device="gpu"), max_length=8192)
        try:
            big.state(1000)
            res["oom"] = {"raised": False}
        except DeviceError as e:
            res["oom"] = {"raised": True, "message": str(e)}
        try:
            generate(big, [prompts[0]] * 512, GenerationConfig(max_new_tokens=4), pad)
        except DeviceError as e:
            res["oom"]["second_message"] = str(e)
        res["oom"]["usable_after"] = generate(big, [prompts[0]], greedy, pad)[0] == b[0]
        log.info("oom: %s", res["oom"])


def gpt2_check(work: Path, prompts: int = 16, new: int = 32, config: dict = GPT2_CONFIG,
               device: str = "gpu") -> dict:
    """GPT-2 small geometry with seeded random weights: greedy of the fp16 graph on the GPU vs the CPU loop over
    the same fp16 graph and over the fp32 one (config and device="cpu": the same path on a tiny GPT, its test)."""
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, random_state
    from paddle2ort.convert.validate import compare
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.generation import GenerationConfig, generate
    from paddle2ort.runtime.session import SessionOptions
    spec = DecoderSpec.from_config(config, family="gpt")
    pad = pad_id(config)
    state = random_state(spec, seed=0, std=0.1)
    rows = random_prompts(np.random.default_rng(0), prompts, 24, spec.vocab_size, special_ids(config)).tolist()
    rows = [r[:8 + i] for i, r in enumerate(rows)]                                  # lengths 8..23: right padding
    cfg = GenerationConfig(max_new_tokens=new)
    geometry = f"{config['num_hidden_layers']} x {config['hidden_size']}, vocab {config['vocab_size']}"
    out = {"geometry": ("GPT-2 small" if config is GPT2_CONFIG else "GPT") + f" ({geometry}), random weights std 0.1",
           "prompts": prompts, "new": new}
    paths = {}
    for prec in ("fp32", "fp16"):
        paths[prec] = work / f"gpt2.fused.{prec}.onnx"
        build_variant(spec, state, prec, paths[prec])
    decs = {"cpu_fp32": FusedDecoder(paths["fp32"], spec.to_json(), max_length=128),
            "cpu_fp16": FusedDecoder(paths["fp16"], spec.to_json(), max_length=128),
            "gpu_fp16": FusedDecoder(paths["fp16"], spec.to_json(), session=SessionOptions(device=device),
                                     max_length=128)}
    toks = {k: generate(d, rows, cfg, pad) for k, d in decs.items()}
    out["gpu_fp16_vs_cpu_fp16"] = agreement(toks["gpu_fp16"], toks["cpu_fp16"])
    out["gpu_fp16_vs_cpu_fp32"] = agreement(toks["gpu_fp16"], toks["cpu_fp32"])
    out["cpu_fp16_vs_cpu_fp32"] = agreement(toks["cpu_fp16"], toks["cpu_fp32"])       # the noise floor of fp16
    # logits of every prompt position (no compounding): the graph's parity, not the near-ties' luck
    logits = {k: np.concatenate(d.prompt_logits(d.state(len(rows)), rows, pad)) for k, d in decs.items()}
    for k in ("gpu_fp16", "cpu_fp16"):
        m = compare(logits["cpu_fp32"], logits[k], class_axis=True)
        out[f"prefill_logits_{k}_vs_cpu_fp32"] = {x: m[x] for x in ("max_rel_diff", "cosine", "argmax_agreement")}
    log.info("gpt2: %s", out)
    return out


def teacher_forced(dec, prompts: list[list[int]], want: list[list[int]], pad: int) -> dict:
    """Per-token agreement without compounding: feed prompt + the golden continuation in one prompt call and
    compare the argmax at every position with the golden next token."""
    seqs = [p + w[:-1] for p, w in zip(prompts, want)]
    logits = dec.prompt_logits(dec.state(len(seqs)), seqs, pad_id=pad)
    same = total = 0
    for lg, p, w in zip(logits, prompts, want):
        same += int((lg[len(p) - 1:].argmax(-1) == np.array(w)).sum())
        total += len(w)
    dec.release()
    return {"token_agreement": same / total, "tokens": total}
