"""Tiny PaddleNLP task heads beyond sequence classification: `python tests/paddle_task_models.py KIND OUT_DIR`.

Each is built as a user exports a fine-tuned model for deployment (paddle.jit.save with int64 InputSpecs named after
forward's arguments), at a tiny size with random weights (tests/paddle_models.TINY_NLP: hidden 32, 2 layers, 4 heads,
vocabulary 120, pad id 0; initialized at range INIT_RANGE): token classification (its logits, or as PaddleNLP's
token-classification export deploys it, the argmax labels), extractive question answering (start / end logits), UIE
and UIE-M (sigmoid start / end probabilities; `uie_saturated`: all of them near 0), masked LM, sentence embeddings
(ERNIE's pooled output, mean pooling over the tokens, a SimCSE-style L2-normalized [CLS] vector) and a multi-label
classifier (a sigmoid per label); ERNIE, BERT and RoBERTa where the head is per family. tests/test_task_heads.py
converts them. Run as a child process (as tests/paddle_models.py) so Paddle's static-mode switches never leak into
the test process.
"""
from __future__ import annotations

import sys
from pathlib import Path

from paddle_models import NLP_INIT_RANGE as INIT_RANGE, TINY_NLP, _logits, _save
from paddle_models import forward_names as _names, id_specs as _specs, nlp_wrapper as _wrapper

FAMILIES = ("Ernie", "Bert", "Roberta")
NER_LABELS = 7                 # B/I of PER, ORG, LOC and O
MULTI_LABELS = 6


def _config(family: str, **more):
    import paddlenlp.transformers as T
    return getattr(T, f"{family}Config")(**{**TINY_NLP, "initializer_range": INIT_RANGE, **more})


def build_token_classification(out: Path, family: str, argmax: bool = False):
    """{family}ForTokenClassification, 7 BIO labels: logits [B, T, 7]; argmax: the labels int64 [B, T] (PaddleNLP's
    token-classification deployment exports argmax(logits, -1))."""
    import paddle
    import paddlenlp.transformers as T

    paddle.seed(11)
    model = getattr(T, f"{family}ForTokenClassification")(_config(family, num_labels=NER_LABELS,
                                                                  num_classes=NER_LABELS))
    model.eval()
    post = (lambda o: paddle.argmax(_logits(o), axis=-1)) if argmax else _logits
    if family == "Roberta":
        # RobertaForTokenClassification.forward does not go through dy2static in PaddleNLP 2.8.1 / Paddle 3.3.1
        # (`len(output) == 1` on an UndefinedVar): its backbone and classifier are called as that forward does
        model = _RobertaTokens(model)
    _save(_wrapper(model, _names(model), post), out, _specs(_names(model)))


def _RobertaTokens(model):
    import paddle

    class RobertaTokens(paddle.nn.Layer):
        def __init__(self, m):
            super().__init__()
            self.roberta, self.classifier = m.roberta, m.classifier

        def forward(self, input_ids, token_type_ids=None):
            return self.classifier(self.roberta(input_ids, token_type_ids=token_type_ids)[0])

    return RobertaTokens(model).eval()


def build_question_answering(out: Path, family: str):
    """{family}ForQuestionAnswering: start_logits and end_logits [B, T]."""
    import paddle
    import paddlenlp.transformers as T

    paddle.seed(12)
    model = getattr(T, f"{family}ForQuestionAnswering")(_config(family))
    model.eval()

    def post(o):
        return (o[0], o[1]) if isinstance(o, (tuple, list)) else (o.start_logits, o.end_logits)

    _save(_wrapper(model, _names(model), post), out, _specs(_names(model)))


def build_uie(out: Path, saturated: bool = False):
    """paddlenlp.transformers.UIE (ERNIE + sigmoid start / end pointers) exported as PaddleNLP's uie export_model.py
    does: inputs input_ids, token_type_ids, position_ids, attention_mask; outputs start_prob, end_prob [B, T].
    saturated: the pointers' biases at -7 and weights at PaddleNLP's initializer range, as a trained UIE's
    probabilities on text without its prompt's answer (every one ~1e-3)."""
    import paddle
    from paddlenlp.transformers import UIE

    paddle.seed(13)
    model = UIE(_config("Ernie"))
    model.eval()
    if saturated:
        for lin in (model.linear_start, model.linear_end):
            lin.weight.set_value(lin.weight * (0.02 / INIT_RANGE))
            lin.bias.set_value(paddle.full(lin.bias.shape, -7.0, "float32"))
    names = ("input_ids", "token_type_ids", "position_ids", "attention_mask")
    _save(_wrapper(model, names, lambda o: (o[0], o[1])), out, _specs(names))


def build_uie_m(out: Path):
    """paddlenlp.transformers.UIEM (multilingual UIE on ERNIE-M: no token types) exported as PaddleNLP's uie-m
    export does: inputs input_ids, position_ids; outputs start_prob, end_prob [B, T]."""
    import paddle
    from paddlenlp.transformers import UIEM

    paddle.seed(13)
    model = UIEM(_config("ErnieM"))
    model.eval()
    names = ("input_ids", "position_ids")
    _save(_wrapper(model, names, lambda o: (o[0], o[1])), out, _specs(names))


def build_masked_lm(out: Path, family: str):
    """{family}ForMaskedLM: prediction scores [B, T, vocab] (the decoder tied to the word embeddings)."""
    import paddle
    import paddlenlp.transformers as T

    paddle.seed(14)
    model = getattr(T, f"{family}ForMaskedLM")(_config(family))
    model.eval()
    _save(_wrapper(model, _names(model), _logits), out, _specs(_names(model)))


def build_embedding(out: Path, style: str):
    """Sentence embeddings of ErnieModel: `pooled` its tanh pooler output [B, H] (text matching), `simcse` the
    L2-normalized [CLS] vector of its last layer (PaddleNLP's SimCSE export)."""
    import paddle
    from paddlenlp.transformers import ErnieModel

    paddle.seed(15)
    model = ErnieModel(_config("Ernie"))
    model.eval()
    if style == "pooled":
        post = lambda o: o[1]                                                       # noqa: E731
        _save(_wrapper(model, ("input_ids", "token_type_ids"), post), out, _specs(("input_ids", "token_type_ids")))
        return
    if style == "simcse":
        post = lambda o: paddle.nn.functional.normalize(o[0][:, 0], axis=-1)       # noqa: E731
        _save(_wrapper(model, ("input_ids", "token_type_ids"), post), out, _specs(("input_ids", "token_type_ids")))
        return

    class MeanPool(paddle.nn.Layer):      # sentence-transformers' pooling: the mean over the non-pad tokens
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, token_type_ids):
            h = self.m(input_ids=input_ids, token_type_ids=token_type_ids)[0]
            mask = (input_ids != 0).astype("float32").unsqueeze(-1)
            return paddle.sum(h * mask, axis=1) / paddle.clip(paddle.sum(mask, axis=1), min=1e-9)

    _save(MeanPool(model), out, _specs(("input_ids", "token_type_ids")))


def build_multi_label(out: Path):
    """ErnieForSequenceClassification with 6 labels, each its own sigmoid (PaddleNLP's multi_label export)."""
    import paddle
    from paddlenlp.transformers import ErnieForSequenceClassification

    paddle.seed(16)
    model = ErnieForSequenceClassification(_config("Ernie", num_labels=MULTI_LABELS, num_classes=MULTI_LABELS))
    model.eval()
    _save(_wrapper(model, ("input_ids", "token_type_ids"), lambda o: paddle.nn.functional.sigmoid(_logits(o))),
          out, _specs(("input_ids", "token_type_ids")))


BUILDERS = {"uie": build_uie, "uie_saturated": lambda out: build_uie(out, saturated=True), "uie_m": build_uie_m,
            "embed_pooled": lambda out: build_embedding(out, "pooled"),
            "embed_simcse": lambda out: build_embedding(out, "simcse"),
            "embed_mean": lambda out: build_embedding(out, "mean"), "multi_label": build_multi_label}
for _fam in FAMILIES:
    _f = _fam.lower()
    BUILDERS[f"ner_{_f}"] = lambda out, fam=_fam: build_token_classification(out, fam)
    BUILDERS[f"ner_argmax_{_f}"] = lambda out, fam=_fam: build_token_classification(out, fam, argmax=True)
    BUILDERS[f"qa_{_f}"] = lambda out, fam=_fam: build_question_answering(out, fam)
    BUILDERS[f"mlm_{_f}"] = lambda out, fam=_fam: build_masked_lm(out, fam)


if __name__ == "__main__":
    kind, dest = sys.argv[1], Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    BUILDERS[kind](dest)
