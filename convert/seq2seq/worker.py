"""Worker tasks of the seq2seq export (run by convert._worker in the Paddle child process)."""
from __future__ import annotations

import os

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

    from .eager import EagerSeq2Seq, load_seq2seq, paddle_generate, tie_gaps
    from .wrapper import forced_ids, input_specs, make_wrappers

    model, name, fam, arch = load_seq2seq(args["model_dir"])
    geo = {**fam.geometry(model.config), **forced_ids(model.config)}
    enc, dec = make_wrappers(model, fam)
    enc_rec, dec_rec = [], []
    eager = EagerSeq2Seq(enc, dec, enc_rec, dec_rec)
    sources, steps = args["sources"], int(args["decode_steps"])
    spec = Seq2SeqSpec.from_json(geo)
    cfg = spec.defaults(GenerationConfig(max_new_tokens=steps + 1, stop_token_ids=(geo["eos_id"],)))
    step_logits = []

    def decode(*a):
        logits, present = eager.decode(*a)
        step_logits.append(logits[:, -1])
        return logits, present
    generated = generate(Seq2SeqDecoder(eager.encode, decode, spec), sources, cfg, geo["pad_id"])
    eager.encode(*_one(sources[0], geo["pad_id"]))             # a second encoder shape: one row, its own length
    reference = paddle_generate(model, sources, geo["pad_id"], decode_strategy="greedy_search",
                                max_new_tokens=steps + 1)
    enc_spec, dec_spec = input_specs(geo)
    paddle.jit.save(enc, args["encoder_prefix"], input_spec=enc_spec)
    paddle.jit.save(dec, args["decoder_prefix"], input_spec=dec_spec)
    _save_records(args["encoder_npz"], enc_rec)
    _save_records(args["decoder_npz"], dec_rec)
    return {"family": name, "architecture": arch, "geometry": geo, "generated": generated,
            "paddle_generated": reference, "tie_gaps": tie_gaps(generated, reference, step_logits, geo["eos_id"]),
            "paddle_version": paddle.__version__}


def task_export_prefix_lm(args: dict) -> dict:
    """PaddleNLP prefix LM (UNIMO-text) -> static step program + the gate's samples, recorded from the wrapper
    driven by the runtime's PrefixLMDecoder (greedy), and Paddle's own generate() on the same sources."""
    import paddle

    from paddle2ort.runtime.generation import GenerationConfig, generate
    from paddle2ort.runtime.seq2seq import PrefixLMDecoder, PrefixLMSpec, forced_defaults

    from .eager import load_seq2seq, paddle_generate_prefix_lm, tie_gaps
    from .wrapper import forced_ids

    model, name, fam, arch = load_seq2seq(args["model_dir"])       # fam: unimo.py or chatglm.py (one contract)
    geo = {**fam.geometry(model.config), **forced_ids(model.config)}
    wrapper = fam.make_wrapper(model)
    wrapper.eval()
    records, names, step_logits = [], getattr(fam, "inputs", lambda g: fam.INPUTS)(geo), []

    def step(*arrays):
        with paddle.no_grad():
            logits, present = wrapper(*(paddle.to_tensor(np.ascontiguousarray(a)) for a in arrays))
        records.append(dict(zip(names, (np.array(a) for a in arrays))))
        step_logits.append(logits.numpy()[:, -1])
        return logits.numpy(), present.numpy()

    sources, steps = args["sources"], int(args["decode_steps"])
    spec = PrefixLMSpec.from_json(geo)
    cfg = forced_defaults(spec, GenerationConfig(max_new_tokens=steps + 1, stop_token_ids=(geo["eos_id"],),
                                                 min_new_tokens=steps + 1))
    dec, kw = PrefixLMDecoder(step, spec), {}
    if spec.role_type_size:          # role embeddings: the recorded calls and the check use non-trivial roles
        kw["role_ids"] = sample_roles(sources, spec.role_type_size)
        dec.set_roles(kw["role_ids"])
    generated = generate(dec, sources, cfg, geo["pad_id"])
    reference = getattr(fam, "paddle_generate", paddle_generate_prefix_lm)(
        model, sources, geo, decode_strategy="greedy_search", max_new_tokens=steps + 1, min_new_tokens=steps + 1,
        **kw)
    paddle.jit.save(wrapper, args["prefix"], input_spec=fam.input_specs(geo))
    _save_records(args["samples_npz"], records)
    return {"family": name, "architecture": arch, "geometry": geo, "generated": generated,
            "paddle_generated": reference, "tie_gaps": tie_gaps(generated, reference, step_logits, geo["eos_id"]),
            "paddle_version": paddle.__version__, **({"role_ids": kw["role_ids"]} if kw else {})}


def sample_roles(sources: list[list[int]], size: int) -> list[list[int]]:
    """Role ids a dialogue would have (turns alternating every few tokens, each row its own pattern; the start
    token takes the last role): the export's recorded calls exercise the role embeddings."""
    return [[(b + j // 3) % size for j in range(len(s))] + [(b + 1) % size] for b, s in enumerate(sources)]


def _one(src: list[int], pad_id: int):
    from paddle2ort.runtime.seq2seq import right_pad
    return right_pad([src], pad_id)


def task_generate_seq2seq(args: dict) -> dict:
    """Paddle's own generate() (PaddleNLP 2.8.1, use_fast off) on token-id sources, once per options dict: the
    parity reference."""
    from .eager import load_seq2seq, paddle_generate_any
    model, name, fam, _ = load_seq2seq(args["model_dir"])
    geo = fam.geometry(model.config)
    roles = {"role_ids": args["role_ids"]} if args.get("role_ids") is not None else {}
    return {"generated": [paddle_generate_any(model, name, args["sources"], geo, {**o, **roles})
                          for o in args["options"]]}


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


class _Predictor:
    """A Paddle Inference predictor as a callable with the export wrapper's contract (arrays in the wrapper's input
    order, -> its outputs as arrays)."""

    def __init__(self, pred, names):
        self.pred, self.names, self.outs = pred, names, pred.get_output_names()
        if sorted(pred.get_input_names()) != sorted(names):
            raise RuntimeError(f"the saved program's inputs are {pred.get_input_names()}, not {list(names)}")

    def __call__(self, *arrays):
        for name, a in zip(self.names, arrays):
            h = self.pred.get_input_handle(name)
            a = np.ascontiguousarray(a)
            h.reshape(list(a.shape))
            h.copy_from_cpu(a)
        self.pred.run()
        return tuple(self.pred.get_output_handle(n).copy_to_cpu() for n in self.outs)


# oneDNN off: its kernels reject the prefill's empty cache (P = 0: std::exception) and, with the cache length
# changing every step, re-create primitives each call (tiny T5 decoder step, 2 threads: 52 ms with it, 18 without)
ONEDNN = False


def inference_decoder(model, name: str, fam, geo: dict, work: str, threads: int):
    """The family's export wrappers jit.saved under `work` and loaded by Paddle Inference (the classifier peer's
    deployment configuration, convert._worker.bench_predictor, oneDNN off: ONEDNN) -> (a runtime.seq2seq decoder
    over the predictors, its spec, oneDNN on)."""
    import paddle

    from paddle2ort.convert._worker import bench_predictor
    from paddle2ort.runtime.seq2seq import PrefixLMDecoder, PrefixLMSpec, Seq2SeqDecoder, Seq2SeqSpec

    from .families import FAMILIES
    from .wrapper import DECODER_INPUTS, ENCODER_INPUTS, input_specs, make_wrappers

    def load(layer, specs, sub):
        layer.eval()
        prefix = os.path.join(work, sub, "inference")
        paddle.jit.save(layer, prefix, input_spec=specs)
        model_file = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")
        return bench_predictor(model_file, prefix + ".pdiparams", threads, ONEDNN)

    if FAMILIES[name].kind == "prefix-lm":
        pred, onednn = load(fam.make_wrapper(model), fam.input_specs(geo), "step")
        spec = PrefixLMSpec.from_json(geo)
        return PrefixLMDecoder(_Predictor(pred, fam.INPUTS), spec), spec, onednn
    enc, dec = make_wrappers(model, fam)
    enc_spec, dec_spec = input_specs(geo)
    (ep, onednn), (dp, _) = load(enc, enc_spec, "encoder"), load(dec, dec_spec, "decoder")
    encode, step = _Predictor(ep, ENCODER_INPUTS), _Predictor(dp, DECODER_INPUTS)
    spec = Seq2SeqSpec.from_json(geo)
    return Seq2SeqDecoder(lambda ids, mask: encode(ids, mask)[0], step, spec), spec, onednn


def task_bench_seq2seq_inference(args: dict) -> dict:
    """Paddle Inference as the perf run's peer: the export wrappers (the programs paddle2onnx converts) saved with
    paddle.jit.save and run by Paddle Inference predictors (IR passes, oneDNN), driven by the same decode loop and
    options as the onnxruntime rows, timed on the same batches: seconds a pass, tokens per batch."""
    import time

    import paddle

    from paddle2ort.runtime.generation import GenerationConfig, generate
    from paddle2ort.runtime.seq2seq import forced_defaults

    from .eager import load_seq2seq
    from .wrapper import forced_ids
    paddle.base.core.set_num_threads(int(args["threads"]))
    model, name, fam, _ = load_seq2seq(args["model_dir"])
    geo = {**fam.geometry(model.config), **forced_ids(model.config)}
    dec, spec, onednn = inference_decoder(model, name, fam, geo, args["work"], int(args["threads"]))
    cfg = forced_defaults(spec, GenerationConfig(max_new_tokens=int(args["max_new_tokens"]),
                                                 stop_token_ids=(geo["eos_id"],), **args["options"]))
    batches = args["batches"]

    def run(b):
        return generate(dec, b, cfg, geo["pad_id"])
    run(batches[0])                                                          # warm-up
    passes, outs = [], None
    for _ in range(int(args["repeats"])):
        t0 = time.perf_counter()
        outs = [run(b) for b in batches]
        passes.append(time.perf_counter() - t0)
    return {"pass_seconds": passes, "generated": outs, "paddle_version": paddle.__version__, "onednn": onednn,
            "ir_optim": True}


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
            max_position_embeddings=128, type_vocab_size=4, role_type_size=args.get("role_type_size"),
            unk_token_id=sp["unk"],
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
         "bench_seq2seq": task_bench_seq2seq,
         "bench_seq2seq_inference": task_bench_seq2seq_inference, "build_tiny_seq2seq": task_build_tiny_seq2seq}
