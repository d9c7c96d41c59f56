"""The decode loop on NumPy toy decoders (no Paddle, no model files): the step API, batching, stops, multi-turn,
beam search, request checks — and the same results from both engines (left-padded host cache / right-padded
positional cache like the fused graph)."""
import math

import numpy as np
import pytest

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import (CacheDecoder, Decoder, GenerationConfig, Generator, KVCache, beam_search,
                                           check_memory, generate, left_pad, position_ids)

from near_tie import same_up_to_a_near_tie


class ToyDecoder:
    """A bigram model with the exported graph's contract. The cache stores each token's embedding; logits at a
    position are table[token] + a bonus from the mean of the real tokens so far (a wrong cache or mask changes the
    output). Sums run over non-innermost axes (sequential order), so every engine computes bit-identical logits."""

    num_layers, kv_heads, head_dim, cache_dtype = 1, 1, 4, np.float32

    def __init__(self, vocab=12, seed=0):
        rng = np.random.default_rng(seed)
        self.vocab_size = vocab
        self.table = rng.normal(0, 2, (vocab, vocab)).astype(np.float32)
        self.emb = rng.normal(0, 1, (vocab, 4)).astype(np.float32)
        self.w = rng.normal(0, 1, (4, vocab)).astype(np.float32)
        self.calls = []

    def head(self, tokens, ctx_sum, count):
        """logits [N, V] of tokens [N] given the sum [N, 4] and count [N] of the context's embeddings."""
        ctx = ctx_sum / np.maximum(count, 1).astype(np.float32)[:, None]
        return self.table[tokens] + np.float32(0.5) * (ctx[:, :, None] * self.w[None]).sum(1)

    def __call__(self, ids, mask, pos, past):
        b, s = ids.shape
        p = past.shape[0]
        assert mask.shape == (b, p + s) and pos.shape == (b, s)
        self.calls.append((b, s, p))
        new = self.emb[ids]                                           # [B, S, 4]
        hist = np.concatenate([past[:, 0, 0, :, 0, :].transpose(1, 0, 2), new], axis=1)   # [B, P+S, 4]
        m = mask.astype(np.float32)
        logits = np.zeros((b, s, self.vocab_size), np.float32)
        for j in range(s):
            upto = p + j + 1
            real = [hist[r, :upto][m[r, :upto] > 0] for r in range(b)]
            sums = np.stack([x.sum(0) if len(x) else np.zeros(4, np.float32) for x in real])
            logits[:, j] = self.head(ids[:, j], sums, np.array([len(x) for x in real]))
        present = new.transpose(1, 0, 2)[:, None, None, :, None, :]  # [S, 1, 1, B, 1, 4]
        return logits, np.ascontiguousarray(present)


class ToyFused:
    """The same model as a Decoder with the fused graph's layout: a per-row positional cache [B, C, 4],
    right-padded prompts, seqlens advanced by the chooser. With xp = cupy its loop state and logits live on the GPU
    (the model itself is computed on the host), so the loop runs the CUDA kernels."""

    stream, next_ids, seqlens = None, None, None
    limit_name = "the cache capacity"

    def __init__(self, toy: ToyDecoder, capacity: int = 96, xp=np):
        self.t, self.vocab_size, self.capacity, self.xp = toy, toy.vocab_size, capacity, xp

    def start(self, batch):
        self.kv = np.zeros((batch, self.capacity, 4), np.float32)
        self.tok = np.zeros((batch, self.capacity), np.int64)
        self.next_ids = self.xp.zeros((batch, 1), np.int64)
        self.seqlens = self.xp.zeros(batch, np.int32)

    def _at(self, last):
        sums = np.stack([self.kv[b, :last[b] + 1].sum(0) for b in range(len(last))])
        toks = np.array([self.tok[b, last[b]] for b in range(len(last))])
        return self.xp.asarray(self.t.head(toks, sums, np.asarray(last) + 1))

    def append(self, chunks, past, room):
        assert max(p + len(c) for p, c in zip(past, chunks)) + room <= self.capacity
        last = np.array([p + len(c) - 1 for p, c in zip(past, chunks)], np.int32)
        for b, c in enumerate(chunks):
            self.kv[b, past[b]:past[b] + len(c)] = self.t.emb[c]
            self.tok[b, past[b]:past[b] + len(c)] = c
        self.seqlens[...] = self.xp.asarray(last)
        return self._at(last), None

    def step(self, real):
        pos, ids = self.host(self.seqlens), self.host(self.next_ids)[:, 0]
        for b in range(len(pos)):
            self.kv[b, pos[b]], self.tok[b, pos[b]] = self.t.emb[ids[b]], ids[b]
        return self._at(pos), None

    def reorder(self, src):
        self.kv, self.tok = self.kv[src], self.tok[src]

    def host(self, a):
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def max_tokens(self):
        return self.capacity

    def bytes_needed(self, rows, prompt_len, new_tokens):
        return rows * self.capacity * 4 * 4

    def bytes_available(self):
        return 1 << 30


def both(seed=0, vocab=12):
    toy = ToyDecoder(vocab, seed)
    return {"cache": CacheDecoder.wrap(toy), "fused": ToyFused(toy)}


def test_both_toys_are_decoders():
    for dec in both().values():
        assert isinstance(dec, Decoder)


def test_generation_config_rejects_bad_values():
    for kw, msg in [({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                    ({"temperature": -1}, "temperature"), ({"repetition_penalty": -1.0}, "repetition_penalty"),
                    ({"num_beams": 0}, "num_beams"), ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens"),
                    ({"num_beams": 2, "do_sample": True}, "beam search"), ({"seed": -1}, "seed"),
                    ({"seed": 2 ** 64}, "seed"), ({"seed": 1.5}, "seed"), ({"stop_strings": ("",)}, "stop strings"),
                    ({"stop_token_ids": (-3,)}, "stop token ids"), ({"max_new_tokens": 2.5}, "max_new_tokens")]:
        with pytest.raises(BadInputError, match=msg):
            GenerationConfig(**kw)
    for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(BadInputError, match=f"{name} must be a finite number"):
                GenerationConfig(**{name: bad})
    assert GenerationConfig(seed=2 ** 64 - 1).seed == 2 ** 64 - 1 and GenerationConfig(seed=0).seed == 0
    assert not GenerationConfig(do_sample=True, temperature=0).sampling          # temperature 0 means greedy
    assert not GenerationConfig(do_sample=True, top_k=1).sampling


def test_inputs_left_padding_and_empty_prompts():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    for bad in ([[1, 2], []], []):
        with pytest.raises(BadInputError, match="at least one token"):
            generate(ToyDecoder(), bad, GenerationConfig(), 0)
    with pytest.raises(BadInputError, match="outside the vocabulary"):
        generate(ToyDecoder(), [[1, 99]], GenerationConfig(), 0)
    with pytest.raises(BadInputError, match="stop token ids"):
        generate(ToyDecoder(), [[1]], GenerationConfig(stop_token_ids=(12,)), 0)


def test_greedy_batched_equals_single_and_uses_the_cache():
    m = ToyDecoder()
    prompts = [[1, 2, 3], [4], [5, 6]]
    cfg = GenerationConfig(max_new_tokens=6)
    single = [generate(m, [p], cfg, pad_id=0)[0] for p in prompts]
    m.calls.clear()
    batched = generate(m, prompts, cfg, pad_id=0)
    assert batched == single and all(len(r) == 6 for r in batched)
    # one prefill, then one token per step against a growing cache (none after the last token is chosen)
    assert m.calls[0] == (3, 3, 0) and all(s == 1 for _, s, _ in m.calls[1:]) and len(m.calls) == 6
    assert [p for _, _, p in m.calls[1:]] == list(range(3, 3 + len(m.calls) - 1))


def test_step_api_in_the_manner_of_genai():
    m = ToyDecoder()
    gen = Generator(m, GenerationConfig(max_new_tokens=4), pad_id=0)
    with pytest.raises(BadInputError, match="append_tokens first"):
        gen.generate_next_token()
    gen.append_tokens([[1, 2], [3]])
    assert len(m.calls) == 1 and not gen.is_done()                  # the prefill is its own step
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(gen.get_next_tokens().tolist())
    want = generate(m, [[1, 2], [3]], GenerationConfig(max_new_tokens=4), 0)
    assert np.array(got).T.tolist() == gen.results() == want
    with pytest.raises(BadInputError, match="finished"):
        gen.generate_next_token()


@pytest.mark.parametrize("engine", ["cache", "fused"])
def test_multi_turn_continues_the_cache(engine):
    """Turn 2 after turn 1 (rows of different lengths, one finished early by a stop token) = one fresh generation
    over the whole history."""
    toy = ToyDecoder(seed=5)
    prompts = [[1, 2, 3], [4]]
    free = generate(toy, prompts, GenerationConfig(max_new_tokens=6), 0)
    stop = free[1][1]                                                # row 1 stops after two tokens
    cfg = GenerationConfig(max_new_tokens=6, stop_token_ids=(stop,), repetition_penalty=1.3)
    dec = both(5)[engine]
    gen = Generator(dec, cfg, 0)
    gen.append_tokens(prompts)
    while not gen.is_done():
        gen.generate_next_token()
    first = gen.results()
    assert len(first[1]) < 6
    turn2 = [[7, 8], [9, 10, 11]]
    gen.append_tokens(turn2)
    whole = [p + f + ([stop] if len(f) < 6 else []) + t for p, f, t in zip(prompts, first, turn2)]
    assert gen.history == whole                                      # the stop token stays in the history
    while not gen.is_done():
        gen.generate_next_token()
    assert gen.results() == [generate(toy, [w], cfg, 0)[0] for w in whole]


def test_sampling_reproducible_and_top_k_1_is_greedy():
    m = ToyDecoder()
    greedy = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8), 0)
    k1 = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8, do_sample=True, top_k=1, seed=1), 0)
    assert k1 == greedy
    for t in (1e-300, 1e-40, 1e-6):             # logits / t leave float32 (NaN, a wrong or empty answer): greedy
        tiny = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=t, seed=1)
        assert not tiny.sampling and generate(m, [[1, 2]], tiny, 0) == greedy
    for p in (1e-300, 1e-3, 1e3, 1e300):       # a penalty that takes logits out of float32 is refused
        with pytest.raises(BadInputError, match="repetition_penalty must be in 0.01..100"):
            GenerationConfig(repetition_penalty=p)
    s = lambda seed: generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5,  # noqa
                                                            top_p=0.9, seed=seed), 0)
    assert s(7) == s(7) and s(2 ** 64 - 1) == s(2 ** 64 - 1)
    assert any(s(7) != s(x) for x in range(8, 14))


@pytest.mark.parametrize("seed", range(6))
def test_same_seed_same_tokens_on_both_engines(seed):
    """One RNG contract (Philox, counter = (step, row)): the left-padded host cache and the right-padded positional
    cache draw the same tokens for the same seed — sampling with penalty, greedy with stops, beams."""
    d = both(seed)
    prompts = [[1, 2, 3], [4], [5, 6]]
    cfgs = [GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=8, top_p=0.95, seed=seed,
                             repetition_penalty=1.2),
            GenerationConfig(max_new_tokens=10, stop_token_ids=(3, 7), min_new_tokens=2),
            GenerationConfig(max_new_tokens=8, num_beams=3, repetition_penalty=1.1, stop_token_ids=(3,))]
    for cfg in cfgs:
        assert generate(d["cache"], prompts, cfg, 0) == generate(d["fused"], prompts, cfg, 0), cfg


def test_stop_tokens_min_tokens_and_per_row_finish():
    m = ToyDecoder()
    free = generate(m, [[1, 2], [3]], GenerationConfig(max_new_tokens=8), 0)
    stop = free[0][2]                                             # row 0's third token becomes a stop token
    out = generate(m, [[1, 2], [3]], GenerationConfig(max_new_tokens=8, stop_token_ids=(stop,)), 0)
    assert out[0] == free[0][:free[0].index(stop)]                # stop token dropped, row 0 finished early
    assert out[1] == (free[1][:free[1].index(stop)] if stop in free[1] else free[1])
    late = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=8, min_new_tokens=6, stop_token_ids=(stop,)), 0)
    assert len(late[0]) >= 6 and stop not in late[0][:6]


@pytest.mark.parametrize("engine", ["cache", "fused"])
def test_stop_strings_and_streamer(engine):
    m = ToyDecoder()
    words = {i: f"w{i} " for i in range(12)}
    decode = lambda ids: "".join(words[i] for i in ids)  # noqa: E731
    free = generate(m, [[1]], GenerationConfig(max_new_tokens=8), 0)[0]
    target = words[free[3]].strip()
    got = generate(both()[engine], [[1]], GenerationConfig(max_new_tokens=8, stop_strings=(target,)), 0,
                   decode=decode)[0]
    assert got == free[:free.index(free[3]) + 1]                  # ends with the token that completed the string
    seen = []
    out = generate(m, [[1], [2, 3]], GenerationConfig(max_new_tokens=5), 0, streamer=lambda r, t: seen.append((r, t)))
    assert [[t for r, t in seen if r == row] for row in (0, 1)] == out
    stop = out[0][2]
    seen.clear()
    out = generate(m, [[1], [2, 3]], GenerationConfig(max_new_tokens=5, stop_token_ids=(stop,)), 0,
                   streamer=lambda r, t: seen.append((r, t)))
    assert [[t for r, t in seen if r == row] for row in (0, 1)] == out     # stop tokens are not streamed


def test_context_and_memory_bounds_are_checked_before_any_model_work():
    m = ToyDecoder()
    with pytest.raises(BadInputError, match="exceeds the model's context"):
        Generator(m, GenerationConfig(max_new_tokens=8), 0, max_context=16).append_tokens([[1] * 10])
    fused = ToyFused(m, capacity=12)
    with pytest.raises(BadInputError, match="exceeds the cache capacity"):
        generate(fused, [[1] * 10], GenerationConfig(max_new_tokens=8), 0)

    class Small(CacheDecoder):
        def bytes_available(self):
            return 10 * self.bytes_needed(1, 4, 8) + 5                # room for exactly 10 rows
    small = Small(m, 1, 1, 4, 12)
    with pytest.raises(BadInputError, match=r"at most 10 rows fit; use num_beams <= 5"):
        beam_search(small, [[1, 2, 3, 4]] * 2, GenerationConfig(max_new_tokens=8, num_beams=6), 0)
    with pytest.raises(BadInputError, match=r"at most 10 rows fit; use a batch of at most 10"):
        generate(small, [[1, 2, 3, 4]] * 11, GenerationConfig(max_new_tokens=8), 0)
    with pytest.raises(BadInputError, match=r"num_beams must be in 1..32"):
        GenerationConfig(num_beams=100000)
    assert m.calls == []                                              # nothing ran
    real = CacheDecoder(m, 24, 8, 64, 49152)                           # SmolLM2-135M's dims on this host's RAM
    with pytest.raises(BadInputError, match="GiB"):
        check_memory(real, 1, 100000, 5, 32)


def test_beam_search_one_beam_is_greedy_and_beams_score_higher():
    m = ToyDecoder(seed=3)
    greedy = generate(m, [[1, 2]], GenerationConfig(max_new_tokens=6), 0)[0]
    assert beam_search(m, [[1, 2]], GenerationConfig(max_new_tokens=6, num_beams=1), 0) == [greedy]

    def logprob(seq):
        ids, total = [1, 2], 0.0
        for t in seq:
            logits, _ = m(np.array([ids]), np.ones((1, len(ids)), np.int64), np.arange(len(ids))[None],
                          np.zeros((0, 1, 2, 1, 1, 4), np.float32))
            x = logits[0, -1].astype(np.float64)
            total += x[t] - x.max() - np.log(np.exp(x - x.max()).sum())
            ids = ids + [t]
        return total

    beams = beam_search(m, [[1, 2]], GenerationConfig(max_new_tokens=6, num_beams=4, length_penalty=0.0), 0)[0]
    assert len(beams) == 6 and logprob(beams) >= logprob(greedy) - 1e-6


def test_beam_search_never_crashes_when_stops_crowd_the_candidates():
    """2 beams with the two likeliest first tokens as stop ids (once crashed with IndexError whenever fewer than
    num_beams of the top 2K candidates were live): 120 seeded toy cases, both engines, same results."""
    checked = 0
    for seed in range(120):
        toy = ToyDecoder(vocab=6 + seed % 7, seed=seed)
        prompt = [int(t) for t in np.random.default_rng(seed).integers(0, toy.vocab_size, 1 + seed % 4)]
        first, _ = toy(np.array([prompt]), np.ones((1, len(prompt)), np.int64), np.arange(len(prompt))[None],
                       np.zeros((0, 1, 2, 1, 1, 4), np.float32))
        stops = tuple(int(t) for t in np.argsort(-first[0, -1])[:2 + seed % 2])
        cfg = GenerationConfig(max_new_tokens=5, num_beams=2 + seed % 3, stop_token_ids=stops,
                               min_new_tokens=seed % 3, early_stopping=bool(seed % 2))
        d = both(seed, toy.vocab_size)
        a = beam_search(d["cache"], [prompt, prompt[:1]], cfg, 0)
        assert a == beam_search(d["fused"], [prompt, prompt[:1]], cfg, 0)
        assert all(not set(r) & set(stops) for r in a)
        checked += 1
    assert checked == 120


def test_kv_cache_is_preallocated_and_written_in_place():
    c = KVCache.allocate(5, 1, 2, 1, 4)
    buf = c.buffer
    c.append(np.ones((3, 1, 2, 2, 1, 4), np.float32))
    c.append(np.full((1, 1, 2, 2, 1, 4), 2, np.float32))
    assert c.buffer is buf and c.length == 4 and c.view().base is buf
    with pytest.raises(BadInputError, match="KV cache full"):
        c.append(np.zeros((2, 1, 2, 2, 1, 4), np.float32))
    c.reserve(3)                                                       # a later turn grows it, history kept
    assert c.buffer.shape[0] == 7 and (c.view()[3] == 2).all() and (c.view()[:3] == 1).all()


def test_bundle_stop_ids_fall_back_to_eos():
    from types import SimpleNamespace

    from paddle2ort.runtime.llm import bundle_stop_ids
    tok = SimpleNamespace(eos_token_id=2)
    assert bundle_stop_ids({"stop_ids": [7, 0, 2]}, tok) == (0, 2, 7)
    assert bundle_stop_ids({}, tok) == (2,)                    # bundles converted before llm.stop_ids existed


def _cupy():
    try:
        import cupy as cp
        return cp if cp.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - no cupy or no driver: skip
        return None


@pytest.mark.gpu
@pytest.mark.skipif(_cupy() is None, reason="needs CuPy and an NVIDIA GPU")
def test_the_device_loop_is_the_same_loop():
    """The loop state and logits on the GPU (CUDA kernels: sampler, beam top-k) vs on the host (their NumPy twins),
    same toy model: greedy with stops and min_new_tokens identical; seeded sampling and beams agree except where
    float32 rounding (fast exp/log in the kernels) flips a near-tie: aggregate rule, >= 90% of the sequences."""
    cp = _cupy()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8]]
    greedy_cfg = GenerationConfig(max_new_tokens=12, stop_token_ids=(3, 7), min_new_tokens=2,
                                  repetition_penalty=1.2)
    same, total = 0, 0
    for seed in range(8):
        toy = ToyDecoder(vocab=64, seed=seed)
        host, dev = CacheDecoder.wrap(toy), ToyFused(toy, xp=cp)
        assert generate(dev, prompts, greedy_cfg, 0) == generate(host, prompts, greedy_cfg, 0)
        for cfg in (GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=20, top_p=0.9,
                                     seed=seed, repetition_penalty=1.1),
                    GenerationConfig(max_new_tokens=8, num_beams=4, stop_token_ids=(3,))):
            a, b = generate(dev, prompts, cfg, 0), generate(host, prompts, cfg, 0)
            same += sum(x == y for x, y in zip(a, b))
            total += len(a)
    assert same / total >= 0.9, (same, total)
    gen = Generator(ToyFused(ToyDecoder(vocab=64), xp=cp), GenerationConfig(max_new_tokens=4), 0)   # multi-turn
    gen.append_tokens(prompts)
    while not gen.is_done():
        gen.generate_next_token()
    gen.append_tokens([[9], [10, 11], [12]])
    while not gen.is_done():
        gen.generate_next_token()
    assert gen.results() == [generate(ToyDecoder(vocab=64), [h], GenerationConfig(max_new_tokens=4), 0)[0]
                             for h in gen.history]


# ----------------------------------------------------------------------------- rows joining and leaving
def _alone(prompt, cfg, decode=None):
    """The reference: the row on a Generator of its own (the fixed-batch path, one row)."""
    gen = Generator(CacheDecoder.wrap(ToyDecoder()), cfg, pad_id=0, decode=decode)
    gen.append_tokens([prompt])
    while not gen.is_done():
        gen.generate_next_token()
    return gen.results()[0]


TIE_EPS = 1e-3      # near-tie epsilon (logits): rows batched with other company may flip a top-2 gap this small


def greedy_margins(toy, prompt, ids, cfg):
    """The reference's top-2 margin at each greedy step (teacher-forced; repetition penalty applied as the sampler
    does; stop ids count only once min_new_tokens are out)."""
    from paddle2ort.runtime.kernels.reference import SamplerParams, processed_logits
    seq = list(prompt) + list(ids[:-1])
    x = np.array([seq], np.int64)
    logits = toy(x, np.ones_like(x), np.arange(len(seq))[None], np.zeros((0, 1, 2, 1, 1, 4), np.float32))[0][0]
    out = []
    for k in range(len(ids)):
        seen = np.zeros((1, toy.vocab_size), np.uint8)
        seen[0, seq[:len(prompt) + k]] = 1
        lg = processed_logits(logits[len(prompt) - 1 + k][None], seen, np.array(cfg.stop_token_ids, np.int32),
                              SamplerParams(penalty=cfg.repetition_penalty, suppress_stop=k < cfg.min_new_tokens))
        top = np.sort(lg[0])
        out.append(float(top[-1] - top[-2]))
    return out


def test_rows_joining_and_leaving_get_what_they_get_alone():
    """Greedy and seeded sampling rows with different settings join a running batch at different steps and leave
    when done: each row's tokens equal the tokens it gets alone, and a row that leaves frees its cache."""
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [2, 2], [7]]
    cfgs = [GenerationConfig(max_new_tokens=9),
            GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.8, seed=7),
            GenerationConfig(max_new_tokens=7, do_sample=True, top_k=4, top_p=0.9, seed=123, min_new_tokens=2,
                             stop_token_ids=(3,)),
            GenerationConfig(max_new_tokens=6, repetition_penalty=1.5, stop_token_ids=(0, 5)),
            GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.3, repetition_penalty=1.2, seed=7)]
    want = [_alone(p, c) for p, c in zip(prompts, cfgs)]
    join_at = {0: [0, 1], 2: [2], 3: [3, 4]}                  # step -> rows that join before it
    dec = CacheDecoder.wrap(ToyDecoder())
    gen = Generator(dec, pad_id=0)
    ids, got, sizes = {}, {}, []
    for step in range(40):
        new = join_at.get(step, [])
        if new:
            for k, i in zip(new, gen.add_rows([prompts[k] for k in new], [cfgs[k] for k in new])):
                ids[i] = k
        if not gen.rows:
            break
        gen.generate_next_token()
        before = dec.cache.buffer.nbytes
        done = gen.remove_finished()
        got.update((ids[r.id], list(r.ids)) for r in done)
        assert all(r.finish_reason in ("stop", "length") for r in done) and not any(r in gen.rows for r in done)
        if done:
            sizes.append((before, dec.cache.buffer.nbytes, dec.cache.buffer.shape[3], len(gen.rows)))
    for k, (p, c) in enumerate(zip(prompts, cfgs)):
        if c.do_sample:                  # a seeded draw flips only within rounding of a CDF edge: compared exactly
            assert got[k] == want[k], k
        else:                            # greedy: the same tokens up to a near-tie of the reference
            assert same_up_to_a_near_tie(got[k], want[k], greedy_margins(ToyDecoder(), p, want[k], c),
                                         TIE_EPS), k
    assert all(b == n for _, _, b, n in sizes)                      # the buffer holds only the live rows
    assert all(after < before for before, after, _, n in sizes if n)  # a leaving row's cache is freed
    assert gen.rows == [] and dec.cache.length == 0 and dec.mask.shape == (0, 0)


def test_a_row_draws_the_same_tokens_whatever_shares_its_batch():
    """The Philox contract per row: a seeded row's tokens do not depend on its batch position or neighbours."""
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, seed=2024)
    alone = _alone([3, 1], cfg)
    for others in ([], [[5]], [[6, 7, 8], [9, 9]]):
        gen = Generator(CacheDecoder.wrap(ToyDecoder()), pad_id=0)
        rows = gen.add_rows(others + [[3, 1]], [GenerationConfig(max_new_tokens=3, do_sample=True, seed=1)] *
                            len(others) + [cfg])
        while not gen.is_done():
            gen.generate_next_token()
        assert gen.row(rows[-1]).ids == alone and gen.row(rows[-1]).finish_reason == "length"


def test_rows_joining_stop_strings_and_what_cannot_join():
    decode = lambda ids: "".join(chr(97 + t) for t in ids)        # noqa: E731
    cfg = GenerationConfig(max_new_tokens=10)
    full = _alone([1, 2], cfg)
    stop = decode(full[3:5])
    gen = Generator(CacheDecoder.wrap(ToyDecoder()), pad_id=0, decode=decode)
    (i,) = gen.add_rows([[1, 2]], [GenerationConfig(max_new_tokens=10, stop_strings=(stop,))])
    while not gen.is_done():
        gen.generate_next_token()
    r = gen.row(i)
    assert r.finish_reason == "stop" and decode(r.ids)[:r.stop_at] == decode(full)[:decode(full).find(stop)]
    with pytest.raises(BadInputError, match="fixed at start"):
        Generator(ToyFused(ToyDecoder()), pad_id=0).add_rows([[1]])
    fixed = Generator(CacheDecoder.wrap(ToyDecoder()), cfg, pad_id=0)
    fixed.append_tokens([[1]])
    with pytest.raises(BadInputError, match="fixed batch"):
        fixed.add_rows([[2]])
    with pytest.raises(BadInputError, match="outside the vocabulary"):
        Generator(CacheDecoder.wrap(ToyDecoder()), pad_id=0).add_rows([[99]])


def test_sampling_without_a_seed_draws_fresh_entropy_each_generation():
    """No seed: each generation samples differently (it was seed 0 every time, so every run printed the same
    'random' text); a seed reproduces; greedy needs none."""
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5)
    runs = {tuple(generate(ToyDecoder(vocab=64, seed=3), [[1, 2, 3]], cfg, 0)[0]) for _ in range(4)}
    assert len(runs) > 1
    seeded = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, seed=11)
    assert len({tuple(generate(ToyDecoder(vocab=64, seed=3), [[1, 2, 3]], seeded, 0)[0]) for _ in range(3)}) == 1
    assert cfg.seed is None and cfg.seeded().seed is not None and seeded.seeded() is seeded
    assert GenerationConfig().seeded().seed is None                              # greedy: nothing to seed


@pytest.mark.parametrize("argv, sampling", [
    ([], False), (["--top-k", "0"], False), (["--top-p", "1"], False), (["--temperature", "0"], False),
    (["--top-k", "5"], True), (["--top-p", "0.9"], True), (["--temperature", "0.7"], True)])
def test_off_values_of_sampling_options_keep_greedy(argv, sampling):
    """--top-k 0 and --top-p 1 are documented as off: they must not switch greedy decoding to sampling."""
    from paddle2ort.cli.generate import generation_config
    from paddle2ort.cli.main import build_parser
    args = build_parser().parse_args(["generate", "B", "--prompt", "hi", *argv])
    assert generation_config(args).sampling is sampling


def test_a_bare_stop_string_or_id_is_one_stop_not_its_letters():
    """stop_strings="Paris" stopped at the first "P", "a", "r", ... (five one-letter stops); a bare id was a
    TypeError deep inside; anything else is one BadInputError."""
    cfg = GenerationConfig(stop_strings="Paris", stop_token_ids=5)
    assert cfg.stop_strings == ("Paris",) and cfg.stop_token_ids == (5,)
    assert cfg.cut("The capital is Paris.") == "The capital is "
    assert GenerationConfig(stop_strings=["a", "b"]).stop_strings == ("a", "b")
    for bad in ({"stop_strings": {"x"}}, {"stop_token_ids": 2.5}, {"stop_token_ids": True}):
        with pytest.raises(BadInputError, match="stop"):
            GenerationConfig(**bad)


def test_the_library_refuses_what_is_not_a_prompt_or_a_config():
    from paddle2ort.runtime.llm import check_prompts
    assert check_prompts("hi") == ["hi"] and check_prompts(("a", ["u", "a", "u"])) == ["a", ["u", "a", "u"]]
    for bad in (None, 5, b"hi", [], ["ok", 3], {"src": "x"}):
        with pytest.raises(BadInputError, match="prompts must be a text"):
            check_prompts(bad)
