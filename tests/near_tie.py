"""The near-tie rule for tests that compare the tokens of two computation paths (another precision, graph, engine,
batch or ISA: onnxruntime/MLAS picks other kernels on AVX-512, VNNI or AMX and rounds otherwise).

Greedy: the tokens are identical, except that a row may leave the reference first at a step whose top-2 logit margin
(top1 - top2 of the REFERENCE path's logits at that step, on the reference's own path) is <= eps; after that step
anything goes. Beam search: a row may differ only where the reference run's smallest decisive margin (NearTieBeams)
is <= eps. Each test picks eps (one comment line) from how far its two paths' logits may part."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def first_divergence(got: Sequence[int], want: Sequence[int]) -> int | None:
    """The first step where got and want differ (one ending earlier counts), or None when equal."""
    return next((j for j in range(max(len(got), len(want))) if j >= len(got) or j >= len(want) or got[j] != want[j]),
                None)


def same_up_to_a_near_tie(got: Sequence[int], want: Sequence[int], margins: Sequence[float], eps: float) -> bool:
    """got == want, or got leaves want first at a step whose reference margin is within eps."""
    k = first_divergence(got, want)
    return k is None or (k < len(margins) and margins[k] <= eps)


def clear_divergences(got: Sequence[Sequence[int]], want: Sequence[Sequence[int]],
                      margins: Sequence[Sequence[float]], eps: float) -> list[tuple[int, int, float]]:
    """Rows breaking the rule: [(row, step, reference margin there)] (inf: past the reference's end)."""
    assert len(got) == len(want) == len(margins), (len(got), len(want), len(margins))
    bad = []
    for i, (g, w, m) in enumerate(zip(got, want, margins)):
        if not same_up_to_a_near_tie(g, w, m, eps):
            k = first_divergence(g, w)
            bad.append((i, k, float(m[k]) if k < len(m) else float("inf")))
    return bad


def top2_margins(logits) -> np.ndarray:
    """top1 - top2 along the last axis."""
    top = np.sort(np.asarray(logits, np.float32), axis=-1)
    return top[..., -1] - top[..., -2]


def teacher_forced_logits(logits_of: Callable[[list[int]], np.ndarray], prompt: Sequence[int],
                          ids: Sequence[int]) -> np.ndarray:
    """The reference's logits [len(ids), V] at each of its greedy steps, on its own path: one forward over
    prompt + ids[:-1] (logits_of(tokens) -> float [len(tokens), V])."""
    if not ids:
        return np.zeros((0, 0), np.float32)
    return np.asarray(logits_of(list(prompt) + list(ids[:-1])), np.float32)[len(prompt) - 1:]


def path_margins(logits: np.ndarray, ids: Sequence[int], eps: float) -> list[float]:
    """The reference's top-2 margins from its logits [len(ids), V] at each step of its greedy tokens `ids` (no logits
    processors). Checks that the logits belong to that path: wherever the margin exceeds eps, the argmax is the
    token it chose."""
    if not len(ids):
        return []
    lg = np.asarray(logits, np.float32)
    assert lg.shape[0] == len(ids), (lg.shape, len(ids))
    m = top2_margins(lg)
    off = [(k, int(lg[k].argmax()), t, float(m[k])) for k, t in enumerate(ids) if m[k] > eps and lg[k].argmax() != t]
    assert not off, f"the logits are not on the reference's path (step, argmax, token, margin): {off}"
    return m.tolist()


def teacher_forced_margins(logits_of: Callable[[list[int]], np.ndarray], prompt: Sequence[int], ids: Sequence[int],
                           eps: float) -> list[float]:
    """path_margins of one forward over prompt + ids[:-1] (teacher_forced_logits)."""
    return path_margins(teacher_forced_logits(logits_of, prompt, ids), ids, eps)


def stepped_logits(model, prompts: Sequence[Sequence[int]], outs: Sequence[Sequence[int]],
                   pad_id: int = 0) -> list[np.ndarray]:
    """A decoder's logits on the reference path the way it decodes (any runtime.generation Decoder, or a
    graph-contract model): the prompts' pass, then one step a token of `outs` fed back (a row past its end is fed
    pad_id). -> per row float32 [len(out), V]."""
    from paddle2ort.runtime.generation import advance, as_decoder
    n = max(map(len, outs), default=0)
    if not n:
        return [np.zeros((0, 0), np.float32) for _ in outs]
    dec = as_decoder(model, pad_id)
    dec.start(len(prompts))
    logits, rows = dec.append([list(p) for p in prompts], np.zeros(len(prompts), np.int64), n + 1)
    # np.array: a copy (a step may return its one bound logits buffer)
    got = [np.array(dec.host(logits if rows is None else logits[rows]), np.float32).reshape(len(prompts), -1)]
    for j in range(n - 1):
        advance(dec, np.array([o[j] if j < len(o) else pad_id for o in outs], np.int64))
        logits, rows = dec.step(None)
        got.append(np.array(dec.host(logits if rows is None else logits[rows]), np.float32).reshape(len(prompts), -1))
    lg = np.stack(got, 1)
    return [lg[b, :len(o)] for b, o in enumerate(outs)]


# Paddle's logits on its own greedy path (convert.llm.reference.paddle_greedy's model: dygraph, full recompute), one
# forward over prompt + ids[:-1] a row, in a child (Paddle stays out of the test process); per step only what the rule
# needs: (argmax, top1 - top2), and each row's logit range
PADDLE_MARGINS = r"""
import json, sys
import numpy as np, paddle
from paddle2ort.convert.llm.eager import load_llm
model, _, _ = load_llm(sys.argv[1])
out = []
with paddle.no_grad():
    for prompt, ids in json.loads(sys.argv[2]):
        lg = model(paddle.to_tensor([prompt + ids[:-1]]), return_dict=False)
        lg = (lg[0] if isinstance(lg, (tuple, list)) else lg)[0, len(prompt) - 1:].numpy().astype(np.float32)
        top = np.sort(lg, -1)
        out.append({"argmax": lg.argmax(-1).tolist(), "margins": (top[:, -1] - top[:, -2]).tolist(),
                    "range": float(lg.max() - lg.min())})
print("MARGINS " + json.dumps(out))
"""


def paddle_margins(model_dir, prompts: Sequence[Sequence[int]], wants: Sequence[Sequence[int]],
                   rel_eps: float) -> tuple[list[list[float]], float]:
    """The near-tie rule's inputs for a Paddle greedy reference (wants = paddle_greedy's tokens): (per row the
    margins on Paddle's path, eps = rel_eps x Paddle's logit range). Checks, as path_margins, that they are on that
    path."""
    import json

    from conftest import run_python
    rows = [[list(p), list(w)] for p, w in zip(prompts, wants) if w]
    text = run_python("-c", PADDLE_MARGINS, str(model_dir), json.dumps(rows), stdout=True)
    got = iter(json.loads(next(ln for ln in text.splitlines()[::-1] if ln.startswith("MARGINS "))[8:]))
    res = [next(got) if w else {"argmax": [], "margins": [], "range": 0.0} for w in wants]
    eps = rel_eps * max(r["range"] for r in res)
    off = [(i, k, a, t, m) for i, (r, w) in enumerate(zip(res, wants))
           for k, (a, t, m) in enumerate(zip(r["argmax"], w, r["margins"])) if m > eps and a != t]
    assert not off, f"Paddle's margins are not on its path (row, step, argmax, token, margin): {off}"
    return [r["margins"] for r in res], eps


def greedy_reference(model, prompts: Sequence[Sequence[int]], cfg, pad_id: int,
                     rel_eps: float) -> tuple[list[list[int]], list[list[float]], float]:
    """A reference run and the rule's inputs from it: (its greedy tokens (runtime.generation.generate, no logits
    processors), per row its margins on that path (stepped_logits: the same batch, decoded the same way), eps =
    rel_eps x its logit range there). A row cut by a stop token gets the margin of the step that chose it."""
    from paddle2ort.runtime.generation import generate
    assert not cfg.do_sample and cfg.num_beams == 1 and cfg.repetition_penalty == 1.0 and not cfg.no_repeat_ngram_size \
        and not (cfg.min_new_tokens and cfg.stop_token_ids) and cfg.forced_bos_token_id is None \
        and cfg.forced_eos_token_id is None, f"plain greedy only: {cfg}"
    want = generate(model, prompts, cfg, pad_id)
    stops = list(cfg.stop_token_ids)
    # a row cut by a stop: one more step, the one that chose it (the token put there is never fed)
    full = [w + stops[:1] if stops and len(w) < cfg.max_new_tokens else w for w in want]
    logits = stepped_logits(model, prompts, full, pad_id)
    eps = rel_eps * max(float(np.ptp(lg)) for lg in logits if lg.size)
    margins = []
    for lg, w, f in zip(logits, want, full):
        m = path_margins(lg[:len(w)], w, eps)
        if len(f) > len(w):                        # the stop step: the top choice is one of the stop ids
            top = np.sort(lg[len(w)])
            assert lg[len(w)].argmax() in stops or top[-1] - top[-2] <= eps, (w, stops)
            m.append(float(top[-1] - top[-2]))
        margins.append(m)
    return want, margins, eps


def fused_logits_of(dec, pad_id: int = 0) -> Callable[[list[int]], np.ndarray]:
    """logits_of for a FusedDecoder: its prompt graph over the tokens on a fresh one-row state."""
    return lambda tokens: dec.prompt_logits(dec.state(1), [list(tokens)], pad_id)[0]


class NearTieBeams:
    """Beam search's decisive margins per prompt of the runs inside the `with` block (benchmarks.seq2seq.BeamMargins:
    at each step the gap at the K-th candidate and at the K-th continuing one; at the end the gap between the two best
    closed hypotheses), plus at the end the gap between the two best hypotheses of all, live ones included (a run
    without stop tokens picks among its live beams). margins(): one a prompt, in order."""

    def __init__(self):
        from paddle2ort.benchmarks.seq2seq import BeamMargins
        self._rec = BeamMargins()
        self._cfg = None

    def __enter__(self):
        import paddle2ort.runtime.generation as G
        self._rec.__enter__()
        inner = G.advance_beams

        def wrapped(beams, cand_s, cand_i, vocab, cfg, step, stops):
            self._cfg = cfg
            return inner(beams, cand_s, cand_i, vocab, cfg, step, stops)

        G.advance_beams = wrapped
        return self

    def __exit__(self, *exc):
        self._rec.__exit__(*exc)

    def margins(self) -> list[float]:
        from paddle2ort.runtime.generation import gnmt_score
        order, cfg = list(self._rec.order), self._cfg
        out = self._rec.margins()
        for i, b in enumerate(order):
            if cfg.beam_rules == "paddlenlp":
                live = [] if b.finished else [gnmt_score(s, len(q), cfg.length_penalty)
                                              for s, q in zip(b.scores, b.seqs)]
            else:
                live = [s / max(len(q), 1) ** cfg.length_penalty for s, q in zip(b.scores, b.seqs)]
            hyps = sorted([float(s) for s, _ in b.done] + [float(s) for s in live if s > -1e30], reverse=True)
            if len(hyps) > 1:
                out[i] = min(out[i], hyps[0] - hyps[1])
        return out


def beam_clear_divergences(got: Sequence[Sequence[int]], want: Sequence[Sequence[int]], margins: Sequence[float],
                           eps: float) -> list[tuple[int, float]]:
    """Beam rows breaking the rule: [(row, the reference's smallest decisive margin)] of rows that differ."""
    assert len(got) == len(want) == len(margins), (len(got), len(want), len(margins))
    return [(i, float(m)) for i, (g, w, m) in enumerate(zip(got, want, margins)) if list(g) != list(w) and m > eps]
