"""convert-seq2seq, text2text `generate` and `perplexity` on inputs a user may give: each bad input is one exit 2
naming the fix, before the expensive stage; no option is accepted and then ignored.

Unit: the CLI refusals (thresholds that never reach the gate, an empty --name, a precision named twice, too few
windows), a text2text source cut to --src-length keeps its head and its end token, a prefix LM's context reaches
the JSONL job's up-front check. Paddle: tiny T5/BART/UNIMO-text models converted once a module: --overwrite
replaces a bundle paddle2ort wrote (it was dropped before the final write, after the whole export), a too-long
source anywhere in a JSONL job is refused before the first batch (nothing written), a conversation line names the
text2text fix."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from paddle2ort.runtime.errors import BadInputError


# ----------------------------------------------------------------------------- unit
@pytest.mark.unit
@pytest.mark.parametrize("extra, want", [
    (["--threshold", "int8.min_cosine=0.9"], "int8, which is not converted"),
    (["--threshold", "fp32.min_cosine=0.9", "--no-validate"], "--no-validate skips"),
    (["--name", ""], "empty string"),
])
def test_convert_seq2seq_refuses_options_it_would_ignore(extra, want, tmp_path, capsys):
    from paddle2ort.cli import main
    code = main(["convert-seq2seq", str(tmp_path / "model"), "-o", str(tmp_path / "out"), "--tokenizer",
                 str(tmp_path / "tok"), *extra])
    assert code == 2 and want in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_perplexity_refuses_a_precision_named_twice(tmp_path, capsys):
    from paddle2ort.cli import main
    assert main(["perplexity", str(tmp_path / "b"), "--precision", "fp32,fp32", "--output", str(tmp_path / "r")]) == 2
    assert "names a precision twice" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.unit
def test_too_few_windows_names_the_fix():
    from paddle2ort.benchmarks.perplexity import text_windows
    tok = SimpleNamespace(encode=lambda text: list(range(100)))
    with pytest.raises(BadInputError, match="pass --windows 3 or less"):
        text_windows(tok, ["x"], 30, 4)
    with pytest.raises(BadInputError, match="pass --window 100 or less"):
        text_windows(tok, ["x"], 200, 1)
    assert len(text_windows(tok, ["x"], 30, 3)) == 3


@pytest.mark.unit
def test_a_cut_source_keeps_its_head_and_end_token():
    """--src-length on a text2text job kept the source's last tokens: T5's task prefix ("summarize:") went first."""
    from paddle2ort.runtime.seq2seq import Text2TextGenerator

    class Tok:
        def encode_batch(self, texts):
            return [[ord(c) for c in t] for t in texts]
    gen = SimpleNamespace(tokenizer=Tok(), spec=SimpleNamespace(eos_id=2, source_end_id=None), src_length=4)
    assert Text2TextGenerator.prompt_ids(gen, "abcdef") == [97, 98, 99, 2]
    assert Text2TextGenerator.prompt_ids(gen, "ab") == [97, 98, 2]
    gen.src_length = None
    assert Text2TextGenerator.prompt_ids(gen, "abcdef") == [97, 98, 99, 100, 101, 102, 2]
    with pytest.raises(BadInputError, match="src_length must be >= 2"):
        Text2TextGenerator("unused", src_length=1)


@pytest.mark.unit
def test_a_job_cut_the_old_way_is_not_resumed():
    """A text2text job's output written when --src-length kept the source's tail is another job (its key differs), so
    a rerun never mixes those targets with head-cut ones; a causal LM's key and an uncut job's are as they were."""
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.jobs import job_key
    cfg = GenerationConfig(max_new_tokens=4)
    t2t, llm = SimpleNamespace(source_limit=512), SimpleNamespace()
    assert job_key(t2t, cfg, 8, False) != job_key(llm, cfg, 8, False)
    assert job_key(t2t, cfg, None, False) == job_key(llm, cfg, None, False)


@pytest.mark.unit
def test_a_prefix_lm_context_reaches_the_job_check():
    """The JSONL job checks prompt + new tokens against model.max_context before the first batch: a prefix LM had
    none, so a too-long line failed when its batch came, after the lines before it were generated."""
    from paddle2ort.runtime.jobs import JobLine, prepare
    from paddle2ort.runtime.seq2seq import PrefixLMDecoder, PrefixLMSpec
    dec = PrefixLMDecoder(None, PrefixLMSpec(num_layers=1, heads=1, head_dim=4, vocab_size=10, bos_id=0, pad_id=1,
                                             eos_id=2, max_positions=9))
    assert dec.max_context == dec.max_tokens() == 8
    gen = SimpleNamespace(model=dec, prompt_ids=lambda text, chat=False: [5] * len(text))
    cfg = SimpleNamespace(max_new_tokens=3)
    assert prepare(gen, [JobLine(1, "abcde", "h")], "in.jsonl", cfg, None, False) == [[5] * 5]
    with pytest.raises(BadInputError, match="in.jsonl:2: prompt \\(6 tokens\\) \\+ max_new_tokens \\(3\\)"):
        prepare(gen, [JobLine(1, "ab", "h"), JobLine(2, "abcdef", "h")], "in.jsonl", cfg, None, False)


# ----------------------------------------------------------------------------- tiny Paddle models
@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Tiny T5, BART (128 learned positions) and UNIMO-text, converted (fp32, gated): family -> (model dir, bundle)."""
    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    from paddle2ort.convert.seq2seq.tiny import build_tiny_many
    from test_seq2seq import _texts
    root = tmp_path_factory.mktemp("s2s_audit")
    tiny = build_tiny_many(("t5", "bart", "unimo"), root / "tiny", _texts())
    out = {}
    for fam, d in tiny.items():
        convert_seq2seq(Seq2SeqConvertConfig(source=d / "model", tokenizer=d / "tokenizer", output=root / fam))
        out[fam] = (d, root / fam)
    return out


@pytest.mark.parametrize("family", ["t5", "unimo"])      # encoder-decoder and prefix-LM paths
def test_overwrite_replaces_a_bundle_paddle2ort_wrote(bundles, family, tmp_path, capsys):
    """--overwrite passed the up-front check, then the final write refused it ("pass --overwrite") after the whole
    export and the encoder's conversion."""
    from paddle2ort.cli import main
    src, bundle = bundles[family]
    dest = tmp_path / "bundle"
    shutil.copytree(bundle, dest)
    before = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    assert before["validation"]["fp32"]["passed"]
    argv = ["-q", "convert-seq2seq", str(src / "model"), "-o", str(dest), "--tokenizer", str(src / "tokenizer")]
    assert main(argv + ["--no-validate"]) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--no-validate", "--overwrite"]) == 0
    after = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    assert after["task"] == "text2text-generation" and not after.get("validation")       # the new, unvalidated one


def _job(tmp_path, rows):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data, tmp_path / "out.jsonl"


LONG = "the cat sat on the mat " * 60           # ~600 tokens: past the tiny BART's 128 and UNIMO's 128 positions


@pytest.mark.parametrize("family, want", [("bart", "over the encoder's 128 positions"),
                                          ("unimo", "exceeds the model's context of 127 tokens")])
def test_a_too_long_source_is_refused_before_the_first_batch(bundles, family, want, tmp_path, capsys):
    from paddle2ort.cli import main
    _, bundle = bundles[family]
    data, out = _job(tmp_path, [{"src": "hello there"}, {"src": LONG}])
    argv = ["-q", "generate", str(bundle), "--data-file", str(data), "--output-file", str(out), "--batch-size", "1",
            "--max-new-tokens", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and want in err and "--src-length" in err
    assert not out.exists()                        # line 1 was not generated first
    assert main(argv + ["--src-length", "64"]) == 0
    assert [json.loads(ln)["line"] for ln in out.read_text(encoding="utf-8").splitlines()] == [1, 2]


def test_src_length_keeps_the_source_head(bundles, tmp_path):
    """A cut source is its first src_length - 1 tokens and the end token: the same tokens as the head given whole."""
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    _, bundle = bundles["bart"]
    cut = Text2TextGenerator(bundle, src_length=8)
    whole = Text2TextGenerator(bundle)
    ids = whole.prompt_ids(LONG)
    assert cut.prompt_ids(LONG) == ids[:7] + [ids[-1]] and len(ids) > 8
    cfg = GenerationConfig(max_new_tokens=4)
    assert cut.generate_token_ids([cut.prompt_ids(LONG)], cfg) == whole.generate_token_ids([ids[:7] + [ids[-1]]], cfg)


def test_a_conversation_line_names_the_text2text_fix(bundles, tmp_path, capsys):
    """A list "src" was answered with "pass --chat", which text2text bundles refuse: a loop with no way out."""
    from paddle2ort.cli import main
    _, bundle = bundles["t5"]
    data, out = _job(tmp_path, [{"src": "hello"}, {"src": ["a", "b", "c"]}])
    assert main(["-q", "generate", str(bundle), "--data-file", str(data), "--output-file", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and "give \"src\" as a string" in err and "--chat" not in err
    assert not out.exists()
    assert main(["-q", "generate", str(bundle), "--data-file", str(data), "--output-file", str(out),
                 "--src-length", "1"]) == 2
    assert "--src-length 2 or more" in capsys.readouterr().err


def test_validate_names_the_way_to_recheck_a_text2text_bundle(bundles, capsys):
    """`validate` re-runs convert's and convert-llm's gates; a text2text bundle said its checkpoint was "no Paddle
    model" (the checkpoint hint of `convert`): now one message naming how to re-check it, before any worker."""
    from paddle2ort.cli import main
    src, bundle = bundles["t5"]
    assert main(["-q", "validate", str(bundle), "--source", str(src / "model")]) == 2
    assert "convert the model again (--overwrite) to re-check it" in capsys.readouterr().err
