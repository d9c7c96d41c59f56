"""Paddle-side seq2seq helpers (worker only): load a PaddleNLP encoder-decoder, its adapter, the export wrappers
run eagerly behind runtime.seq2seq's contracts (recording every call for the gate), and Paddle's own generate()."""
from __future__ import annotations

import json
import os

import numpy as np

from .families import FAMILIES, adapter, family_name


def load_seq2seq(model_dir: str):
    """-> (model in eval mode, family name, adapter module, architecture)."""
    import paddle
    import paddlenlp.transformers as T

    paddle.set_device("cpu")
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    name = family_name(cfg)
    fam = FAMILIES[name]
    model = getattr(T, fam.model_class).from_pretrained(model_dir, dtype="float32")
    model.eval()
    return model, name, adapter(name), (cfg.get("architectures") or [fam.model_class])[0]


class EagerSeq2Seq:
    """The wrappers run eagerly as (encode, decode) callables; `record` lists receive each call's inputs and
    outputs (the gate's samples and Paddle's reference)."""

    def __init__(self, encoder, decoder, enc_record: list | None = None, dec_record: list | None = None):
        self.encoder, self.decoder, self.enc_record, self.dec_record = encoder, decoder, enc_record, dec_record

    def encode(self, ids, mask):
        import paddle
        with paddle.no_grad():
            cross = self.encoder(paddle.to_tensor(ids), paddle.to_tensor(mask)).numpy()
        if self.enc_record is not None:
            self.enc_record.append({"input_ids": np.array(ids), "attention_mask": np.array(mask)})
        return cross

    def decode(self, ids, enc_mask, past, cross):
        import paddle
        arrays = (ids, enc_mask, past, cross)
        with paddle.no_grad():
            logits, present = self.decoder(*(paddle.to_tensor(np.ascontiguousarray(a)) for a in arrays))
        if self.dec_record is not None:
            from .wrapper import DECODER_INPUTS
            self.dec_record.append(dict(zip(DECODER_INPUTS, (np.array(a) for a in arrays))))
        return logits.numpy(), present.numpy()


TIE_EPS = 1e-3     # the near-tie rule's logit epsilon (tests/test_serving.py TIE_EPS): a gap this small may flip


def tie_gaps(generated: list[list[int]], reference: list[list[int]], step_logits: list, eos: int) -> list:
    """Each greedy row's agreement with the reference: None where equal, else the logit gap, in the logits of our
    run at the step where it first leaves the reference (step_logits[k] [B, V]: the logits that chose token k; an
    ended row chose eos), between its token and the reference's. A gap within TIE_EPS is a near-tie."""
    out = []
    for b, (g, r) in enumerate(zip(generated, reference)):
        k = next((j for j in range(max(len(g), len(r))) if j >= len(g) or j >= len(r) or g[j] != r[j]), None)
        if k is None:
            out.append(None)
            continue
        lg = np.asarray(step_logits[k])[b]
        x, y = (seq[k] if k < len(seq) else eos for seq in (g, r))
        out.append(abs(float(lg[x]) - float(lg[y])))
    return out


def paddle_generate(model, sources: list[list[int]], pad_id: int, **kw) -> list[list[int]]:
    """PaddleNLP's own generate() on right-padded sources (its defaults otherwise): generated ids a row, cut at
    the first eos (the eos and any padding dropped)."""
    import paddle
    from paddle2ort.runtime.seq2seq import right_pad
    ids, mask = right_pad(sources, pad_id)
    eos = model.config.eos_token_id
    with paddle.no_grad():
        out, _ = model.generate(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask),
                                eos_token_id=eos, pad_token_id=pad_id, use_fast=False, **kw)
    rows = []
    for r in out.numpy().tolist():
        rows.append(r[:r.index(eos)] if eos in r else r)
    return rows


def paddle_generate_prefix_lm(model, sources: list[list[int]], geo: dict, role_ids=None, **kw) -> list[list[int]]:
    """PaddleNLP's generate() on a prefix LM (UNIMO-text), fed the prefill runtime.seq2seq.prefix_lm_inputs
    builds (source, start token, token types, positions, 4-D mask) — what UNIMOTokenizer.gen_encode gives it;
    role_ids (UnifiedTransformer: one row a source, runtime.seq2seq.role_rows' rules) left-padded with role 0 as
    its tokenizer pads them; None: generate() without role_ids."""
    import paddle
    from paddle2ort.runtime.seq2seq import prefix_lm_inputs, role_rows
    ids, types, pos, mask, _ = prefix_lm_inputs(sources, geo["bos_id"], geo["pad_id"])
    if role_ids is not None:
        roles = np.zeros(ids.shape, np.int64)
        for b, r in enumerate(role_rows(role_ids, sources, geo.get("role_type_size"))):
            roles[b, ids.shape[1] - len(r):] = r
        kw["role_ids"] = paddle.to_tensor(roles)
    eos = geo["eos_id"]
    with paddle.no_grad():
        out, _ = model.generate(input_ids=paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(types),
                                position_ids=paddle.to_tensor(pos), attention_mask=paddle.to_tensor(mask),
                                eos_token_id=eos, pad_token_id=geo["pad_id"], use_fast=False, **kw)
    return [r[:r.index(eos)] if eos in r else r for r in out.numpy().tolist()]


def paddle_generate_any(model, family: str, sources: list[list[int]], geo: dict, options: dict) -> list[list[int]]:
    if FAMILIES[family].kind == "prefix-lm":
        return getattr(adapter(family), "paddle_generate", paddle_generate_prefix_lm)(model, sources, geo, **options)
    return paddle_generate(model, sources, geo["pad_id"], **options)
