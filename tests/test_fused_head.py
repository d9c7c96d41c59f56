"""The CPU fused decoder's LM head at chosen positions (runtime.fused.head_at_positions): a generation's prompt pass
computes only each row's last logits, a step its one token's, prompt_logits every position's; all of them as the
file's graph (the head at every position) gives them, on tiny random LLaMAs (fp32; int8 weight-only with float32
compute, the bundles' CPU int8 graph)."""
import numpy as np
import pytest

from paddle2ort.convert.llm.fused import DecoderSpec, build_decoder, build_variant, random_state, save_model
from paddle2ort.runtime.fused import FusedDecoder, head_at_positions, without_head
from paddle2ort.runtime.generation import GenerationConfig, generate
from paddle2ort.runtime.session import SessionOptions

from near_tie import (NearTieBeams, beam_clear_divergences, clear_divergences, fused_logits_of, teacher_forced_logits,
                      teacher_forced_margins)

pytestmark = pytest.mark.unit

CFG = {"vocab_size": 120, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "max_position_embeddings": 128}
PROMPTS = [[5, 9, 14, 3, 77, 20, 31], [8, 1], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], [99, 7, 7]]
ONE = SessionOptions(device="cpu", intra_op_threads=1)


class WholeGraph(FusedDecoder):
    """The file's graph as it is: the LM head at every prompt position (the path before head_at_positions)."""
    positions_head = False


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request, tmp_path_factory):
    spec = DecoderSpec.from_config(CFG)
    state = random_state(spec, seed=5, std=0.08)
    path = tmp_path_factory.mktemp("head") / f"{request.param}.onnx"
    if request.param == "fp32":
        save_model(build_decoder(spec, state, "float32"), path)
    else:
        build_variant(spec, state, "int8", path, compute_dtype="float32")
    return path, spec.to_json()


def _pair(model, max_length=64):
    path, spec = model
    picked, whole = FusedDecoder(path, spec, ONE, max_length=max_length), WholeGraph(path, spec, ONE,
                                                                                    max_length=max_length)
    assert picked.picked_head and not whole.picked_head
    return picked, whole


def _close(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_prompt_pass_computes_only_each_rows_last_logits(model):
    picked, whole = _pair(model)
    got, rows = picked.prefill(picked.state(len(PROMPTS)), PROMPTS, 0, last_only=True)
    want, wrows = whole.prefill(whole.state(len(PROMPTS)), PROMPTS, 0, last_only=True)
    assert got.shape == (len(PROMPTS), CFG["vocab_size"]) and list(rows) == list(range(len(PROMPTS)))
    assert want.shape == (len(PROMPTS) * max(map(len, PROMPTS)), CFG["vocab_size"])
    _close(got[rows], want[wrows])
    for st_p, st_w in zip(picked.states[len(PROMPTS)].kv, whole.states[len(PROMPTS)].kv):
        _close(st_p, st_w)                                                     # the same cache written


def test_memory_estimates_count_the_prompt_logits_generation_holds(model):
    """Admission (bytes_needed) counts B x V prompt logits where the head runs at each row's last position, and
    B x S x V where the whole graph computes every position: the rest of the state is the same."""
    picked, whole = _pair(model)
    row = CFG["vocab_size"] * np.dtype(picked.logits_dtype).itemsize
    assert picked.state_bytes(3, 40) == picked.state_bytes(3, 1) == whole.state_bytes(3, 1)
    assert whole.state_bytes(3, 40) - whole.state_bytes(3, 1) == 3 * 39 * row
    assert whole.bytes_needed(3, 40, 8) - picked.bytes_needed(3, 40, 8) == 3 * 39 * row


def test_prompt_logits_and_full_prefill_keep_every_position(model):
    picked, whole = _pair(model)
    for got, want in zip(picked.prompt_logits(picked.state(4), PROMPTS, 0),
                         whole.prompt_logits(whole.state(4), PROMPTS, 0)):
        assert got.shape == want.shape
        _close(got, want)
    got, rows = picked.prefill(picked.state(4), PROMPTS, 0)                     # last_only unset: every position
    want, wrows = whole.prefill(whole.state(4), PROMPTS, 0)
    assert got.shape == want.shape and np.array_equal(rows, wrows)
    _close(got, want)


def test_greedy_tokens_and_steps_match_the_whole_graph(model):
    """Greedy and beam tokens, batched and one prompt at a time, are the whole graph's up to a near-tie of the whole
    graph's (tests/near_tie.py): the head at other positions runs other GEMM shapes, which another ISA's kernels
    may round otherwise; the logits themselves are held to 1e-5 below."""
    picked, whole = _pair(model)
    cfg = GenerationConfig(max_new_tokens=10)
    want = generate(whole, PROMPTS, cfg, 0)
    logits_of = fused_logits_of(whole)
    # the two heads' logits agree within 1e-5 of their max (the tests above): 1e-3 of the logit range is plenty
    eps = 1e-3 * float(np.ptp(np.concatenate([teacher_forced_logits(logits_of, p, w) for p, w in zip(PROMPTS, want)])))
    margins = [teacher_forced_margins(logits_of, p, w, eps) for p, w in zip(PROMPTS, want)]
    for got in (generate(picked, PROMPTS, cfg, 0), [generate(picked, [p], cfg, 0)[0] for p in PROMPTS]):
        assert not clear_divergences(got, want, margins, eps), (got, want, margins)
    cfg = GenerationConfig(max_new_tokens=6, num_beams=2)
    with NearTieBeams() as rec:
        want = generate(whole, PROMPTS, cfg, 0)
    beam_margins = rec.margins()
    for got in (generate(picked, PROMPTS, cfg, 0), [generate(picked, [p], cfg, 0)[0] for p in PROMPTS]):
        assert not beam_clear_divergences(got, want, beam_margins, eps), (got, want, beam_margins)
    outs = []
    for dec in (picked, whole):                                 # teacher-forced steps: the bound [B, 1, V] logits
        dec.start(len(PROMPTS))
        logits, rows = dec.append(PROMPTS, np.zeros(len(PROMPTS), np.int64), 6)
        got = [np.asarray(logits[rows], np.float32)]
        for j in range(5):
            dec.next_ids[:, 0] = [(5 * j + 3 * b) % 100 + 1 for b in range(len(PROMPTS))]
            dec.seqlens[...] += 1
            got.append(np.array(dec.step(None)[0], np.float32).reshape(len(PROMPTS), -1))
        outs.append(np.stack(got))
    _close(*outs)


def test_rows_joining_get_their_last_logits(model):
    picked, whole = _pair(model)
    picked.row_slots = whole.row_slots = 6
    got, want = [], []
    for dec, out in ((picked, got), (whole, want)):
        dec.start(0)
        out.append(dec.join(PROMPTS[:2], 4))
        out.append(dec.join([PROMPTS[2], PROMPTS[3], PROMPTS[3]], 4))           # two choices of one prompt
        dec.row_next[:, 0] = [3, 4, 5, 6, 7]
        out.append(dec.step(None)[0])
    for g, w in zip(got, want):
        _close(g, w)


def test_weights_stay_in_the_file_and_outside_weights_work(model, tmp_path):
    """The edited graph refers to the file's weights (light_model: no copy in Python nor in the session's bytes),
    a model whose weights are already outside its file (> 2 GB exports) gets the same head, and a graph cut before
    its head (without_head, the kernel engine's prompt graph) runs as it is."""
    import onnx
    path, spec = model
    graph = head_at_positions(path)
    assert len(graph) < path.stat().st_size / 4
    m = onnx.load(str(path))
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data")
    ext, whole = FusedDecoder(tmp_path / "ext.onnx", spec, ONE, max_length=32), WholeGraph(path, spec, ONE,
                                                                                          max_length=32)
    assert ext.picked_head
    got, rows = ext.prefill(ext.state(4), PROMPTS, 0, last_only=True)
    want, wrows = whole.prefill(whole.state(4), PROMPTS, 0, last_only=True)
    _close(got[rows], want[wrows])
    cut = FusedDecoder(without_head(path), dict(spec, vocab_size=spec["hidden_size"]), ONE, max_length=32)
    assert not cut.picked_head
