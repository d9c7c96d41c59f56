"""import-gguf: tiny GGUFs written with gguf.GGUFWriter (llama, Mistral = llama + sliding window, qwen2, gemma, gpt2) in
every tensor type the pinned gguf dequantizes; the PaddleNLP weights must be exactly the dequantized tensors in
PaddleNLP's layout (checked through llama.cpp's own permutation, not our inverse), the tokenizer ids must equal an
independent BPE (Python `regex` with llama.cpp's pre-split patterns + a plain merge loop) on CJK, digits and code,
SentencePiece ('llama') GGUF tokenizers must give sentencepiece's own ids (a trained SentencePiece BPE as the
reference), and a tokenizer/model vocabulary mismatch is exit 2 naming both sizes."""
import json
import os
import shlex

import gguf
import numpy as np
import pytest
import regex

from paddle2ort.cli import main
from paddle2ort.convert.llm.gguf_import import read_gguf
from paddle2ort.tokenization.bpe import LLAMA3_REGEX, QWEN2_REGEX, tokenizer_from_gguf_fields

from gguf_models import (CHAT_TEMPLATE, CORPUS, GEOMETRY, SPECIALS, SPM_CHAT_TEMPLATE, dequantizable_types,
                         encode_tensor, gguf_layout, llama_cpp_permute, train_bpe, train_spm, write_gguf)

pytestmark = pytest.mark.unit
T = gguf.GGMLQuantizationType
TYPES = dequantizable_types()


@pytest.fixture(scope="module")
def bpe():
    return train_bpe()


def paddlenlp_view(arch: str, state: dict, name: str) -> np.ndarray:
    """The PaddleNLP weight holding GGUF tensor `name`, brought back to GGUF's stored layout with llama.cpp's
    own permutation (the test never uses the importer's inverse)."""
    g, h = GEOMETRY, GEOMETRY["hidden"]
    i = name.split(".")[1] if name.startswith("blk.") else None
    if arch == "gpt2":
        top = {"token_embd.weight": "gpt.embeddings.word_embeddings.weight",
               "position_embd.weight": "gpt.embeddings.position_embeddings.weight"}
        if name in top:
            return state[top[name]]
        p = f"gpt.decoder.layers.{i}."
        if name.endswith("attn_qkv.weight"):
            return np.concatenate([state[p + f"self_attn.{x}_proj.weight"].T for x in "qkv"])
        lin = {"attn_output": "self_attn.out_proj", "ffn_up": "linear1", "ffn_down": "linear2"}
        return state[p + lin[name.split(".")[2]] + ".weight"].T
    if name == "token_embd.weight":
        return state["llama.embed_tokens.weight"]
    if name == "output.weight":
        return state["lm_head.weight"].T
    p = f"llama.layers.{i}."
    part = name.split(".")[2]
    lin = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
    w = state[p + lin[part] + ".weight"].T
    if arch == "llama" and part == "attn_q":
        return llama_cpp_permute(w, g["heads"])
    if arch == "llama" and part == "attn_k":
        return llama_cpp_permute(w, g["kv_heads"])
    return w


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt2"])
@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_every_tensor_type_imports_as_its_dequantized_values(tmp_path, bpe, arch, qtype):
    path = tmp_path / "m.gguf"
    hf = write_gguf(path, arch, tokenizer=bpe, types={k: qtype for k in hf_2d(arch, bpe)}, seed=7)
    stored = gguf_layout(arch, hf)
    m = read_gguf(path)
    for i, (name, a) in enumerate(stored.items()):
        if a.ndim != 2:
            continue
        want = gguf.quants.dequantize(encode_tensor(qtype, a, 7 + i), qtype).reshape(a.shape)
        np.testing.assert_array_equal(paddlenlp_view(arch, m.state, name), want, err_msg=f"{name} ({qtype.name})")
    assert all(np.isfinite(v).all() for v in m.state.values())


def hf_2d(arch, bpe):
    from gguf_models import hf_weights
    return [k for k, v in hf_weights(arch, len(bpe[0])).items() if v.ndim == 2]


@pytest.mark.parametrize("arch,window,family", [("llama", None, "llama"), ("llama", 64, "mistral"),
                                                ("qwen2", None, "qwen2"), ("gemma", None, "gemma"),
                                                ("gpt2", None, "gpt")])
def test_f32_import_is_exact_and_names_the_family(tmp_path, bpe, arch, window, family):
    path = tmp_path / "m.gguf"
    hf = write_gguf(path, arch, tokenizer=bpe, sliding_window=window)
    m = read_gguf(path)
    assert m.family == family and m.config["vocab_size"] == len(bpe[0])
    assert m.config["num_hidden_layers"] == GEOMETRY["layers"]
    if window:
        assert m.config["sliding_window"] == window and m.config["architectures"] == ["MistralForCausalLM"]
    if arch == "gpt2":
        np.testing.assert_array_equal(m.state["gpt.decoder.layers.1.self_attn.k_proj.weight"],
                                      hf["blk.1.attn_qkv.weight"][256:512].T)
        np.testing.assert_array_equal(m.state["gpt.decoder.layers.1.self_attn.v_proj.bias"],
                                      hf["blk.1.attn_qkv.bias"][512:])
        return
    # HF layout in, PaddleNLP [in, out] out: q/k come back un-permuted
    np.testing.assert_array_equal(m.state["llama.layers.1.self_attn.q_proj.weight"], hf["blk.1.attn_q.weight"].T)
    np.testing.assert_array_equal(m.state["llama.layers.0.self_attn.k_proj.weight"], hf["blk.0.attn_k.weight"].T)
    head = hf["token_embd.weight"] if arch == "gemma" else hf["output.weight"]     # Gemma: tied in the GGUF
    np.testing.assert_array_equal(m.state["lm_head.weight"], head.T)
    assert m.config["tie_word_embeddings"] is False      # the LM head is saved as its own weight
    biases = [k for k in m.state if k.endswith("_proj.bias")]
    assert (len(biases) == 3 * GEOMETRY["layers"]) == (arch == "qwen2")


def test_import_gguf_cli_writes_model_tokenizer_and_chat_template(tmp_path, bpe, capsys):
    path = tmp_path / "m.gguf"
    write_gguf(path, "qwen2", tokenizer=bpe, types={"blk.0.ffn_up.weight": T.Q4_K, "blk.1.attn_v.weight": T.Q8_0})
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "my out")]) == 0
    out = capsys.readouterr().out
    assert "qwen2 family" in out
    # the printed next step runs as pasted into a shell, even where the folder's name has a space
    hint = shlex.split(out.split("next: ", 1)[1])
    assert hint[:3] == ["paddle2ort", "convert-llm", str(tmp_path / "my out" / "model")]
    # every file is readable as open() would have made it (safetensors writes 0600), so others can convert it
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "my out").rglob("*"):
        assert f.stat().st_mode & 0o444 & ~mask == 0o444 & ~mask, f
    (tmp_path / "my out").rename(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "gguf.json").read_text())
    assert meta["tensor_types"] == ["F32", "Q4_K", "Q8_0"] and meta["pre_tokenizer"] == "qwen2"
    cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    from paddle2ort.tokenization.bpe import BPETokenizer
    tok = BPETokenizer.load(tmp_path / "out" / "tokenizer")
    assert tok.config["chat_template"] == CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(text)[0] == bpe[0].index("<|im_start|>")
    # a second run without --overwrite is refused; with it, the earlier import is replaced
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "out")]) == 2
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "out"), "--overwrite"]) == 0


def test_vocabulary_mismatch_is_exit_2_naming_both_sizes(tmp_path, bpe, capsys):
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", tokenizer=bpe, drop_tokens=7)
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{len(bpe[0]) - 7} tokens" in err and f"{len(bpe[0])} rows" in err
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_and_tokenizer_are_exit_2(tmp_path, bpe, capsys):
    w = gguf.GGUFWriter(str(tmp_path / "bloom.gguf"), "bloom")
    w.add_token_list(bpe[0])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert main(["import-gguf", str(tmp_path / "bloom.gguf"), "-o", str(tmp_path / "o")]) == 2
    assert "'bloom'" in capsys.readouterr().err
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    assert main(["import-gguf", str(tmp_path / "junk.gguf"), "-o", str(tmp_path / "o")]) == 2
    assert "not a readable GGUF" in capsys.readouterr().err


# ---------------------------------------------------------------- tokenizer parity with an independent BPE
TEXTS = ["The capital of France is Paris.", "12345 + 678 = 13023; 3.14159 and 1000000",
         "机器学习是人工智能的一个分支。东京", "def f(x):\n    return x ** 2  # square\n\n\tprint(f(12))",
         "It's they've I'm you'd DON'T  multiple   spaces\n\n\nend", "naïve café Ünïcödé 日本語のテキスト",
         "<|im_start|>user\nhello 42<|im_end|>", "a\r\nb \u00a0c", "x=[1,2,3];y={'k':v}//cmt"]
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte -> printable symbol map (from its paper's code)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def reference_encode(text: str, tokens, merges, pre: str) -> list[int]:
    vocab = {t: i for i, t in enumerate(tokens)}
    rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    sym = byte_symbols()
    pattern = {"gpt2": GPT2_REGEX, "smollm": GPT2_REGEX, "llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}[pre]
    ids = []
    for piece in regex.split("(" + "|".join(regex.escape(s) for s in SPECIALS) + ")", text):
        if piece in SPECIALS:
            ids.append(vocab[piece])
            continue
        runs = regex.split(r"(\p{N})", piece) if pre == "smollm" else [piece]
        for run in runs:
            for word in regex.findall(pattern, run):
                parts = [sym[b] for b in word.encode("utf-8")]
                while len(parts) > 1:
                    pairs = [(rank.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
                    r, i = min(pairs)
                    if r == 1 << 30:
                        break
                    parts[i:i + 2] = [parts[i] + parts[i + 1]]
                ids.extend(vocab[p] for p in parts)
    return ids


@pytest.mark.parametrize("pre", ["gpt2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizer_ids_equal_an_independent_bpe(bpe, pre):
    tokens, types, merges = bpe
    tok = tokenizer_from_gguf_fields({"ggml.model": "gpt2", "ggml.pre": pre, "ggml.tokens": tokens,
                                      "ggml.token_type": types, "ggml.merges": merges,
                                      "ggml.bos_token_id": 0, "ggml.eos_token_id": 2})
    for text in TEXTS:
        assert tok.encode(text) == reference_encode(text, tokens, merges, pre), (pre, text)
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text
    # the patterns differ where they should: digits in runs of 3 (llama-bpe), one by one (qwen2, smollm)
    digits = [tokens[i] for i in tok.encode("1234567")]
    assert max(map(len, digits)) <= {"gpt2": 7, "smollm": 1, "llama-bpe": 3, "qwen2": 1}[pre]


def test_unknown_or_incomplete_gguf_tokenizer_is_refused_with_the_fix(bpe):
    from paddle2ort.tokenization.errors import BadInputError
    with pytest.raises(BadInputError, match="tokenizer.ggml.scores"):
        tokenizer_from_gguf_fields({"ggml.model": "llama", "ggml.tokens": bpe[0], "ggml.token_type": bpe[1]})
    with pytest.raises(BadInputError, match="'bert' is not supported"):
        tokenizer_from_gguf_fields({"ggml.model": "bert", "ggml.tokens": bpe[0]})
    with pytest.raises(BadInputError, match="not supported"):
        tokenizer_from_gguf_fields({"ggml.model": "gpt2", "ggml.pre": "jais", "ggml.tokens": bpe[0],
                                    "ggml.token_type": bpe[1], "ggml.merges": bpe[2]})


# ---------------------------------------------------------------- SentencePiece GGUF tokenizers vs sentencepiece
SPM_TEXTS = TEXTS + CORPUS[:6] + [
    "", " ", "   leading and trailing   ", "x  y   z\t\tw\n\n", "\n\n\n", "tabs\tand\nnew\r\nlines",
    "한국어 텍스트 🙂 👍🏽 🇫🇷",                           # outside the trained vocabulary: byte fallback
    "digits 1234567890, 3.14159 and 2+2=4", "for i in range(10):\n\tprint(i**2)  # squares",
    "    def f(x):\n        return x", "中文字符，全角标点！日本語", "nbsp\u00a0em\u2003space", "control \x00\x07 chars",
    "supercalifragilisticexpialidocious " * 20]


@pytest.fixture(scope="module", params=[True, False], ids=["space-prefix", "no-space-prefix"])
def spm_pair(request):
    """(our tokenizer from the GGUF fields, sentencepiece on the same model); no space prefix = Gemma's setting."""
    import sentencepiece
    tokens, scores, types, proto = train_spm(add_space_prefix=request.param)
    tok = tokenizer_from_gguf_fields({"ggml.model": "llama", "ggml.tokens": tokens, "ggml.scores": scores,
                                      "ggml.token_type": types, "ggml.bos_token_id": 1, "ggml.eos_token_id": 2,
                                      "ggml.unknown_token_id": 0, "ggml.add_space_prefix": request.param})
    return tok, sentencepiece.SentencePieceProcessor(model_proto=proto)


def test_sentencepiece_ids_equal_sentencepiece(spm_pair):
    tok, sp = spm_pair
    byte_ids = {sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    used_bytes = False
    for text in SPM_TEXTS:
        ids = tok.encode(text, add_bos=False)
        assert ids == sp.encode(text), repr(text)
        assert tok.decode(ids) == sp.decode(ids), repr(text)
        used_bytes |= bool(byte_ids & set(ids))
    assert used_bytes                                   # byte fallback was exercised
    assert tok.encode("1234567") == [tok.bos_token_id] + sp.encode("1234567")   # add_bos: llama.cpp's default
    assert tok.encode_batch(SPM_TEXTS[:3]) == [[tok.bos_token_id] + sp.encode(t) for t in SPM_TEXTS[:3]]
    assert max(len(sp.id_to_piece(i)) for i in sp.encode("1234567")) <= 2      # "▁1" at most: digits split


def test_sentencepiece_special_tokens_split_out_like_llama_cpp(spm_pair):
    """Control tokens in the text are their ids; llama.cpp puts the space prefix at the start and after each."""
    tok, sp = spm_pair
    got = tok.encode("hello</s>world<s>", add_bos=False)
    assert got == sp.encode("hello") + [2] + sp.encode("world") + [1]


def test_import_gguf_with_a_sentencepiece_tokenizer(tmp_path, capsys):
    """A Llama-2-style GGUF (tokenizer.ggml.model 'llama', scores, byte tokens): import-gguf writes a tokenizer
    with sentencepiece's ids, add_bos and the GGUF's chat template."""
    import sentencepiece
    from paddle2ort.tokenization.bpe import BPETokenizer
    spm = train_spm()
    path = tmp_path / "llama2.gguf"
    write_gguf(path, "llama", spm=spm)
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "gguf.json").read_text())["pre_tokenizer"] == "spm"
    tok = BPETokenizer.load(tmp_path / "out" / "tokenizer")
    sp = sentencepiece.SentencePieceProcessor(model_proto=spm[3])
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2) and tok.config["chat_template"] == SPM_CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "Wie geht's? 中文"}])
    assert text == "<s>[INST] Wie geht's? 中文 [/INST]"
    assert tok.encode(text, add_bos=False) == [1] + sp.encode("[INST] Wie geht's? 中文 [/INST]")
    assert tok.encode("机器学习 42") == [1] + sp.encode("机器学习 42")
