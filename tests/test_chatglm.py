"""ChatGLM v1 (GLM) through the prefix-LM path: bidirectional prompt up to <sop>, causal after it, 2-D rotary
positions (targets at the [gMASK] position, block positions counting) — converted by `convert-seq2seq`, generated
by the one decode loop (PrefixLMDecoder), parity with PaddleNLP's own ChatGLMForCausalLM.generate()."""
from __future__ import annotations

import numpy as np
import pytest

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import GenerationConfig, generate
from paddle2ort.runtime.seq2seq import PrefixLMDecoder, PrefixLMSpec

GMASK, MASK, BOS, PAD, EOS = 90, 91, 1, 0, 2
TEXTS = ["the cat sat on the mat", "a quick brown fox jumps over the dog", "hello world, the gate holds",
         "one two three four five six", "paddle to onnx runtime", "tiny models make quick tests"] * 4
TIE_EPS = 1e-3          # near-tie epsilon (logits): a top-2 gap this small may flip across ISAs


def _spec(**kw) -> PrefixLMSpec:
    return PrefixLMSpec.from_json({"num_layers": 1, "heads": 1, "head_dim": 2, "vocab_size": 100, "bos_id": BOS,
                                   "pad_id": PAD, "eos_id": EOS, "positions": "glm", "mask_ids": [GMASK, MASK],
                                   "source_end_id": GMASK, **kw})


@pytest.mark.unit
def test_glm_positions_mask_and_steps_follow_chatglm_tokenizer_rules():
    """Prefill: source positions 0.., <sop> at the [gMASK] position (else [MASK]) with block position 1; each step
    keeps the position and counts the block position; the mask is bidirectional over the source only."""
    calls = []

    def step(ids, block, pos, mask, past):
        calls.append((ids.copy(), block.copy(), pos.copy(), mask.copy()))
        b, s = ids.shape
        logits = np.zeros((b, s, 100), np.float32)
        logits[:, :, 7] = 1.0
        return logits, np.zeros((s, 1, 2, b, 1, 2), np.float32)

    rows = [[5, 6, GMASK], [MASK, 8, 9, 4, 3]]                 # second row: [MASK] first, no [gMASK]
    out = generate(PrefixLMDecoder(step, _spec()), rows, GenerationConfig(max_new_tokens=3), PAD)
    assert out == [[7, 7, 7], [7, 7, 7]]
    ids, block, pos, mask = calls[0]
    assert ids.tolist() == [[PAD, PAD, 5, 6, GMASK, BOS], [MASK, 8, 9, 4, 3, BOS]]
    assert pos.tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 0]]
    assert block.tolist() == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]]
    allowed = mask[:, 0] == 0
    assert allowed[0, 2, 4] and allowed[0, 5, 2] and not allowed[0, 4, 5] and not allowed[0, 2, 1]
    for k, (ids, block, pos, mask) in enumerate(calls[1:]):
        assert pos.tolist() == [[2], [0]] and block.tolist() == [[2 + k], [2 + k]]
        assert mask.shape == (2, 1, 1, 7 + k) and (mask[0, 0, 0, :2] < 0).all() and (mask[1, 0, 0] == 0).all()
    dec = PrefixLMDecoder(step, _spec())                          # beams reorder the 2-D positions with the cache
    dec.start(2)
    dec.append(rows, None, 2)
    dec.reorder([1, 1])
    dec.step(None)
    assert calls[-1][2].tolist() == [[0], [0]] and calls[-1][1].tolist() == [[2], [2]]
    with pytest.raises(BadInputError, match=r"\[gMASK\]"):
        generate(PrefixLMDecoder(step, _spec()), [[5, 6]], GenerationConfig(max_new_tokens=2), PAD)


@pytest.mark.unit
def test_chatglm_v1_family_is_a_prefix_lm_and_uncovered_configs_are_refused():
    from paddle2ort.convert.llm.families import UnsupportedFamily as LLMUnsupported
    from paddle2ort.convert.llm.families import family_name as llm_family
    from paddle2ort.convert.seq2seq.families import FAMILIES, UnsupportedFamily, family_name
    for cfg in ({"architectures": ["ChatGLMForCausalLM"]}, {"model_type": "chatglm"}):
        assert FAMILIES[family_name(cfg)].kind == "prefix-lm"
        with pytest.raises(LLMUnsupported, match="convert-seq2seq"):          # convert-llm says where it goes
            llm_family(cfg)
    for key, value in (("position_encoding_2d", False), ("pre_seq_len", 8), ("activation", "geglu")):
        with pytest.raises(UnsupportedFamily, match=key):
            family_name({"architectures": ["ChatGLMForCausalLM"], key: value})


STEPS = 12


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """A tiny random-weight ChatGLMForCausalLM converted (gated) on six sources x 12 greedy tokens: (bundle dir,
    the conversion's worker report — PaddleNLP's own generate() tokens on those sources among it)."""
    import paddle2ort.convert.seq2seq.api as api
    from paddle2ort.convert.seq2seq.tiny import build_tiny
    src = build_tiny("chatglm", tmp_path_factory.mktemp("glm"), TEXTS, eos_scale=1.5)
    out, seen = tmp_path_factory.mktemp("glm-bundle") / "b", {}
    check = api._check_agree
    with pytest.MonkeyPatch.context() as mp:                    # keep the worker's report (saves a Paddle start)
        mp.setattr(api, "_check_agree", lambda info, *a: (seen.update(info), check(info, *a)))
        api.convert_seq2seq(api.Seq2SeqConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=out,
                                                     sources=tuple(TEXTS[:6]), decode_steps=STEPS - 1))
    return out, seen


def _margin(model, src: list[int], prefix: list[int]) -> float:
    """The bundle's top-2 logit gap after `src` and the tokens `prefix` (teacher-forced)."""
    model.start(1)
    logits, _ = model.append([src], None, len(prefix) + 1)
    for t in prefix:
        model.next_ids[:] = t
        logits, _ = model.step(None)
    top = np.sort(logits[0])
    return float(top[-1] - top[-2])


def test_chatglm_v1_bundle_matches_paddle_generate(glm):
    """The gated bundle's greedy tokens equal PaddleNLP's ChatGLMForCausalLM.generate() (min = max = 12 new
    tokens, six left-padded sources ending in [gMASK]) row by row, up to a near tie: a first difference only where
    the bundle's own top-2 gap is within TIE_EPS."""
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    bundle, info = glm
    m = load_bundle(bundle).manifest
    assert m.validation["fp32"]["passed"] and m.extra["prefix_lm"]["positions"] == "glm"
    assert info["architecture"] == "ChatGLMForCausalLM"
    gen = Text2TextGenerator(bundle)
    ids = [gen.prompt_ids(t) for t in TEXTS[:6]]
    assert all(r[-1] == m.extra["prefix_lm"]["source_end_id"] for r in ids)       # sources end with [gMASK]
    got = gen.generate_token_ids(ids, GenerationConfig(max_new_tokens=STEPS, min_new_tokens=STEPS))
    ref = info["paddle_generated"]
    assert len(ref) == len(ids) and len({tuple(r) for r in ref}) > 1
    for s, g, r in zip(ids, got, ref):
        k = next((j for j in range(max(len(g), len(r))) if j >= len(g) or j >= len(r) or g[j] != r[j]), None)
        assert k is None or _margin(gen.model, s, r[:k]) <= TIE_EPS, (g, r)
