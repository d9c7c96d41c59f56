"""The decode loop on a NumPy toy decoder: logits processors vs reference, sampling, batching, stops, beams."""
import numpy as np
import pytest

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import (GenerationConfig, Generator, KVCache, beam_search, generate, left_pad,
                                           logits_to_probs, position_ids, sample, top_k_mask, top_p_mask)


class ToyDecoder:
    """A bigram model with the exported graph's contract. The cache stores each token's embedding; logits at a
    position are table[token] + a bonus read back from the cache (so a wrong cache or mask changes the output)."""

    num_layers, kv_heads, head_dim, cache_dtype = 1, 1, 4, np.float32

    def __init__(self, vocab=12, seed=0):
        rng = np.random.default_rng(seed)
        self.vocab_size = vocab
        self.table = rng.normal(0, 2, (vocab, vocab)).astype(np.float32)
        self.emb = rng.normal(0, 1, (vocab, 4)).astype(np.float32)
        self.w = rng.normal(0, 1, (4, vocab)).astype(np.float32)
        self.calls = []

    def __call__(self, ids, mask, pos, past):
        b, s = ids.shape
        p = past.shape[0]
        assert mask.shape == (b, p + s) and pos.shape == (b, s)
        self.calls.append((b, s, p))
        new = self.emb[ids]                                           # [B, S, 4]
        hist = np.concatenate([past[:, 0, 0, :, 0, :].transpose(1, 0, 2), new], axis=1)   # [B, P+S, 4]
        m = mask[:, :, None].astype(np.float32)
        logits = np.zeros((b, s, self.vocab_size), np.float32)
        for j in range(s):
            upto = p + j + 1
            ctx = (hist[:, :upto] * m[:, :upto]).sum(1) / np.maximum(m[:, :upto].sum(1), 1)   # mean of real tokens
            logits[:, j] = self.table[ids[:, j]] + 0.5 * ctx @ self.w
        present = new.transpose(1, 0, 2)[:, None, None, :, None, :]  # [S, 1, 1, B, 1, 4]
        return logits, np.ascontiguousarray(present)


def ref_top_k(logits, k):
    out = np.full_like(logits, -np.inf)
    for r in range(logits.shape[0]):
        kth = np.sort(logits[r])[::-1][k - 1]
        keep = logits[r] >= kth
        out[r, keep] = logits[r, keep]
    return out


def ref_top_p(logits, p):
    out = np.full_like(logits, -np.inf)
    for r in range(logits.shape[0]):
        probs = np.exp(logits[r] - logits[r].max())
        probs /= probs.sum()
        mass = 0.0
        for i in sorted(range(len(probs)), key=lambda i: (-logits[r, i], i)):
            out[r, i] = logits[r, i]
            mass += probs[i]
            if mass >= p:
                break
    return out


@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_top_k_matches_reference_and_keeps_ties(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(4, 12)).astype(np.float32)
    logits[0, :3] = 9.0                                               # a three-way tie at the top
    got = top_k_mask(logits, k)
    want = ref_top_k(logits, k)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert (np.isfinite(got[0]).sum() >= 3)                           # ties at the boundary are all kept


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999, 1.0])
def test_top_p_matches_reference(p):
    rng = np.random.default_rng(int(p * 1000))
    logits = rng.normal(0, 2, size=(5, 30))
    got, want = top_p_mask(logits, p), ref_top_p(logits, p)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert (np.isfinite(got).sum(-1) >= 1).all()


def test_sampling_distribution_and_seed():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    rng = np.random.default_rng(0)
    draws = np.array([sample(probs, rng)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - probs[0]).max() < 0.015
    a = sample(np.repeat(probs, 8, 0), np.random.default_rng(42))
    b = sample(np.repeat(probs, 8, 0), np.random.default_rng(42))
    assert np.array_equal(a, b)
    assert np.allclose(logits_to_probs(np.log(probs), 1.0, 0, 1.0), probs)


def test_generation_config_rejects_bad_values():
    for kw, msg in [({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                    ({"temperature": -1}, "temperature"), ({"repetition_penalty": -1.0}, "repetition_penalty"),
                    ({"num_beams": 0}, "num_beams"), ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens"),
                    ({"num_beams": 2, "do_sample": True}, "beam search")]:
        with pytest.raises(BadInputError, match=msg):
            GenerationConfig(**kw)
    assert not GenerationConfig(do_sample=True, temperature=0).sampling          # temperature 0 means greedy
    assert not GenerationConfig(do_sample=True, top_k=1).sampling


def test_inputs_left_padding_and_empty_prompts():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(BadInputError, match="at least one token"):
        left_pad([[1, 2], []], 0)                                               # one empty prompt in a batch
    with pytest.raises(BadInputError, match="at least one token"):
        left_pad([], 0)


def test_greedy_batched_equals_single_and_uses_the_cache():
    m = ToyDecoder()
    prompts = [[1, 2, 3], [4], [5, 6]]
    cfg = GenerationConfig(max_new_tokens=6)
    single = [generate(m, [p], cfg, pad_id=0)[0] for p in prompts]
    m.calls.clear()
    batched = generate(m, prompts, cfg, pad_id=0)
    assert batched == single
    # one prefill, then one token per step against a growing cache — never the whole sequence again
    assert m.calls[0] == (3, 3, 0) and all(s == 1 for _, s, _ in m.calls[1:])
    assert [p for _, _, p in m.calls[1:]] == list(range(3, 3 + len(m.calls) - 1))


def test_sampling_reproducible_and_top_k_1_is_greedy():
    m = ToyDecoder()
    greedy = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8), 0)
    k1 = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8, do_sample=True, top_k=1, seed=1), 0)
    assert k1 == greedy
    s = lambda seed: generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5,  # noqa
                                                            top_p=0.9, seed=seed), 0)
    assert s(7) == s(7)
    assert any(s(7) != s(x) for x in range(8, 14))


def test_stop_tokens_min_tokens_and_per_row_finish():
    m = ToyDecoder()
    free = generate(m, [[1, 2], [3]], GenerationConfig(max_new_tokens=8), 0)
    stop = free[0][2]                                             # row 0's third token becomes a stop token
    out = generate(m, [[1, 2], [3]], GenerationConfig(max_new_tokens=8, stop_token_ids=(stop,)), 0)
    assert out[0] == free[0][:free[0].index(stop)]                # stop token dropped, row 0 finished early
    assert out[1] == (free[1][:free[1].index(stop)] if stop in free[1] else free[1])
    late = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8, min_new_tokens=6, stop_token_ids=(stop,)), 0)
    assert len(late[0]) >= 6 and stop not in late[0][:6]


def test_stop_strings_and_streamer():
    m = ToyDecoder()
    words = {i: f"w{i} " for i in range(12)}
    decode = lambda ids: "".join(words[i] for i in ids)  # noqa: E731
    free = generate(m, [[1]], GenerationConfig(max_new_tokens=8), 0)[0]
    target = words[free[3]].strip()
    got = generate(m, [[1]], GenerationConfig(max_new_tokens=8, stop_strings=(target,)), 0, decode=decode)[0]
    assert target in decode(got) and len(got) <= 4
    seen = []
    generate(m, [[1], [2, 3]], GenerationConfig(max_new_tokens=5), 0, streamer=lambda r, t: seen.append((r, t)))
    assert sum(1 for r, _ in seen if r == 0) == 5 and sum(1 for r, _ in seen if r == 1) == 5


def test_context_overflow_is_a_clear_error():
    with pytest.raises(BadInputError, match="exceeds the model's context"):
        Generator(ToyDecoder(), [[1] * 10], GenerationConfig(max_new_tokens=8), 0, max_context=16)


def test_beam_search_one_beam_is_greedy_and_beams_score_higher():
    m = ToyDecoder(seed=3)
    greedy = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=6), 0)[0]
    assert beam_search(m, [1, 2], GenerationConfig(max_new_tokens=6, num_beams=1), 0) == greedy

    def logprob(seq):
        ids, total = [1, 2], 0.0
        for t in seq:
            g = Generator(m, [ids], GenerationConfig(max_new_tokens=1), 0)
            lp = g.logits[0] - np.log(np.exp(g.logits[0] - g.logits[0].max()).sum()) - g.logits[0].max()
            total += lp[t]
            ids = ids + [t]
        return total

    beams = beam_search(m, [1, 2], GenerationConfig(max_new_tokens=6, num_beams=4, length_penalty=0.0), 0)
    assert len(beams) == 6 and logprob(beams) >= logprob(greedy) - 1e-9


def test_kv_cache_is_preallocated_and_written_in_place():
    c = KVCache.allocate(5, 1, 2, 1, 4)
    buf = c.buffer
    c.append(np.ones((3, 1, 2, 2, 1, 4), np.float32))
    c.append(np.full((1, 1, 2, 2, 1, 4), 2, np.float32))
    assert c.buffer is buf and c.length == 4 and c.view().base is buf
    with pytest.raises(BadInputError, match="KV cache full"):
        c.append(np.zeros((2, 1, 2, 2, 1, 4), np.float32))
