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


def paddle_generate_prefix_lm(model, sources: list[list[int]], geo: dict, **kw) -> list[list[int]]:
    """PaddleNLP's generate() on a prefix LM (UNIMO-text), fed the prefill runtime.seq2seq.prefix_lm_inputs
    builds (source, start token, token types, positions, 4-D mask) — what UNIMOTokenizer.gen_encode gives it."""
    import paddle
    from paddle2ort.runtime.seq2seq import prefix_lm_inputs
    ids, types, pos, mask, _ = prefix_lm_inputs(sources, geo["bos_id"], geo["pad_id"])
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
