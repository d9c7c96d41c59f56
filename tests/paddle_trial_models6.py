"""Trial builders of document-layout, CRF, rotary / discriminator / ERNIE-M and text-matching models paddle2ort had
not been tried on: `python tests/paddle_trial_models6.py NAME DIR`.

1. Document models with a bbox input [N, L, 4] of integer coordinates 0..1000 that index 2D position tables (x, y, and
   h = y1 - y0, w = x1 - x0):
   - `layoutxlm_ner` / `layoutxlm_cls`: PaddleNLP 2.8.1's LayoutXLMForTokenClassification / SequenceClassification,
     tiny, use_visual_backbone=False as PaddleOCR's VI-LayoutXLM SER (inputs input_ids, bbox, attention_mask,
     token_type_ids; relative 1D and 2D attention biases on);
   - `ernie_layout_ner` / `ernie_layout_cls`: PaddleNLP's ErnieLayoutForTokenClassification / SequenceClassification,
     tiny, its ResNet-101 visual backbone replaced by a 5-conv stride-32 net (7 x 7 x 32 features), inputs as
     PaddleNLP's ernie-layout export names them: input_ids, token_type_ids, position_ids, attention_mask, bbox and
     image, an int64 [N, 3, 224, 224] of raw 0..255 pixel values (the model subtracts pixel_mean 103.53..).
2. Token classifiers ending in CRF Viterbi decoding:
   - `crf_bigru`: PaddleNLP taskflow's lexical-analysis BiGruCrf (embedding, 2-layer BiGRU with sequence_length, Linear,
     paddle.text.ViterbiDecoder: the viterbi_decode op), inputs token_ids, length [N];
   - `crf_ernie`: PaddleNLP's waybill_ie ErnieCrfForTokenClassification (tiny ERNIE token classifier, LinearChainCrf
     without start/stop tags, paddle.text.ViterbiDecoder as waybill_ie imports it from Paddle 2.2 on), inputs
     input_ids, token_type_ids, seq_len [N]; `crf_ernie_unrolled`: the same decoding written out in ops paddle2onnx
     maps, over a static length of 32 (what a user does after viterbi_decode is refused).
   Each returns the label paths int64 [N, L].
3. `roformer_ner` / `roformer_cls`: PaddleNLP RoFormer (rotary position embeddings) token / sequence classifiers;
   `electra_disc`: ElectraDiscriminator with a per-token Sigmoid (replaced-token probability [N, L]);
   `ernie_m_cls` / `ernie_m_ner`: ERNIE-M (no token_type input; positions cumsum + 2 over a 514-row table; PaddleNLP
   2.8.1 masks ids == 0 although its pad id is 1), input_ids only as PaddleNLP's ernie-m export.
4. Text matching with two text inputs:
   - `simnet_bow`: PaddleNLP SimNet-like BoW (shared embedding with padding_idx 0, summed; tanh FC), inputs
     query_ids / title_ids [N, *] of independent lengths, output the cosine similarity [N];
   - `simnet_gru`: the same with a GRU encoder over query_seq_len / title_seq_len;
   - `sbert_cos`: Sentence-BERT-like: one tiny ERNIE encoder over query_input_ids / title_input_ids (and
     query_token_type_ids / title_token_type_ids), masked mean pooling, cosine similarity [N].

Random weights (seeded) with initializer_range 0.1 (tests/paddle_models.NLP_INIT_RANGE); builders print a check that
the outputs vary. Paddle and PaddleNLP are imported inside the builders.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from paddle_trial_models2 import _save

INIT = 0.1
TINY = dict(vocab_size=250, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=INIT)


def _ids(rng, n, length, vocab, pad=0):
    """Right-padded token ids (first row full), as a tokenizer pads a batch, and their lengths."""
    lengths = np.array([length] + [int(rng.integers(length // 2, length + 1)) for _ in range(n - 1)])
    ids = rng.integers(3, vocab, (n, length))
    ids[np.arange(length)[None] >= lengths[:, None]] = pad
    return ids.astype("int64"), lengths


def _boxes(rng, n, length, lengths):
    """Word boxes [x0, y0, x1, y1] in 0..1000 in reading order, [0, 0, 0, 0] on padding."""
    x0 = rng.integers(0, 900, (n, length))
    y0 = np.sort(rng.integers(0, 950, (n, length)), axis=1)
    b = np.stack([x0, y0, x0 + rng.integers(5, 100, (n, length)), y0 + rng.integers(5, 50, (n, length))], -1)
    b[np.arange(length)[None] >= lengths[:, None]] = 0
    return b.astype("int64")


def _spec(shape, dtype, name):
    import paddle
    return paddle.static.InputSpec(shape, dtype, name)


def _print(what, y):
    y = (y[0] if isinstance(y, (tuple, list)) else y).numpy()
    flat = y.reshape(-1, y.shape[-1]) if y.ndim > 1 and y.dtype.kind == "f" else y.reshape(1, -1)
    print(f"{what}: out {list(y.shape)} {y.dtype} std {y.std():.4g} range {y.min():.4g}..{y.max():.4g} "
          f"argmax {sorted(set(flat.argmax(-1).tolist()))[:10] if y.dtype.kind == 'f' else np.unique(y)[:10]}")


# --- 1. layout models


def build_layoutxlm(out: Path, head: str = "ner"):
    import paddle
    import paddlenlp.transformers as T

    paddle.seed(61)
    cfg = T.LayoutXLMConfig(**TINY, coordinate_size=8, shape_size=8, max_position_embeddings=514,
                            max_2d_position_embeddings=1024, type_vocab_size=1, has_relative_attention_bias=True,
                            has_spatial_attention_bias=True, rel_pos_bins=32, max_rel_pos=128, rel_2d_pos_bins=64,
                            max_rel_2d_pos=256, image_feature_pool_shape=[7, 7, 32], use_visual_backbone=False,
                            num_classes=7, pad_token_id=1)
    cls = T.LayoutXLMForTokenClassification if head == "ner" else T.LayoutXLMForSequenceClassification
    m = cls(cfg)
    m.eval()

    class Export(paddle.nn.Layer):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, bbox, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask,
                          token_type_ids=token_type_ids)[0]

    e = Export(m)
    rng = np.random.default_rng(61)
    ids, lengths = _ids(rng, 4, 24, 250, pad=1)
    mask = (np.arange(24)[None] < lengths[:, None]).astype("int64")
    with paddle.no_grad():
        y = e(paddle.to_tensor(ids), paddle.to_tensor(_boxes(rng, 4, 24, lengths)), paddle.to_tensor(mask),
              paddle.zeros([4, 24], "int64"))
    _print(f"layoutxlm_{head}", y)
    _save(e, out, [_spec([None, None], "int64", "input_ids"), _spec([None, None, 4], "int64", "bbox"),
                   _spec([None, None], "int64", "attention_mask"), _spec([None, None], "int64", "token_type_ids")])


def _tiny_backbone(channels: int = 32):
    """A stride-32 conv net for ERNIE-Layout's visual tokens (224 -> 7 x 7 x channels), in place of ResNet-101."""
    import paddle.nn as nn
    layers, cin = [], 3
    for cout in (8, 16, 16, 32, channels):
        layers += [nn.Conv2D(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2D(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers)


def build_ernie_layout(out: Path, head: str = "ner"):
    import paddle
    import paddlenlp.transformers as T
    from paddle_trial_models2 import _randomize_norms

    paddle.seed(62)
    cfg = T.ErnieLayoutConfig(**TINY, max_position_embeddings=514, max_2d_position_embeddings=1024,
                              type_vocab_size=100, has_relative_attention_bias=True, has_spatial_attention_bias=True,
                              rel_pos_bins=32, max_rel_pos=128, rel_2d_pos_bins=64, max_rel_2d_pos=256,
                              image_feature_pool_shape=[7, 7, 32], num_classes=7, pad_token_id=1)
    cls = T.ErnieLayoutForTokenClassification if head == "ner" else T.ErnieLayoutForSequenceClassification
    m = cls(cfg)
    m.ernie_layout.visual.backbone = _tiny_backbone(32)
    _randomize_norms(m.ernie_layout.visual.backbone, 62)
    m.eval()

    class Export(paddle.nn.Layer):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, token_type_ids, position_ids, attention_mask, bbox, image):
            return self.m(input_ids=input_ids, bbox=bbox, image=image, attention_mask=attention_mask,
                          token_type_ids=token_type_ids, position_ids=position_ids)[0]

    e = Export(m)
    rng = np.random.default_rng(62)
    ids, lengths = _ids(rng, 2, 24, 250, pad=1)
    mask = (np.arange(24)[None] < lengths[:, None]).astype("int64")
    img = rng.integers(0, 256, (2, 3, 224, 224)).astype("int64")
    with paddle.no_grad():
        y = e(paddle.to_tensor(ids), paddle.zeros([2, 24], "int64"), paddle.arange(24).tile([2, 1]),
              paddle.to_tensor(mask), paddle.to_tensor(_boxes(rng, 2, 24, lengths)), paddle.to_tensor(img))
    _print(f"ernie_layout_{head}", y)
    _save(e, out, [_spec([None, None], "int64", n) for n in ("input_ids", "token_type_ids", "position_ids",
                                                               "attention_mask")]
          + [_spec([None, None, 4], "int64", "bbox"), _spec([None, 3, 224, 224], "int64", "image")])


# --- 2. CRF token classifiers


def _transitions(crf, n: int, seed: int):
    """CRF transitions drawn as a trained tagger has them: allowed moves ~ N(0, 1), a few forbidden ones at -4."""
    rng = np.random.default_rng(seed)
    t = rng.normal(0, 1.0, (n, n))
    t[rng.random((n, n)) < 0.2] = -4.0
    crf.transitions.set_value(t.astype("float32"))


def build_crf_bigru(out: Path):
    import paddle
    from paddlenlp.taskflow.models.lexical_analysis_model import BiGruCrf

    paddle.seed(63)
    m = BiGruCrf(word_emb_dim=32, hidden_size=32, vocab_size=300, num_labels=9)
    m.word_embedding.weight.set_value(paddle.randn(m.word_embedding.weight.shape) * 0.5)   # Uniform(+-0.1): idle
    m.fc.weight.set_value(paddle.randn(m.fc.weight.shape) * 0.5)
    _transitions(m.crf, 11, 63)
    m.eval()

    class Export(paddle.nn.Layer):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, token_ids, length):
            return self.m(token_ids, length)

    e = Export(m)
    rng = np.random.default_rng(63)
    ids, lengths = _ids(rng, 4, 20, 300)
    with paddle.no_grad():
        y = e(paddle.to_tensor(ids), paddle.to_tensor(lengths.astype("int64")))
    _print("crf_bigru", y)
    _save(e, out, [_spec([None, None], "int64", "token_ids"), _spec([None], "int64", "length")])


def _viterbi_unrolled(emissions, transitions, lengths):
    """paddle.text.viterbi_decode(include_bos_eos_tag=False) written out over a static length L in ops paddle2onnx
    maps (max / argmax / take_along_axis / where): scores along the sequence, masked past each row's length, the
    path traced back, 0 past the length as the op pads. Returns the int64 paths [N, L]."""
    import paddle
    L = emissions.shape[1]
    real = paddle.arange(L).unsqueeze(0) < lengths.unsqueeze(1)                     # [N, L]
    alpha, hist = emissions[:, 0], []
    for i in range(1, L):
        s = alpha.unsqueeze(2) + transitions.unsqueeze(0)                            # [N, prev, next]
        hist.append(s.argmax(1))
        m = real[:, i:i + 1].astype("float32")
        alpha = m * (s.max(1) + emissions[:, i]) + (1 - m) * alpha
    cur = alpha.argmax(1)
    tags = [cur]
    for i in range(L - 1, 0, -1):
        prev = paddle.take_along_axis(hist[i - 1], cur.unsqueeze(1), 1).squeeze(1)
        cur = paddle.where(real[:, i], prev, cur)
        tags.append(cur)
    return paddle.stack(tags[::-1], 1) * real.astype("int64")


def build_crf_ernie(out: Path, decoder: str = "op"):
    """waybill_ie's ErnieCrfForTokenClassification: logits of an ERNIE token classifier, LinearChainCrf without
    start/stop tags, paddle.text.ViterbiDecoder (the viterbi_decode op, as waybill_ie imports it from Paddle 2.2 on)
    or, `decoder="unrolled"`, the same decoding written out over a static length of 32 (_viterbi_unrolled).
    paddlenlp.layers.ViterbiDecoder (the decoding as a Python loop) does not export with Paddle 3.3.1: dy2static
    refuses its cached `_batch_index` ("assignment to parameter '_batch_index' should be of type Parameter"), and
    without the caches its `if max_seq_len == 1` branch ("The output[4] of true_block&false_block must be dense
    tensor type"); a legacy-program save fails on matmul."""
    import paddle
    import paddlenlp.transformers as T
    from paddlenlp.layers import LinearChainCrf
    from paddle.text import ViterbiDecoder

    paddle.seed(64)
    cfg = T.ErnieConfig(**TINY, max_position_embeddings=128, type_vocab_size=2, num_labels=9, pad_token_id=0)
    ernie = T.ErnieForTokenClassification(cfg)
    ernie.classifier.weight.set_value(ernie.classifier.weight * 10)       # logits std ~1.5, as a trained tagger

    class ErnieCrf(paddle.nn.Layer):
        def __init__(self, ernie):
            super().__init__()
            self.ernie = ernie
            self.crf = LinearChainCrf(9, crf_lr=100, with_start_stop_tag=False)
            self.viterbi_decoder = ViterbiDecoder(self.crf.transitions, False)

        def forward(self, input_ids, token_type_ids, seq_len):
            logits = self.ernie(input_ids, token_type_ids=token_type_ids)
            if decoder == "unrolled":
                return _viterbi_unrolled(logits, self.crf.transitions, seq_len)
            _, prediction = self.viterbi_decoder(logits, seq_len)
            return prediction

    m = ErnieCrf(ernie)
    _transitions(m.crf, 9, 64)
    m.eval()
    rng = np.random.default_rng(64)
    ids, lengths = _ids(rng, 4, 32, 250)
    args = (paddle.to_tensor(ids), paddle.zeros([4, 32], "int64"), paddle.to_tensor(lengths.astype("int64")))
    with paddle.no_grad():
        y = m(*args)
        if decoder == "unrolled":
            m.eval()
            want = m.viterbi_decoder(m.ernie(args[0], token_type_ids=args[1]), args[2])[1]
            print(f"unrolled decoding == viterbi_decode: {bool((y == want).all())} (lengths {lengths.tolist()})")
    _print("crf_ernie" + ("_unrolled" if decoder == "unrolled" else ""), y)
    length = 32 if decoder == "unrolled" else None
    _save(m, out, [_spec([None, length], "int64", "input_ids"), _spec([None, length], "int64", "token_type_ids"),
                   _spec([None], "int64", "seq_len")])


# --- 3. RoFormer, ELECTRA discriminator, ERNIE-M


def _export_ids(model, names, post):
    """A Layer taking the id inputs `names` (input_ids, maybe token_type_ids) that returns post(model(...))."""
    from paddle_models import nlp_wrapper
    return nlp_wrapper(model, tuple(names), post)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else (out.logits if hasattr(out, "logits") else out)


def build_nlp(out: Path, family: str, head: str):
    """PaddleNLP's {RoFormer, Electra, ErnieM} heads, tiny, with the inputs their exports take."""
    import paddle
    import paddle.nn.functional as F
    import paddlenlp.transformers as T

    seed = {"RoFormer": 65, "Electra": 66, "ErnieM": 67}[family]
    paddle.seed(seed)
    extra = {"RoFormer": dict(max_position_embeddings=512, embedding_size=48, type_vocab_size=2, pad_token_id=0),
             "Electra": dict(max_position_embeddings=512, embedding_size=32, type_vocab_size=2, pad_token_id=0),
             "ErnieM": dict(max_position_embeddings=514, pad_token_id=1)}[family]
    cfg = getattr(T, f"{family}Config")(**TINY, **extra, num_labels=7, num_classes=7)
    post = _first
    if head == "disc":
        model = T.ElectraDiscriminator(cfg)
        w = model.discriminator_predictions.dense_prediction.weight
        w.set_value(w * 8)                                   # probabilities over 0..1, as a trained discriminator's
        post = lambda o: F.sigmoid(_first(o))                                            # noqa: E731
    else:
        kind = "TokenClassification" if head == "ner" else "SequenceClassification"
        model = getattr(T, f"{family}For{kind}")(cfg)
    model.eval()
    names = ("input_ids",) if family == "ErnieM" else ("input_ids", "token_type_ids")
    e = _export_ids(model, names, post)
    rng = np.random.default_rng(seed)
    ids, _ = _ids(rng, 4, 24, 250, pad=extra["pad_token_id"])
    with paddle.no_grad():
        y = e(paddle.to_tensor(ids)) if len(names) == 1 else e(paddle.to_tensor(ids), paddle.zeros([4, 24], "int64"))
    _print(f"{family}_{head}", y)
    _save(e, out, [_spec([None, None], "int64", n) for n in names])


# --- 4. text matching with two text inputs


def _cosine(a, b):
    import paddle.nn.functional as F
    return (F.normalize(a, axis=-1) * F.normalize(b, axis=-1)).sum(-1)


def build_simnet(out: Path, encoder: str = "bow"):
    """PaddleNLP SimNet (examples/text_matching/simnet): one embedding table shared by query and title (padding_idx
    0), a BoW encoder (sum of the embeddings, as paddlenlp.seq2vec.BoWEncoder) or a GRU over the sequence lengths
    (seq2vec.GRUEncoder: the last state), a tanh FC, and the cosine of the two vectors [N]."""
    import paddle
    import paddle.nn as nn

    paddle.seed(68)

    class SimNet(nn.Layer):
        def __init__(self, vocab=300, emb=32, hidden=32):
            super().__init__()
            self.embedder = nn.Embedding(vocab, emb, padding_idx=0)
            if encoder == "gru":
                self.gru = nn.GRU(emb, hidden)
            self.fc = nn.Linear(hidden if encoder == "gru" else emb, hidden)

        def encode(self, ids, lengths=None):
            x = self.embedder(ids)
            if encoder == "gru":
                _, h = self.gru(x, sequence_length=lengths)
                x = h[-1]
            else:
                x = x.sum(axis=1)
            return paddle.tanh(self.fc(x))

    class Bow(SimNet):
        def forward(self, query_ids, title_ids):
            return _cosine(self.encode(query_ids), self.encode(title_ids))

    class Gru(SimNet):
        def forward(self, query_ids, title_ids, query_seq_len, title_seq_len):
            return _cosine(self.encode(query_ids, query_seq_len), self.encode(title_ids, title_seq_len))

    m = (Gru if encoder == "gru" else Bow)()
    rng = np.random.default_rng(68)
    m.embedder.weight.set_value(rng.normal(0, 0.3, m.embedder.weight.shape).astype("float32"))
    m.eval()
    q, ql = _ids(rng, 6, 12, 300)
    t, tl = _ids(rng, 6, 30, 300)
    args = [paddle.to_tensor(q), paddle.to_tensor(t)]
    if encoder == "gru":
        args += [paddle.to_tensor(ql.astype("int64")), paddle.to_tensor(tl.astype("int64"))]
    with paddle.no_grad():
        y = m(*args)
    _print(f"simnet_{encoder}", y)
    specs = [_spec([None, None], "int64", "query_ids"), _spec([None, None], "int64", "title_ids")]
    if encoder == "gru":
        specs += [_spec([None], "int64", "query_seq_len"), _spec([None], "int64", "title_seq_len")]
    _save(m, out, specs)


def build_sbert(out: Path):
    """Sentence-BERT-like matching (PaddleNLP's semantic_indexing / sentence_transformers): one tiny ERNIE encoder
    over query and title, mean pooling over non-pad tokens, the cosine of the two embeddings [N]. Inputs as the
    sentence_transformers example names them."""
    import paddle
    import paddlenlp.transformers as T

    paddle.seed(69)
    cfg = T.ErnieConfig(**TINY, max_position_embeddings=128, type_vocab_size=2, pad_token_id=0)
    ernie = T.ErnieModel(cfg)

    class SBert(paddle.nn.Layer):
        def __init__(self, ernie):
            super().__init__()
            self.ernie = ernie

        def pooled(self, ids, types):
            seq = self.ernie(ids, token_type_ids=types)[0]
            mask = (ids != 0).astype("float32").unsqueeze(-1)
            return (seq * mask).sum(1) / mask.sum(1).clip(min=1.0)

        def forward(self, query_input_ids, query_token_type_ids, title_input_ids, title_token_type_ids):
            return _cosine(self.pooled(query_input_ids, query_token_type_ids),
                           self.pooled(title_input_ids, title_token_type_ids))

    m = SBert(ernie)
    m.eval()
    rng = np.random.default_rng(69)
    q, _ = _ids(rng, 6, 12, 250)
    t, _ = _ids(rng, 6, 30, 250)
    with paddle.no_grad():
        y = m(paddle.to_tensor(q), paddle.zeros([6, 12], "int64"), paddle.to_tensor(t), paddle.zeros([6, 30], "int64"))
    _print("sbert_cos", y)
    _save(m, out, [_spec([None, None], "int64", n) for n in ("query_input_ids", "query_token_type_ids",
                                                               "title_input_ids", "title_token_type_ids")])


BUILDERS = {
    "layoutxlm_ner": build_layoutxlm,
    "layoutxlm_cls": lambda out: build_layoutxlm(out, "cls"),
    "ernie_layout_ner": build_ernie_layout,
    "ernie_layout_cls": lambda out: build_ernie_layout(out, "cls"),
    "crf_bigru": build_crf_bigru,
    "crf_ernie": build_crf_ernie,
    "crf_ernie_unrolled": lambda out: build_crf_ernie(out, "unrolled"),
    "roformer_ner": lambda out: build_nlp(out, "RoFormer", "ner"),
    "roformer_cls": lambda out: build_nlp(out, "RoFormer", "cls"),
    "electra_disc": lambda out: build_nlp(out, "Electra", "disc"),
    "ernie_m_cls": lambda out: build_nlp(out, "ErnieM", "cls"),
    "ernie_m_ner": lambda out: build_nlp(out, "ErnieM", "ner"),
    "simnet_bow": build_simnet,
    "simnet_gru": lambda out: build_simnet(out, "gru"),
    "sbert_cos": build_sbert,
}

if __name__ == "__main__":
    kind, dest = sys.argv[1], Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    BUILDERS[kind](dest)
