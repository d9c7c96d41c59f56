"""Encoder-decoder generation (T5, BART) through the one decode loop.

Unit: the no-repeat-ngram processor against a brute force, PaddleNLP's beam rules on hand-made candidates,
forced BOS/EOS rules and their effect in greedy, sampling and beam search, Seq2SeqDecoder over NumPy toy graphs
(encoder once, cross K/V follow the beams), the text2text server's batching. Paddle: tiny random-weight models
built and converted once a module, their ONNX bundles compared with PaddleNLP's own generate() (greedy, min length,
no-repeat-ngram, beam search with length penalty and both stopping rules, forced BOS/EOS), BART's, UNIMO-text's
and UnifiedTransformer's export wrappers against generate(), the text2text CLI job (src -> tgt) and `serve`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.benchmarks.seq2seq import BeamMargins, greedy_tie_margin
from paddle2ort.benchmarks.seq2seq import first_diff as _first_diff
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import (Beams, GenerationConfig, advance_beams, banned_ngram_tokens, beam_search,
                                           generate, gnmt_score, ngram_ban_mask)
from paddle2ort.runtime.seq2seq import Seq2SeqDecoder, Seq2SeqSpec

from near_tie import greedy_reference

DATASET = Path(__file__).parent.parent / "benchmarks" / "results" / "seq2seq" / "dataset.jsonl"


# ----------------------------------------------------------------------------- the near-tie rule (test_serving's)
# greedy: the two tokens' logit gap where a row first parts (teacher-forced on the bundle); beams: the run's smallest
# decisive margin a source (benchmarks.seq2seq.BeamMargins) — the device run (seq2seq_gpu.sh) uses the same helpers


def greedy_tie_margins(model, src, got, want, eos):
    """margins for test_serving.first_clear_divergence: inf before the first parting step, the gap there."""
    k = _first_diff(got, want)
    return [] if k is None else [float("inf")] * k + [greedy_tie_margin(model, src, got, want, eos)]


def assert_near_tie_equal(got, want, margins_of, what):
    """Every row equal to the reference, or leaving it first at a near-tie (test_serving.first_clear_divergence)."""
    from test_serving import TIE_EPS, first_clear_divergence
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            m = margins_of(i, g, w)
            assert first_clear_divergence(g, w, m, TIE_EPS) is None, (what, i, g, w, m)
    assert len(got) == len(want), what


# ----------------------------------------------------------------------------- unit: processors and beam rules
def _brute_banned(seq, n):
    grams = {tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)}
    tail = list(seq[len(seq) - n + 1:]) if n > 1 else []
    return sorted(t for t in range(10) if len(seq) >= n - 1 and tuple(tail + [t]) in grams)


@pytest.mark.unit
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_banned_ngram_tokens_equal_a_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(200):
        seq = rng.integers(0, 10, rng.integers(0, 12)).tolist()
        assert banned_ngram_tokens(seq, n) == _brute_banned(seq, n), seq
    assert banned_ngram_tokens([1, 2, 1], 0) == []
    mask = ngram_ban_mask([[1, 2, 1], [3]], 2, 5)
    assert mask.tolist() == [[False, False, True, False, False], [False] * 5]
    assert ngram_ban_mask([[1, 2, 3]], 2, 5) is None


@pytest.mark.unit
def test_paddlenlp_beam_rules():
    cfg = GenerationConfig(num_beams=2, beam_rules="paddlenlp", length_penalty=1.0, early_stopping=False)
    assert gnmt_score(-6.0, 1, 1.0) == pytest.approx(-6.0) and gnmt_score(-6.0, 7, 2.0) == pytest.approx(-1.5)
    stops, vocab = {9}, 10
    # a stop token ranked 3rd of 2K=4 (below the K best) closes nothing; ranked 1st it closes beam 1's hypothesis
    b = Beams([[4], [5]], np.array([-1.0, -2.0], np.float32), [])
    chosen = advance_beams(b, np.array([-1.5, -2.5, -2.6, -3.0], np.float32), np.array([1, 3, 9, 2]), vocab, cfg, 1,
                           stops)
    assert b.done == [] and [(r, t) for r, t, _ in chosen] == [(0, 1), (0, 3)]
    b = Beams([[4], [5]], np.array([-1.0, -2.0], np.float32), [])
    advance_beams(b, np.array([-1.2, -1.5, -2.5, -3.0], np.float32), np.array([19, 1, 3, 2]), vocab, cfg, 1, stops)
    assert b.done == [(pytest.approx(gnmt_score(-1.2, 1, 1.0)), [5, 9])] and b.seqs == [[4, 1], [4, 3]]
    # K closed hypotheses better than the best candidate at the current length: done, live beams not in the result
    b.done.append((-0.1, [7, 9]))
    assert advance_beams(b, np.array([-9.0, -9.5, -9.6, -9.7], np.float32), np.array([1, 2, 3, 4]), vocab, cfg, 2,
                         stops) is None
    assert b.finished and b.best(stops, 1.0, "paddlenlp") == [7]
    # the default rules still score sum / len ** lp over the stop token included
    d = Beams([[4], [5]], np.array([-1.0, -2.0], np.float32), [])
    advance_beams(d, np.array([-1.2, -2.5, -2.6, -3.0], np.float32), np.array([19, 1, 3, 2]), vocab,
                  GenerationConfig(num_beams=2), 1, stops)
    assert d.done == [(pytest.approx(-1.2 / 2), [5, 9])]
    with pytest.raises(BadInputError, match="beam_rules"):
        GenerationConfig(beam_rules="hf")
    with pytest.raises(BadInputError, match="no_repeat_ngram_size"):
        GenerationConfig(no_repeat_ngram_size=-1)


class ToySeq2Seq:
    """NumPy graphs with the exported contracts: cross K/V = source ids broadcast; the decoder prefers the source's
    first token, then its last input (a model that loves repeating), so no-repeat-ngram has work to do."""
    L, H, D, V = 2, 2, 3, 12

    def __init__(self):
        self.encoder_calls = 0

    def encode(self, ids, mask):
        self.encoder_calls += 1
        x = (ids * mask).astype(np.float32)                                          # [B, T]
        return np.broadcast_to(x[None, None, :, None, :, None], (self.L, 2, *ids.shape[:1], self.H, ids.shape[1],
                                                                  self.D)).copy()

    def decode(self, ids, enc_mask, past, cross):
        b, s = ids.shape
        first = cross[0, 0, :, 0, 0, 0].astype(np.int64)                              # [B] source's first token
        logits = np.zeros((b, s, self.V), np.float32)
        logits[np.arange(b), -1, first % self.V] += 3.0 + 0.1 * np.arange(b)
        logits[np.arange(b), -1, ids[:, -1] % self.V] += 2.0
        logits[:, -1] += np.linspace(0, 0.5, self.V, dtype=np.float32)               # no ties
        present = np.full((s, self.L, 2, b, self.H, self.D), past.shape[0], np.float32)
        return logits, present

    def decoder(self):
        spec = Seq2SeqSpec(num_layers=self.L, heads=self.H, head_dim=self.D, vocab_size=self.V, decoder_start_id=0,
                           eos_id=1, pad_id=0, max_source=8, max_target=16)
        return Seq2SeqDecoder(self.encode, self.decode, spec)


def _has_repeat(seq, n):
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.unit
def test_seq2seq_decoder_on_the_one_loop():
    toy = ToySeq2Seq()
    dec = toy.decoder()
    out = generate(dec, [[5, 3, 1], [7, 1]], GenerationConfig(max_new_tokens=6), pad_id=0)
    assert toy.encoder_calls == 1 and out[0][0] == 5 and out[1][0] == 7              # the source reached the step
    assert _has_repeat([0] + out[0], 2)                                                # the toy repeats itself ...
    for n in (2, 3):
        got = generate(dec, [[5, 3, 1], [7, 1]], GenerationConfig(max_new_tokens=8, no_repeat_ngram_size=n), 0)
        assert not any(_has_repeat([0] + g, n) for g in got)                         # ... unless told not to
    beams = beam_search(dec, [[5, 3, 1], [7, 1]], GenerationConfig(max_new_tokens=5, num_beams=3,
                                                                   no_repeat_ngram_size=2), 0)
    assert [b[0] for b in beams] == [5, 7] and not any(_has_repeat([0] + b, 2) for b in beams)
    assert dec.cross.shape[2] == 6 and (dec.cross[0, 0, :, 0, 0, 0] == [5, 5, 5, 7, 7, 7]).all()   # rows follow
    with pytest.raises(BadInputError, match="exceeds the encoder's 8 positions"):
        generate(dec, [list(range(2, 11))], GenerationConfig(max_new_tokens=2), 0)
    with pytest.raises(BadInputError, match="decoder's 16 positions"):
        generate(dec, [[5]], GenerationConfig(max_new_tokens=16), 0)
    dec.start(1)
    dec.append([[5]], np.zeros(1, np.int64), 2)
    with pytest.raises(BadInputError, match="one source a row"):
        dec.append([[6]], np.ones(1, np.int64), 2)


@pytest.mark.unit
def test_forced_bos_and_eos_rules():
    """PaddleNLP's ForcedBOS (the processors' sequence is one token: an encoder-decoder's first choice) and
    ForcedEOS (the choice at max length, winning where both apply); a forced beam step keeps every live beam's
    score (the token's log-probability is 0 after PaddleNLP's log-softmax) and drops dead beams."""
    from paddle2ort.runtime.generation import forced_candidates, forced_token
    cfg = GenerationConfig(max_new_tokens=4, forced_bos_token_id=9, forced_eos_token_id=1)
    assert [forced_token(cfg, s, 1) for s in range(4)] == [9, None, None, 1]
    assert [forced_token(cfg, s, 3) for s in range(4)] == [None, None, None, 1]       # a decoder-only prompt
    assert forced_token(GenerationConfig(max_new_tokens=1, forced_bos_token_id=9, forced_eos_token_id=1), 0, 1) == 1
    assert forced_token(GenerationConfig(), 0, 1) is None
    s, i = forced_candidates(np.array([-1.0, 0.0, -np.inf, -2.0, -3.0, -0.5], np.float32), 3, 10, 4)
    assert s.tolist() == [[0.0, -1.0] + [-np.inf] * 4, [-0.5, -2.0, -3.0] + [-np.inf] * 3]
    assert i.tolist() == [[14, 4, -1, -1, -1, -1], [24, 4, 14, -1, -1, -1]]
    with pytest.raises(BadInputError, match="forced_bos_token_id must be an integer"):
        GenerationConfig(forced_bos_token_id=-1)


@pytest.mark.unit
@pytest.mark.parametrize("opts", [{}, {"do_sample": True, "temperature": 1.5, "seed": 3},
                                  {"num_beams": 3}, {"num_beams": 3, "beam_rules": "paddlenlp"}])
def test_forced_tokens_in_greedy_sampling_and_beam_search(opts):
    toy = ToySeq2Seq()
    src = [[5, 3, 1], [7, 1]]
    free = generate(toy.decoder(), src, GenerationConfig(max_new_tokens=5, stop_token_ids=(1,), **opts), 0)
    assert all(len(r) == 5 and r[0] != 10 for r in free)                              # the toy never says eos
    got = generate(toy.decoder(), src, GenerationConfig(max_new_tokens=5, stop_token_ids=(1,), forced_bos_token_id=10,
                                                        forced_eos_token_id=1, **opts), 0)
    assert all(len(r) == 4 and r[0] == 10 for r in got)                               # forced first; eos at the end
    with pytest.raises(BadInputError, match="outside the vocabulary"):
        generate(toy.decoder(), src, GenerationConfig(max_new_tokens=5, forced_bos_token_id=99, **opts), 0)


@pytest.mark.unit
def test_prefix_lm_mask_is_bidirectional_over_the_source_causal_over_the_target():
    from paddle2ort.runtime.seq2seq import PrefixLMDecoder, PrefixLMSpec, prefix_lm_inputs
    ids, types, pos, mask, real = prefix_lm_inputs([[5, 6, 7], [8]], bos_id=1, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1], [0, 0, 8, 1]] and types.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]] and mask.shape == (2, 1, 4, 4)
    seen = mask[:, 0] == 0
    assert seen[0, :3, :3].all() and not seen[0, :3, 3].any() and seen[0, 3].all()   # sources see each other
    #                                                         (also ahead), not the target; the start sees all
    assert seen[1, 2:, 2:].tolist() == [[True, False], [True, True]] and not seen[1, 2:, :2].any()   # nor pads
    calls = []

    def step(ids, types, pos, mask, past):                    # toy graph: records what the decoder feeds it
        calls.append((ids.copy(), types.copy(), pos.copy(), mask.copy(), past.shape[0]))
        b, s_ = ids.shape
        return np.zeros((b, s_, 6), np.float32), np.zeros((s_, 1, 2, b, 1, 2), np.float32)

    spec = PrefixLMSpec.from_json({"num_layers": 1, "heads": 1, "head_dim": 2, "vocab_size": 6, "bos_id": 1,
                                   "pad_id": 0, "eos_id": 2, "max_positions": 32, "suppress_ids": [0, 1, 3]})
    out = generate(PrefixLMDecoder(step, spec), [[5, 4], [4]], GenerationConfig(max_new_tokens=3), 0)
    assert out == [[2, 2, 2], [2, 2, 2]]                      # suppressed ids never come out (all-zero logits)
    ids2, types2, pos2, mask2, past2 = calls[1]
    assert types2.tolist() == [[1], [1]] and pos2.tolist() == [[3], [2]] and past2 == 3
    assert (mask2[1, 0, 0] == [-1e4, 0, 0, 0]).all()          # a step sees every real token, not the padding


@pytest.mark.unit
def test_family_registry_reads_config():
    from paddle2ort.convert.seq2seq.families import UnsupportedFamily, family_name
    assert family_name({"architectures": ["T5ForConditionalGeneration"]}) == "t5"
    assert family_name({"model_type": "bart"}) == "bart"
    assert family_name({"architectures": ["UNIMOLMHeadModel"]}) == "unimo"
    assert family_name({"architectures": ["MBartForConditionalGeneration"]}) == "mbart"
    assert family_name({"architectures": ["UnifiedTransformerLMHeadModel"]}) == "unified_transformer"
    with pytest.raises(UnsupportedFamily, match="BartForConditionalGeneration"):
        family_name({"architectures": ["MarianMTModel"]})


# ----------------------------------------------------------------------------- tiny Paddle models
def _texts() -> list[str]:
    rows = [json.loads(ln) for ln in DATASET.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [r["src"] for r in rows] + [r["tgt"] for r in rows]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny random-weight T5, BART and UNIMO-text built once (one Paddle worker): family -> directory."""
    from paddle2ort.convert.seq2seq.tiny import build_tiny_many
    return build_tiny_many(("t5", "bart", "unimo", "unified_transformer"), tmp_path_factory.mktemp("tiny"),
                           _texts())


@pytest.fixture(scope="module")
def t5(tiny, tmp_path_factory):
    """The tiny T5 converted (fp32, gated) once: (model dir, bundle dir)."""
    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    src, out = tiny["t5"], tmp_path_factory.mktemp("t5") / "bundle"
    convert_seq2seq(Seq2SeqConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=out))
    return src, out


# (ours, PaddleNLP generate() options): greedy; min length + no-repeat-ngram; beams with both stopping rules
CASES = [
    ({}, {"decode_strategy": "greedy_search"}),
    ({"min_new_tokens": 4, "no_repeat_ngram_size": 2},
     {"decode_strategy": "greedy_search", "min_new_tokens": 4, "no_repeat_ngram_size": 2}),
    ({"num_beams": 4, "beam_rules": "paddlenlp", "early_stopping": False},
     {"decode_strategy": "beam_search", "num_beams": 4}),
    ({"num_beams": 3, "beam_rules": "paddlenlp", "length_penalty": 0.6, "no_repeat_ngram_size": 3,
      "min_new_tokens": 2, "early_stopping": False},
     {"decode_strategy": "beam_search", "num_beams": 3, "length_penalty": 0.6, "no_repeat_ngram_size": 3,
      "min_new_tokens": 2}),
    ({"num_beams": 3, "beam_rules": "paddlenlp", "length_penalty": 1.2, "early_stopping": True},
     {"decode_strategy": "beam_search", "num_beams": 3, "length_penalty": 1.2, "early_stopping": True}),
    # forced BOS/EOS (BART's and mBART's configs set them; the bundle records the model's): greedy and beams
    ({"forced_bos_token_id": 7, "forced_eos_token_id": 2},
     {"decode_strategy": "greedy_search", "forced_bos_token_id": 7, "forced_eos_token_id": 2}),
    ({"num_beams": 3, "beam_rules": "paddlenlp", "early_stopping": False, "forced_bos_token_id": 7,
      "forced_eos_token_id": 2},
     {"decode_strategy": "beam_search", "num_beams": 3, "forced_bos_token_id": 7, "forced_eos_token_id": 2}),
]


def test_t5_bundle_matches_paddle_generate(t5, tmp_path):
    """Equal to PaddleNLP's generate() on 8 sources x 7 settings up to near-ties (another ISA's kernels may flip a
    decision whose margin is within TIE_EPS: greedy_tie_margins, BeamMargins); on this box every row is equal."""
    from paddle2ort.convert.paddle_proc import run_worker
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    src, bundle = t5
    m = load_bundle(bundle).manifest
    assert m.task == "text2text-generation" and m.validation["fp32"]["passed"]
    assert load_bundle(bundle / "encoder").manifest.validation["fp32"]["passed"]
    assert "computed once" in m.extra["seq2seq"]["cross_attention"]
    gen = Text2TextGenerator(bundle)
    ids = [gen.prompt_ids(t) for t in _texts()[:8]]
    refs = run_worker("generate_seq2seq", {"model_dir": str(src / "model"), "sources": ids,
                                           "options": [{**p, "max_new_tokens": 16} for _, p in CASES]},
                      tmp_path)["generated"]
    lengths, beams = set(), BeamMargins()
    for (ours, _), ref in zip(CASES, refs):
        with beams:
            got = gen.generate_token_ids(ids, GenerationConfig(max_new_tokens=16, **ours))
        if ours.get("num_beams"):
            bm = beams.margins()
            assert_near_tie_equal(got, ref, lambda i, g, w: [bm[i]] * (_first_diff(g, w) + 1), ours)
        else:
            assert_near_tie_equal(got, ref, lambda i, g, w: greedy_tie_margins(gen.model, ids[i], g, w,
                                                                                gen.spec.eos_id), ours)
        lengths |= {len(r) for r in ref}
        if "forced_bos_token_id" in ours:
            assert {r[0] for r in got} == {7} and max(map(len, got)) < 16, ours         # forced first and last
    assert min(lengths) < 16 < max(lengths) + 1          # some rows stopped on eos, some ran to the length


@pytest.mark.parametrize("family", ["bart", "unimo", "unified_transformer"])
def test_export_wrappers_match_paddle_generate(family, tiny, tmp_path):
    """BART's adapter (learned positions offset by 2, post-norm, lm_head + final_logits_bias) and UNIMO-text's
    prefix LM (bidirectional source, causal target, token types, its suppressed ids; UnifiedTransformer through
    the same adapter: pre-norm, encoder-final LayerNorm): the export wrappers driven by our loop reproduce
    PaddleNLP's greedy generate() (a conversion's own gate then holds ONNX to them)."""
    from paddle2ort.convert.paddle_proc import run_worker
    from paddle2ort.tokenization.bpe import BPETokenizer
    src = tiny[family]
    tok = BPETokenizer.load(src / "tokenizer")
    sources = [tok.encode(t) + [tok.eos_token_id] for t in _texts()[:6]]
    prefix_lm = family in ("unimo", "unified_transformer")
    out = {"prefix": str(tmp_path / "static" / "inference"), "samples_npz": str(tmp_path / "s.npz")} \
        if prefix_lm else {
        "encoder_prefix": str(tmp_path / "enc" / "inference"), "decoder_prefix": str(tmp_path / "static" / "inference"),
        "encoder_npz": str(tmp_path / "enc.npz"), "decoder_npz": str(tmp_path / "dec.npz")}
    task = "export_prefix_lm" if prefix_lm else "export_seq2seq"
    info = run_worker(task, {"model_dir": str(src / "model"), "sources": sources, "decode_steps": 8, **out},
                      tmp_path / "work")
    from paddle2ort.convert.seq2seq.eager import TIE_EPS
    assert info["family"] == family and len(info["generated"]) == len(info["paddle_generated"])
    assert all(g is None or g <= TIE_EPS for g in info["tie_gaps"]), info      # equal up to near-ties
    if family == "bart":                           # BartConfig forces eos at max length: recorded, and obeyed
        assert info["geometry"]["forced_eos_token_id"] == tok.eos_token_id
        assert max(map(len, info["generated"])) < 9
    assert (tmp_path / "static" / "inference.json").is_file()


@pytest.mark.unit
def test_prefix_lm_role_ids_reach_the_step_graph():
    """Role ids (UnifiedTransformer's role embeddings): left-padded with the sources, the start token's role from
    the request (or 0), every target step the start token's role; beams reorder them; none given: -1 (no role
    term, Paddle's default); checked before any graph runs."""
    from paddle2ort.runtime.seq2seq import NO_ROLE, PrefixLMDecoder, PrefixLMSpec, role_rows
    calls = []

    def step(ids, types, pos, mask, past, roles):
        calls.append(roles.copy())
        b, s_ = ids.shape
        logits = np.zeros((b, s_, 6), np.float32)
        logits[:, :, 4] = 1.0
        return logits, np.zeros((s_, 1, 2, b, 1, 2), np.float32)

    spec = PrefixLMSpec.from_json({"num_layers": 1, "heads": 1, "head_dim": 2, "vocab_size": 6, "bos_id": 1,
                                   "pad_id": 0, "eos_id": 2, "role_type_size": 3})
    dec = PrefixLMDecoder(step, spec)
    dec.set_roles([[1, 2], [2]])
    generate(dec, [[5, 4], [4]], GenerationConfig(max_new_tokens=3), 0)
    assert calls[0].tolist() == [[1, 2, 0], [NO_ROLE, 2, 0]] and calls[1].tolist() == [[0], [0]]
    calls.clear()
    dec.set_roles([[1, 2, 2], [0, 1]])                          # the start token's role given
    beam_search(dec, [[5, 4], [4]], GenerationConfig(max_new_tokens=3, num_beams=2), 0)
    assert calls[0][:, -1].tolist() == [2, 2, 1, 1] and calls[1].ravel().tolist() == [2, 2, 1, 1]
    calls.clear()
    dec.set_roles(None)
    generate(dec, [[5]], GenerationConfig(max_new_tokens=2), 0)
    assert (calls[0] == NO_ROLE).all() and (calls[1] == NO_ROLE).all()
    for bad, match in (([[1, 2, 3]], r"integers in \[0, 3\)"), ([[1]], "1 role ids for 2 tokens"),
                       ([[1, 2], [0]], "2 role-id rows for 1 sources")):
        with pytest.raises(BadInputError, match=match):
            role_rows(bad, [[5, 4]], 3)
    with pytest.raises(BadInputError, match="no role embeddings"):
        role_rows([[1]], [[5]], None)


@pytest.fixture(scope="module")
def ut_roles(tmp_path_factory):
    """A tiny UnifiedTransformer with role embeddings (role_type_size 3) converted (gated, its recorded calls with
    non-trivial roles) once: (model dir, bundle dir)."""
    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    from paddle2ort.convert.seq2seq.tiny import build_tiny
    src = build_tiny("unified_transformer", tmp_path_factory.mktemp("ut-roles"), _texts(), role_type_size=3)
    out = tmp_path_factory.mktemp("ut-roles-bundle") / "bundle"
    convert_seq2seq(Seq2SeqConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=out,
                                         sources=tuple(_texts()[:3])))
    return src, out


def test_unified_transformer_role_ids_match_paddle_generate(ut_roles, tmp_path):
    """role_ids are a step-graph input where the model has role embeddings: the bundle fed non-trivial role ids
    by the request equals PaddleNLP's generate() with the same role_ids (greedy and 3 beams), and with none equals
    generate() without role_ids (its default), up to near-ties; the roles change the output."""
    from paddle2ort.convert.paddle_proc import run_worker
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    src, bundle = ut_roles
    m = load_bundle(bundle).manifest
    assert m.validation["fp32"]["passed"] and m.extra["prefix_lm"]["role_type_size"] == 3
    gen = Text2TextGenerator(bundle)
    assert [i.name for i in gen.model.session.get_inputs()][-1] == "role_ids"
    ids = [gen.prompt_ids(t) for t in _texts()[:6]]
    roles = [[(2 * b + j // 2) % 3 for j in range(len(s))] for b, s in enumerate(ids)]
    cases = [({}, {"decode_strategy": "greedy_search"}),
             ({"num_beams": 3, "beam_rules": "paddlenlp", "early_stopping": False},
              {"decode_strategy": "beam_search", "num_beams": 3})]
    opts = [{**p, "max_new_tokens": 12} for _, p in cases]
    common = {"model_dir": str(src / "model"), "sources": ids, "options": opts}
    with_roles = run_worker("generate_seq2seq", {**common, "role_ids": roles}, tmp_path / "a")["generated"]
    without = run_worker("generate_seq2seq", common, tmp_path / "b")["generated"]
    beams, outs = BeamMargins(), []
    for r in (roles, None):
        for (ours, _), ref in zip(cases, with_roles if r else without):
            with beams:
                got = gen.generate_token_ids(ids, GenerationConfig(max_new_tokens=12, **ours), role_ids=r)
            outs.append(got)
            if ours:
                bm = beams.margins()
                assert_near_tie_equal(got, ref, lambda i, g, w: [bm[i]] * (_first_diff(g, w) + 1), (ours, r))
            else:
                def margins(i, g, w, r=r):
                    gen.model.set_roles(None if r is None else [r[i]])
                    try:
                        return greedy_tie_margins(gen.model, ids[i], g, w, gen.spec.eos_id)
                    finally:
                        gen.model.set_roles(None)
                assert_near_tie_equal(got, ref, margins, (ours, r))
    assert outs[0] != outs[2]                              # the role embeddings took part
    with pytest.raises(BadInputError, match=r"integers in \[0, 3\)"):
        gen.generate_token_ids(ids[:1], GenerationConfig(max_new_tokens=2), role_ids=[[7] * len(ids[0])])


def test_generate_cli_text2text(t5, tmp_path, capsys):
    from paddle2ort.cli import main
    _, bundle = t5
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"src": t}) + "\n" for t in _texts()[:3]), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["-q", "generate", str(bundle), "--data-file", str(data), "--output-file", str(out),
                 "--max-new-tokens", "6", "--num-beams", "2", "--beam-rules", "paddlenlp"]) == 0
    rows = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert [r["src"] for r in rows] == _texts()[:3] and all(isinstance(r["tgt"], str) for r in rows)   # src -> tgt
    assert main(["-q", "generate", str(bundle), "--data-file", str(data), "--output-file", str(out),
                 "--max-new-tokens", "6", "--num-beams", "2", "--beam-rules", "paddlenlp"]) == 0     # resumes
    assert [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()] == rows
    assert main(["-q", "generate", str(bundle), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["-q", "generate", str(bundle), "--prompt", "hello", "--max-new-tokens", "5",
                 "--forced-bos-token-id", "7", "--forced-eos-token-id", "2"]) == 0
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    want = Text2TextGenerator(bundle)("hello", GenerationConfig(max_new_tokens=5, forced_bos_token_id=7,
                                                                forced_eos_token_id=2))
    assert capsys.readouterr().out.splitlines() == want and want[0].startswith(
        Text2TextGenerator(bundle).tokenizer.decode([7]))
    assert main(["-q", "generate", str(bundle), "--prompt", "hello", "--chat"]) == 2
    for extra in (["--graph", "kernels"], ["--max-context", "10"]):        # refused, not ignored
        assert main(["-q", "generate", str(bundle), "--prompt", "hello", *extra]) == 2
        assert f"{extra[0]} " in capsys.readouterr().err
    capsys.readouterr()
    sampled = []
    for seed in (1, 1, 2):                             # sampling: one seed, one answer (Philox, as for causal LMs)
        assert main(["-q", "generate", str(bundle), "--prompt", "hello", "--prompt", "the gate", "--temperature",
                     "1.5", "--top-k", "50", "--seed", str(seed), "--max-new-tokens", "12"]) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1] != sampled[2]


@pytest.mark.unit
def test_text2text_serving_batches():
    """Equal deterministic settings share a batch (up to max_batch rows, in arrival order); a sampling choice runs
    alone (its tokens depend on its seed only); finish reasons from the row's length and stop strings."""
    from paddle2ort.runtime.serving.scheduler import Request
    from paddle2ort.runtime.serving.text2text import Job, batches, finish_reason
    g, s = GenerationConfig(max_new_tokens=4), GenerationConfig(max_new_tokens=4, do_sample=True, seed=1)
    req = Request([5], g, 1, print)
    cfgs = [g, s, g, GenerationConfig(max_new_tokens=5), g]
    jobs = [Job(req, i, c) for i, c in enumerate(cfgs)]
    assert [[j.index for j in b] for b in batches(jobs, 2)] == [[0, 2], [1], [3], [4]]
    assert finish_reason([1, 2, 3, 4], "abcd", "abcd", g) == "length"
    assert finish_reason([1, 2], "ab", "ab", g) == finish_reason([1, 2, 3, 4], "abcd", "ab", g) == "stop"


def test_serve_text2text_completions(t5):
    """`serve` on a text2text bundle: /v1/completions takes the prompt as the source; concurrent greedy requests
    (batched together) answer as each does alone through Text2TextGenerator; a seed reproduces; chat is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from test_serving import Server, text_divergence
    _, bundle = t5
    srv = Server([bundle], max_batch=4, max_queue=8)
    try:
        gen = srv.models["bundle"].generator
        srcs = _texts()[:5]
        want = [gen(t, GenerationConfig(max_new_tokens=8))[0] for t in srcs]

        def ask(t, **kw):
            r = srv.post("/v1/completions", json={"model": "bundle", "prompt": t, "max_tokens": 8, **kw})
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(5) as ex:
            got = list(ex.map(lambda t: ask(t, temperature=0), srcs))
        # batched together, other shapes than alone: each text is its alone run's up to a near-tie of that run's
        # (tests/near_tie.py); one graph, fp32: 1e-3 of the logit range
        cfg = gen.stop_ids(GenerationConfig(max_new_tokens=8))                 # what gen(t) runs
        for t, w, g in zip(srcs, want, got):
            (ids,), (margins,), eps = greedy_reference(gen.model, [gen.prompt_ids(t)], cfg, gen.spec.pad_id, 1e-3)
            assert gen.tokenizer.decode(ids) == w                                # the reference: the alone run
            assert text_divergence(g["choices"][0]["text"], ids, gen.tokenizer.decode, margins, eps) is None, (g, w)
        assert [g["usage"]["prompt_tokens"] for g in got] == [len(gen.prompt_ids(t)) for t in srcs]
        assert all(g["choices"][0]["finish_reason"] in ("stop", "length") for g in got)
        a, b = (ask("hello", temperature=1.5, top_k=50, seed=7, n=2) for _ in range(2))
        assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
        r = srv.post("/v1/chat/completions", json={"model": "bundle", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_task"
    finally:
        srv.close()


@pytest.mark.unit
def test_a_source_whose_encoder_attention_cannot_fit_is_refused_before_encoding(monkeypatch):
    """The encoder's attention is quadratic in the source (T5: no learned positions bound it): a 10k-token source
    was OOM-killed (exit 137, no message); it is now one BadInputError naming the fix, before any encoder work."""
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.generation import check_memory
    from paddle2ort.runtime.seq2seq import Seq2SeqDecoder, Seq2SeqSpec
    encoded = []
    dec = Seq2SeqDecoder(lambda ids, mask: encoded.append(ids), None,
                         Seq2SeqSpec(num_layers=2, heads=8, head_dim=64, vocab_size=32128, decoder_start_id=0,
                                     eos_id=1, pad_id=0))
    assert dec.bytes_needed(1, 4000, 8) > 4 * 8 * 4000 ** 2 * 2                # quadratic in the source
    monkeypatch.setattr(dec, "bytes_available", lambda: 4 << 30)
    check_memory(dec, 1, 1, 1000, 8)                                           # ~0.1 GB: fits
    with pytest.raises(BadInputError, match="one row of 10000 \\+ 8 tokens needs .* shorten the prompt"):
        check_memory(dec, 1, 1, 10_000, 8)
    assert not encoded


def test_a_source_is_tokenized_where_the_gil_is_released():
    """The server tokenizes a text2text prompt on a worker thread through prompt_ids: it went through encode, which
    holds the GIL (the tokenizers library releases it in encode_batch only), stalling the event loop meanwhile."""
    from types import SimpleNamespace

    from paddle2ort.runtime.seq2seq import Text2TextGenerator

    class Tok:
        def encode(self, text):
            raise AssertionError("encode holds the GIL")

        def encode_batch(self, texts):
            return [[len(t)] for t in texts]
    gen = SimpleNamespace(tokenizer=Tok(), spec=SimpleNamespace(eos_id=2, source_end_id=None))
    assert Text2TextGenerator.prompt_ids(gen, "a source") == [8, 2]
    with pytest.raises(BadInputError, match="empty source"):
        Text2TextGenerator.prompt_ids(gen, "  ")
