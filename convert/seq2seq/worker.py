"""Worker tasks of the seq2seq export (run by convert._worker in the Paddle child process)."""
from __future__ import annotations

import numpy as np

from paddle2ort.runtime.files import atomic_path


def _save_records(path: str, records: list[dict]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **{f"{i}/{k}": v for i, r in enumerate(records) for k, v in r.items()})


def task_export_seq2seq(args: dict) -> dict:
    """PaddleNLP encoder-decoder -> static encoder and decoder-step programs (jit.save) + the gate's samples,
    recorded from the wrappers themselves driven by the runtime's decode loop (greedy, prefill + steps), and
    Paddle's own generate() on the same sources."""
    import paddle

    from paddle2ort.runtime.generation import GenerationConfig, generate
    from paddle2ort.runtime.seq2seq import Seq2SeqDecoder, Seq2SeqSpec

    from .eager import EagerSeq2Seq, load_seq2seq, paddle_generate
    from .wrapper import forced_ids, input_specs, make_wrappers

    model, name, fam, arch = load_seq2seq(args["model_dir"])
    geo = {**fam.geometry(model.config), **forced_ids(model.config)}
    enc, dec = make_wrappers(model, fam)
    enc_rec, dec_rec = [], []
    eager = EagerSeq2Seq(enc, dec, enc_rec, dec_rec)
    sources, steps = args["sources"], int(args["decode_steps"])
    spec = Seq2SeqSpec.from_json(geo)
    cfg = spec.defaults(GenerationConfig(max_new_tokens=steps + 1, stop_token_ids=(geo["eos_id"],)))
    generated = generate(Seq2SeqDecoder(eager.encode, eager.decode, spec), sources, cfg, geo["pad_id"])
    eager.encode(*_one(sources[0], geo["pad_id"]))             # a second encoder shape: one row, its own length
    reference = paddle_generate(model, sources, geo["pad_id"], decode_strategy="greedy_search",
                                max_new_tokens=steps + 1)
    enc_spec, dec_spec = input_specs(geo)
    paddle.jit.save(enc, args["encoder_prefix"], input_spec=enc_spec)
    paddle.jit.save(dec, args["decoder_prefix"], input_spec=dec_spec)
    _save_records(args["encoder_npz"], enc_rec)
    _save_records(args["decoder_npz"], dec_rec)
    return {"family": name, "architecture": arch, "geometry": geo, "generated": generated,
            "paddle_generated": reference, "paddle_version": paddle.__version__}


def task_export_prefix_lm(args: dict) -> dict:
    """PaddleNLP prefix LM (UNIMO-text) -> static step program + the gate's samples, recorded from the wrapper
    driven by the runtime's PrefixLMDecoder (greedy), and Paddle's own generate() on the same sources."""
    import paddle

    from paddle2ort.runtime.generation import GenerationConfig, generate
    from paddle2ort.runtime.seq2seq import PrefixLMDecoder, PrefixLMSpec, forced_defaults

    from .eager import load_seq2seq, paddle_generate_prefix_lm
    from .wrapper import forced_ids

    model, name, fam, arch = load_seq2seq(args["model_dir"])       # fam: unimo.py or chatglm.py (one contract)
    geo = {**fam.geometry(model.config), **forced_ids(model.config)}
    wrapper = fam.make_wrapper(model)
    wrapper.eval()
    records = []

    def step(*arrays):
        with paddle.no_grad():
            logits, present = wrapper(*(paddle.to_tensor(np.ascontiguousarray(a)) for a in arrays))
        records.append(dict(zip(fam.INPUTS, (np.array(a) for a in arrays))))
        return logits.numpy(), present.numpy()

    sources, steps = args["sources"], int(args["decode_steps"])
    spec = PrefixLMSpec.from_json(geo)
    cfg = forced_defaults(spec, GenerationConfig(max_new_tokens=steps + 1, stop_token_ids=(geo["eos_id"],),
                                                 min_new_tokens=steps + 1))
    generated = generate(PrefixLMDecoder(step, spec), sources, cfg, geo["pad_id"])
    reference = getattr(fam, "paddle_generate", paddle_generate_prefix_lm)(
        model, sources, geo, decode_strategy="greedy_search", max_new_tokens=steps + 1, min_new_tokens=steps + 1)
    paddle.jit.save(wrapper, args["prefix"], input_spec=fam.input_specs(geo))
    _save_records(args["samples_npz"], records)
    return {"family": name, "architecture": arch, "geometry": geo, "generated": generated,
            "paddle_generated": reference, "paddle_version": paddle.__version__}


def _one(src: list[int], pad_id: int):
    from paddle2ort.runtime.seq2seq import right_pad
    return right_pad([src], pad_id)


def task_generate_seq2seq(args: dict) -> dict:
    """Paddle's own generate() (PaddleNLP 2.8.1, use_fast off) on token-id sources, once per options dict: the
    parity reference."""
    from .eager import load_seq2seq, paddle_generate_any
    model, name, fam, _ = load_seq2seq(args["model_dir"])
    geo = fam.geometry(model.config)
    return {"generated": [paddle_generate_any(model, name, args["sources"], geo, o) for o in args["options"]]}


def task_bench_seq2seq(args: dict) -> dict:
    """Paddle's generate() timed on the benchmark's batches (the peer row): seconds a pass, per batch."""
    import time

    import paddle

    from .eager import load_seq2seq, paddle_generate_any
    paddle.base.core.set_num_threads(int(args["threads"]))
    model, name, fam, _ = load_seq2seq(args["model_dir"])
    geo = fam.geometry(model.config)
    batches, opts = args["batches"], args["options"]
    paddle_generate_any(model, name, batches[0], geo, opts)                     # warm-up
    passes, outs = [], None
    for _ in range(int(args["repeats"])):
        t0, outs = time.perf_counter(), []
        for b in batches:
            outs.append(paddle_generate_any(model, name, b, geo, opts))
        passes.append(time.perf_counter() - t0)
    return {"pass_seconds": passes, "generated": outs, "paddle_version": paddle.__version__}


def task_build_tiny_seq2seq(args: dict) -> dict:
    """Tiny random-weight models (families[i] saved to outs[i], PaddleNLP classes, save_pretrained; one Paddle start
    for all) with the given vocabulary and special ids;
    matrices redrawn from N(0, std) so random logits are not flat, the eos output row scaled by eos_scale so some
    rows stop early (tests and the benchmark's model)."""
    return {"parameters": [_build_tiny(dict(args, family=f, out=o)) for f, o in zip(args["families"], args["outs"])]}


def _build_tiny(args: dict) -> int:
    import paddle
    import paddlenlp.transformers as T

    paddle.set_device("cpu")
    paddle.seed(int(args["seed"]))
    v, sp, fam = int(args["vocab_size"]), args["special"], args["family"]
    if fam == "t5":
        model = T.T5ForConditionalGeneration(T.T5Config(
            vocab_size=v, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=16, dropout_rate=0.0, pad_token_id=sp["pad"], eos_token_id=sp["eos"],
            bos_token_id=sp["bos"], decoder_start_token_id=sp["pad"]))
    elif fam in ("bart", "mbart"):
        model = getattr(T, "MBartForConditionalGeneration" if fam == "mbart" else "BartForConditionalGeneration")(
            getattr(T, "MBartConfig" if fam == "mbart" else "BartConfig")(
            vocab_size=v, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, bos_token_id=sp["bos"],
            pad_token_id=sp["pad"], eos_token_id=sp["eos"], decoder_start_token_id=sp["eos"],
            forced_eos_token_id=sp["eos"], scale_embedding=fam == "mbart"))      # eos forced at max length, as
                                                                                    # the released configs do
    elif fam == "unimo":
        model = T.UNIMOLMHeadModel(T.UNIMOConfig(
            vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=128,
            type_vocab_size=4, unk_token_id=sp["unk"], pad_token_id=sp["pad"], bos_token_id=sp["bos"],
            eos_token_id=sp["eos"], mask_token_id=sp["unk"]))
    elif fam == "unified_transformer":
        model = T.UnifiedTransformerLMHeadModel(T.UnifiedTransformerConfig(
            vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, normalize_before=True,
            max_position_embeddings=128, type_vocab_size=4, role_type_size=None, unk_token_id=sp["unk"],
            pad_token_id=sp["pad"], bos_token_id=sp["bos"], eos_token_id=sp["eos"], mask_token_id=sp["unk"]))
    elif fam == "chatglm":             # [gMASK]: the vocabulary's last id (the tiny tokenizer has no such token)
        model = T.ChatGLMForCausalLM(T.ChatGLMConfig(
            vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, inner_hidden_size=64,
            max_sequence_length=128, bos_token_id=sp["bos"], eos_token_id=sp["eos"], pad_token_id=sp["pad"],
            mask_token_id=sp["unk"], gmask_token_id=v - 1))
    else:
        raise ValueError(f"no tiny builder for {fam!r}")
    rng = np.random.default_rng(int(args["seed"]))
    std = float(args["std"])
    for p in model.parameters():
        if len(p.shape) >= 2:
            p.set_value(rng.normal(0, std, p.shape).astype("float32"))
    head = {"t5": lambda: model.t5.shared.weight, "bart": lambda: model.lm_head_weight,      # the output rows
            "mbart": lambda: model.lm_head_weight,
            "unimo": lambda: model.lm_head.decoder_weight,
            "unified_transformer": lambda: model.lm_head.decoder_weight,
            "chatglm": lambda: model.lm_head.decoder_weight}[fam]()                            # (T5: tied)
    w = head.numpy()
    w[sp["eos"]] *= float(args.get("eos_scale", 1.0))         # eos ends some rows early: stop rules get exercised
    head.set_value(w)
    model.eval()
    model.save_pretrained(args["out"])
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))


TASKS = {"export_seq2seq": task_export_seq2seq, "export_prefix_lm": task_export_prefix_lm,
         "generate_seq2seq": task_generate_seq2seq,
         "bench_seq2seq": task_bench_seq2seq, "build_tiny_seq2seq": task_build_tiny_seq2seq}
