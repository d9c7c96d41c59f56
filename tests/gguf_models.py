"""Tiny GGUF files written with gguf.GGUFWriter the way llama.cpp's convert_hf_to_gguf lays them out, from HF-layout
float weights ([out, in]), with a chosen tensor type per weight and a small trained byte-level BPE tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

GEOMETRY = {"hidden": 256, "heads": 4, "kv_heads": 2, "inter": 512, "layers": 2, "ctx": 128}
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["The capital of France is Paris. 12345 + 678 = 13023; year 2024, pi ~ 3.14159.",
          "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
          "机器学习是人工智能的一个分支。东京和北京都是首都。日本語のテキストも少し。",
          "for (int i = 0; i < 10; ++i) { sum += a[i] * 2; }  // C++ loop\n\tx = {'key': [1, 2, 3]}",
          "It's a test: we'll see, they've done it, I'm here, you'd know. Don't panic!  Multiple   spaces.",
          "Numbers 1 22 333 4444 55555 and 0.5e-10; Émile, naïve café, Ünïcödé."] * 20


def train_bpe(vocab_size: int = 500):
    """(tokens, token types, merges) of a byte-level BPE trained on CORPUS (every byte symbol present)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    import json
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, types, merges


SPM_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
                     "[/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def train_spm(vocab_size: int = 700, add_space_prefix: bool = True) -> tuple[list, list, list, bytes]:
    """(tokens, scores, token types, model proto bytes) of a SentencePiece BPE trained on CORPUS with Llama 2's
    tokenizer settings (identity normalizer, dummy prefix, spaces kept, byte fallback, digits split); the proto
    loads in sentencepiece as the reference encoder. add_space_prefix=False is Gemma's setting."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, model_type="bpe",
                                   vocab_size=vocab_size, byte_fallback=True, normalization_rule_name="identity",
                                   add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
                                   character_coverage=1.0, allow_whitespace_only_pieces=True, minloglevel=2)
    m = pb.ModelProto()
    m.ParseFromString(buf.getvalue())
    m.normalizer_spec.add_dummy_prefix = add_space_prefix
    return ([p.piece for p in m.pieces], [p.score for p in m.pieces], [int(p.type) for p in m.pieces],
            m.SerializeToString())


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf LlamaModel.permute (q/k rows interleaved for llama.cpp's rotary)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(arch: str, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under GGUF tensor names, in HF layout ([out, in]), before llama.cpp's permutation."""
    g = GEOMETRY
    rng = np.random.default_rng(seed)
    h, d = g["hidden"], g["hidden"] // g["heads"]
    r = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)  # noqa: E731
    one = lambda n: (1.0 + rng.standard_normal(n) * 0.05).astype(np.float32)  # noqa: E731
    if arch == "gpt2":
        w = {"token_embd.weight": r(vocab, h), "position_embd.weight": r(g["ctx"], h),
             "output_norm.weight": one(h), "output_norm.bias": r(h)}
        for i in range(g["layers"]):
            p = f"blk.{i}."
            w.update({p + "attn_norm.weight": one(h), p + "attn_norm.bias": r(h), p + "attn_qkv.weight": r(3 * h, h),
                      p + "attn_qkv.bias": r(3 * h), p + "attn_output.weight": r(h, h), p + "attn_output.bias": r(h),
                      p + "ffn_norm.weight": one(h), p + "ffn_norm.bias": r(h),
                      p + "ffn_up.weight": r(g["inter"], h), p + "ffn_up.bias": r(g["inter"]),
                      p + "ffn_down.weight": r(h, g["inter"]), p + "ffn_down.bias": r(h)})
        return w
    kv = g["kv_heads"] * d
    w = {"token_embd.weight": r(vocab, h), "output_norm.weight": one(h)}
    if arch != "gemma":                      # llama.cpp's Gemma ties the LM head to the embedding
        w["output.weight"] = r(vocab, h)
    for i in range(g["layers"]):
        p = f"blk.{i}."
        w.update({p + "attn_norm.weight": one(h), p + "ffn_norm.weight": one(h), p + "attn_q.weight": r(h, h),
                  p + "attn_k.weight": r(kv, h), p + "attn_v.weight": r(kv, h), p + "attn_output.weight": r(h, h),
                  p + "ffn_gate.weight": r(g["inter"], h), p + "ffn_up.weight": r(g["inter"], h),
                  p + "ffn_down.weight": r(h, g["inter"])})
        if arch == "qwen2":
            w.update({p + "attn_q.bias": r(h), p + "attn_k.bias": r(kv), p + "attn_v.bias": r(kv)})
    return w


def gguf_layout(arch: str, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What llama.cpp stores: LLaMA q/k permuted (Qwen2 and GPT-2 are stored as they are)."""
    if arch != "llama":
        return dict(hf)
    g = GEOMETRY
    out = dict(hf)
    for name in hf:
        if name.endswith("attn_q.weight"):
            out[name] = llama_cpp_permute(hf[name], g["heads"])
        elif name.endswith("attn_k.weight"):
            out[name] = llama_cpp_permute(hf[name], g["kv_heads"])
    return out


def raw_blocks(qtype, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Random bytes for a type gguf can dequantize but not quantize (K-quants, IQ types): every byte <= 0x3B, so each
    float16/float32 scale field is finite and below 1 (and the block indices stay valid)."""
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    return np.random.default_rng(seed).integers(0, 0x3C, (rows, cols // block * size), dtype=np.uint8)


def encode_tensor(qtype, a: np.ndarray, seed: int = 0) -> np.ndarray:
    """The bytes (or float array) GGUFWriter stores for `a` as `qtype`."""
    import gguf
    T = gguf.GGMLQuantizationType
    if qtype == T.F32:
        return a.astype(np.float32)
    if qtype == T.F16:
        return a.astype(np.float16)
    try:
        return gguf.quants.quantize(a.astype(np.float32), qtype)
    except NotImplementedError:
        return raw_blocks(qtype, a.shape, seed)


def dequantizable_types() -> list:
    """Every tensor type the pinned gguf can dequantize (F32, F16, BF16, Q*, K-quants, IQ*, TQ*, MXFP4...)."""
    import gguf
    out = []
    for t in gguf.GGMLQuantizationType:
        block, size = gguf.GGML_QUANT_SIZES.get(t, (0, 0))
        if not block or t.name.startswith(("I8", "I16", "I32", "I64", "F64")):
            continue
        try:
            gguf.quants.dequantize(np.zeros(256 // block * size, np.uint8) if t not in (gguf.GGMLQuantizationType.F32,
                                   gguf.GGMLQuantizationType.F16) else np.zeros(256, np.float32), t)
        except (NotImplementedError, KeyError, ValueError):
            continue
        if 256 % block == 0:
            out.append(t)
    return out


def write_gguf(path: Path, arch: str, *, types=None, pre: str = "qwen2", seed: int = 0, sliding_window: int | None = None,
               tokenizer=None, drop_tokens: int = 0, rope_freqs: np.ndarray | None = None,
               spm=None) -> dict[str, np.ndarray]:
    """Write a tiny GGUF; `types`: 2-D tensor name -> GGMLQuantizationType (default F32; norms/biases stay F32);
    `spm`: train_spm()'s result, written as a SentencePiece ('llama') tokenizer instead of the byte-level BPE.
    -> the HF-layout float weights it was written from."""
    import gguf
    T = gguf.GGMLQuantizationType
    if spm is not None:
        from sentencepiece import sentencepiece_model_pb2 as pb
        tokens, scores, ttypes, proto = spm
        m = pb.ModelProto()
        m.ParseFromString(proto)
        merges = None
    else:
        tokens, ttypes, merges = tokenizer or train_bpe()
    g = GEOMETRY
    hf = hf_weights(arch, len(tokens), seed)
    stored = gguf_layout(arch, hf)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(g["layers"])
    w.add_context_length(g["ctx"])
    w.add_embedding_length(g["hidden"])
    w.add_feed_forward_length(g["inter"])
    w.add_head_count(g["heads"])
    if arch == "gpt2":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_head_count_kv(g["kv_heads"])
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(10000.0)
    if sliding_window:
        w.add_sliding_window(sliding_window)
    w.add_token_list(tokens[:len(tokens) - drop_tokens])
    w.add_token_types(ttypes[:len(tokens) - drop_tokens])
    if spm is not None:                      # as convert_hf_to_gguf writes a tokenizer.model vocabulary
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_scores(scores[:len(tokens) - drop_tokens])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(m.normalizer_spec.add_dummy_prefix)
        w.add_chat_template(SPM_CHAT_TEMPLATE)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_chat_template(CHAT_TEMPLATE)
    for i, (name, a) in enumerate(stored.items()):
        qtype = (types or {}).get(name, T.F32) if a.ndim == 2 else T.F32
        data = encode_tensor(qtype, a, seed + i)
        w.add_tensor(name, data, raw_dtype=qtype if qtype not in (T.F32, T.F16) else None)
    if rope_freqs is not None:               # Llama-3.1-style rope scaling, as llama.cpp stores it
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf
