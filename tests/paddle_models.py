"""Tiny Paddle models built inline for the tests: `python tests/paddle_models.py KIND OUT_DIR`.

Run as a child process so Paddle's static-mode switches never leak into the test process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _save(layer, out: Path, specs):
    import paddle
    layer.eval()
    paddle.jit.save(layer, str(out / "model"), input_spec=specs)


def build_mlp(out: Path):
    import paddle

    class MLP(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.l1 = paddle.nn.Linear(16, 64)
            self.l2 = paddle.nn.Linear(64, 5)

        def forward(self, x):
            return paddle.nn.functional.softmax(self.l2(paddle.nn.functional.gelu(self.l1(x))) * 4.0)

    paddle.seed(1)
    _save(MLP(), out, [paddle.static.InputSpec([None, 16], "float32", "x")])


def build_encoder(out: Path):
    import paddle

    class Encoder(paddle.nn.Layer):
        def __init__(self, vocab=50, d=32):
            super().__init__()
            self.emb = paddle.nn.Embedding(vocab, d)
            layer = paddle.nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0)
            self.enc = paddle.nn.TransformerEncoder(layer, num_layers=2)
            self.head = paddle.nn.Linear(d, 3)

        def forward(self, input_ids):
            h = self.enc(self.emb(input_ids))
            return self.head(h.mean(axis=1))

    paddle.seed(2)
    _save(Encoder(), out, [paddle.static.InputSpec([None, None], "int64", "input_ids")])


def build_detector(out: Path, im_shape: bool = False):
    """A tiny anchor-free detector ending in Paddle's multiclass NMS (as PicoDet / PP-YOLOE deploy): conv features
    -> per-cell class scores and box distances -> boxes in input pixels / scale_factor -> multiclass_nms3
    (outputs: the [N, 6] detection list and the kept candidates' indices); a 64x64 image, batch 1.

    im_shape: PaddleDetection's full deploy feed (as PP-YOLOE / Faster R-CNN exports): inputs im_shape, image and
    scale_factor, the boxes then moved by 1% of the original image's size (im_shape / scale_factor: a wrong im_shape
    shows in the boxes). Not clipped to the image as PaddleDetection does: paddle2onnx 2.1.0 converts that broadcast
    minimum/maximum into a graph whose detections differ from Paddle's (58 of 60 missed); and a fixed size (a
    dynamic height and width gave onnxruntime an empty detection list)."""
    import paddle

    class Detector(paddle.nn.Layer):
        def __init__(self, classes):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 16, 3, stride=4, padding=1)
            self.cls = paddle.nn.Conv2D(16, classes, 1)
            self.reg = paddle.nn.Conv2D(16, 4, 1)

        def detect(self, image, scale_factor, shift=None):
            f = paddle.nn.functional.relu(self.conv(image))
            h, w = f.shape[2], f.shape[3]
            scores = paddle.nn.functional.sigmoid(self.cls(f)).flatten(2)                  # [N, C, HW]
            d = paddle.exp(self.reg(f) * 0.2).flatten(2).transpose([0, 2, 1]) * 4        # [N, HW, 4]
            ys, xs = paddle.meshgrid(paddle.arange(h, dtype="float32"), paddle.arange(w, dtype="float32"))
            c = paddle.stack([xs.flatten(), ys.flatten()], -1) * 4 + 2                      # cell centres
            boxes = paddle.concat([c - d[..., :2], c + d[..., 2:]], -1)
            boxes = boxes / paddle.concat([scale_factor[:, ::-1], scale_factor[:, ::-1]], -1).unsqueeze(1)
            if shift is not None:
                boxes = boxes + paddle.concat([shift, shift], -1).unsqueeze(1)
            out, index, _ = paddle._C_ops.multiclass_nms3(boxes, scores, None, 0.05, 200, 30, 0.5, True, 1.0, -1)
            return out, index

    class Plain(Detector):
        def forward(self, image, scale_factor):
            return self.detect(image, scale_factor)

    class WithShape(Detector):
        def forward(self, im_shape, image, scale_factor):
            return self.detect(image, scale_factor, 0.01 * (im_shape / scale_factor)[:, ::-1])   # 1% of w, h

    seed = 4 if im_shape else 3
    paddle.seed(seed)
    det = WithShape(3) if im_shape else Plain(4)
    rng = np.random.default_rng(seed)
    for name, p in det.named_parameters():        # trained biases are not zero (Paddle initializes them so)
        if name.endswith("bias"):
            p.set_value(rng.uniform(-0.5, 0.5, p.shape).astype(np.float32))
    specs = [paddle.static.InputSpec([1, 3, 64, 64], "float32", "image"),
             paddle.static.InputSpec([1, 2], "float32", "scale_factor")]
    _save(det, out, ([paddle.static.InputSpec([1, 2], "float32", "im_shape")] if im_shape else []) + specs)


def _save_ernie(out: Path, seed: int, **cfg):
    """PaddleNLP's [CLS]-pooled ErnieForSequenceClassification (3 labels, no dropout) of config `cfg`, random
    weights from `seed`, saved with inputs input_ids and token_type_ids (its mask built from pad ids)."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    paddle.seed(seed)
    model = ErnieForSequenceClassification(ErnieConfig(**cfg, num_labels=3, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0))

    class Wrapper(paddle.nn.Layer):        # InputSpec names must equal forward's argument names
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, token_type_ids):
            return self.m(input_ids=input_ids, token_type_ids=token_type_ids)

    _save(Wrapper(model), out, [paddle.static.InputSpec([None, None], "int64", "input_ids"),
                                paddle.static.InputSpec([None, None], "int64", "token_type_ids")])


def build_segmenter(out: Path, labels_dtype: str = "int32"):
    """A PaddleSeg-style semantic segmenter exported as PaddleSeg exports by default (`--output_op argmax`): convs,
    a per-pixel Linear head over the channels (a MatMul for dynamic INT8), bilinear upsampling to the input's size,
    then the label map argmax(axis=1, keepdim) [N, 1, H, W]."""
    import paddle

    class Segmenter(paddle.nn.Layer):
        def __init__(self, classes: int = 5):
            super().__init__()
            self.c1 = paddle.nn.Conv2D(3, 16, 3, padding=1)
            self.bn = paddle.nn.BatchNorm2D(16)
            self.c2 = paddle.nn.Conv2D(16, 32, 3, stride=2, padding=1)
            self.head = paddle.nn.Linear(32, classes)

        def forward(self, x):
            y = paddle.nn.functional.relu(self.bn(self.c1(x)))
            y = paddle.nn.functional.relu(self.c2(y))
            y = self.head(y.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])
            y = paddle.nn.functional.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)
            return paddle.argmax(y, axis=1, keepdim=True, dtype=labels_dtype)

    paddle.seed(3)
    seg = Segmenter()
    rng = np.random.default_rng(3)      # trained-looking biases and statistics (zero biases would make a scaled
    for p in (seg.c1.bias, seg.c2.bias, seg.head.bias, seg.bn.bias, seg.bn._mean):      # weight invisible)
        p.set_value(rng.normal(0, 0.3, p.shape).astype("float32"))
    seg.bn._variance.set_value(rng.uniform(0.5, 2.0, seg.bn._variance.shape).astype("float32"))
    _save(seg, out, [paddle.static.InputSpec([None, 3, 48, 48], "float32", "x")])


def build_pyramid_pool(out: Path, size: int = 256):
    """A Fast-SCNN-like pyramid pooling: a stride-32 feature map adaptively pooled to 1, 2, 3 and 6 bins, upsampled
    and summed, exported at a fixed size (adaptive pooling needs one in paddle2onnx)."""
    import paddle
    F = paddle.nn.functional

    class Pyramid(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.down = paddle.nn.Conv2D(3, 8, 32, stride=32)
            self.pools = paddle.nn.LayerList([paddle.nn.AdaptiveAvgPool2D(b) for b in (1, 2, 3, 6)])

        def forward(self, x):
            f = self.down(x)
            return f + sum(F.interpolate(p(f), size=f.shape[2:], mode="bilinear") for p in self.pools)

    paddle.seed(5)
    _save(Pyramid(), out, [paddle.static.InputSpec([1, 3, size, size], "float32", "x")])


def build_crnn(out: Path):
    """A CRNN text recognizer's shape (PP-OCR's CRNN: conv features, a 2-layer bidirectional LSTM over the columns, a
    per-column softmax over 37 characters), a 32 x 100 line image: onnxruntime 1.32 crashed (SIGSEGV) loading
    its FP16 model at graph optimization "all"."""
    import paddle

    class CRNN(paddle.nn.Layer):
        def __init__(self, classes: int = 37):
            super().__init__()
            self.c1, self.b1 = paddle.nn.Conv2D(3, 16, 3, padding=1), paddle.nn.BatchNorm2D(16)
            self.c2, self.b2 = paddle.nn.Conv2D(16, 32, 3, padding=1), paddle.nn.BatchNorm2D(32)
            self.pool = paddle.nn.MaxPool2D(2, 2)
            self.lstm = paddle.nn.LSTM(32 * 8, 48, num_layers=2, direction="bidirectional")
            self.fc = paddle.nn.Linear(96, classes)

        def forward(self, x):
            h = self.pool(paddle.nn.functional.relu(self.b1(self.c1(x))))
            h = self.pool(paddle.nn.functional.relu(self.b2(self.c2(h))))          # N, 32, 8, W / 4
            h = h.reshape([0, -1, h.shape[-1]]).transpose([0, 2, 1])                 # N, columns, features
            h, _ = self.lstm(h)
            return paddle.nn.functional.softmax(self.fc(h), axis=-1)

    paddle.seed(3)
    _save(CRNN(), out, [paddle.static.InputSpec([None, 3, 32, 100], "float32", "x")])


def build_gather_text(out: Path, lookup: bool = True):
    """A text model whose ids reach their table other than through an embedding op: input_ids flattened and read by
    a gather from a 97-row table, token_type_ids one-hot over 4 types; lookup=False: the ids only scale a feature
    (no table at all)."""
    import paddle

    class GatherText(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.table = self.create_parameter([97, 16])
            self.types = paddle.nn.Linear(4, 16)
            self.head = paddle.nn.Linear(16, 3)

        def forward(self, input_ids, token_type_ids):
            if lookup:
                rows = paddle.gather(self.table, input_ids.flatten())
                h = rows.reshape([-1, paddle.shape(input_ids)[1], 16])
                h = h + self.types(paddle.nn.functional.one_hot(token_type_ids, 4))
            else:
                h = (input_ids + token_type_ids).astype("float32").unsqueeze(-1) * self.table[:1]
            return self.head(paddle.tanh(h).mean(axis=1))

    paddle.seed(5)
    _save(GatherText(), out, [paddle.static.InputSpec([None, None], "int64", "input_ids"),
                              paddle.static.InputSpec([None, None], "int64", "token_type_ids")])


def build_ernie(out: Path):
    _save_ernie(out, 3, vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)


def build_ernie_medium(out: Path):
    """ERNIE 3.0 Medium's geometry (6 layers, hidden 768, 12 heads, FFN 3072, vocabulary 40,000), random weights:
    the source benchmarks/first_row measures."""
    _save_ernie(out, 6, vocab_size=40000, hidden_size=768, num_hidden_layers=6, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=2048, type_vocab_size=4)


def build_two_heads(out: Path):
    """Two outputs of one shape (class probabilities and scores of a shared trunk): the swapped-outputs fault."""
    import paddle

    class TwoHeads(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.trunk = paddle.nn.Linear(16, 64)
            self.a = paddle.nn.Linear(64, 6)
            self.b = paddle.nn.Linear(64, 6)

        def forward(self, x):
            h = paddle.nn.functional.relu(self.trunk(x))
            return paddle.nn.functional.softmax(self.a(h) * 3.0), paddle.tanh(self.b(h))

    paddle.seed(7)
    _save(TwoHeads(), out, [paddle.static.InputSpec([None, 16], "float32", "x")])


def build_legacy(out: Path):
    """A legacy-IR program (*.pdmodel) saved through the old static API."""
    import paddle
    paddle.enable_static()
    with paddle.pir_utils.OldIrGuard():
        main, start = paddle.static.Program(), paddle.static.Program()
        main.random_seed = start.random_seed = 7      # the same weights every build (0 draws a new seed each run)
        with paddle.static.program_guard(main, start):
            x = paddle.static.data("x", [None, 12], "float32")
            h = paddle.static.nn.fc(x, 32, activation="relu")
            y = paddle.nn.functional.softmax(paddle.static.nn.fc(h, 4) * 3.0)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(start)
        paddle.static.save_inference_model(str(out / "model"), [x], [y], exe, program=main)


def save_fluid1_vars(src: Path, out: Path) -> None:
    """The weights of the legacy model src/model.* into `out` one file per variable, as Paddle 1.x wrote an inference
    directory by default (the caller writes its __model__)."""
    import paddle
    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.pir_utils.OldIrGuard():
        prog, _, _ = paddle.static.load_inference_model(str(src / "model"), exe)
        persist = [v for v in prog.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
        paddle.static.save_vars(exe, str(out), main_program=prog, vars=persist)


def build_unsupported(out: Path):
    """Uses two operators paddle2onnx 2.1.0 has no mapper for (lgamma twice, digamma once)."""
    import paddle

    class Odd(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.l = paddle.nn.Linear(4, 4)

        def forward(self, x):
            y = self.l(x).abs() + 1.0
            return paddle.lgamma(y) + paddle.lgamma(y * 2.0) + paddle.digamma(y)

    _save(Odd(), out, [paddle.static.InputSpec([None, 4], "float32", "x")])


def build_nhwc_conv(out: Path):
    """A channels-last convolution (ConvBERT's form): paddle2onnx 2.1.0 supports conv2d, not with NHWC input, and
    aborts after logging that refusal."""
    import paddle

    class ChannelsLast(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(4, 8, 3, padding=1, data_format="NHWC")

        def forward(self, x):
            return paddle.nn.functional.relu(self.conv(x)).mean(axis=[1, 2])

    paddle.seed(2)
    _save(ChannelsLast(), out, [paddle.static.InputSpec([None, 8, 8, 4], "float32", "x")])


# PaddleNLP 2.8.1 sequence-classification families, each at a tiny size with random weights (tests/
# test_encoder_families.py). Built from XConfig(**TINY_NLP): what a family does not read, it ignores.
NLP_FAMILIES = ("Bert", "Ernie", "ErnieGram", "ErnieM", "Roberta", "Albert", "Electra", "DistilBert", "TinyBert",
                "Skep", "RoFormer", "RoFormerv2", "MPNet", "DebertaV2", "MobileBert", "SqueezeBert", "MegatronBert",
                "Nystromformer", "LayoutLM", "ConvBert", "FNet")
TINY_NLP = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=128, type_vocab_size=2, num_labels=3, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, embedding_size=32, num_classes=3, pad_token_id=0)


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else (out.logits if hasattr(out, "logits") else out)


def nlp_wrapper(model, names, post=_logits):
    """A Layer whose forward takes `names` (InputSpec names must equal forward's argument names) and returns
    post(model(**inputs)). Written out per signature: dy2static reads forward's source."""
    import paddle

    class Ids(paddle.nn.Layer):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return post(self.m(input_ids=input_ids))

    class IdsTypes(Ids):
        def forward(self, input_ids, token_type_ids):
            return post(self.m(input_ids=input_ids, token_type_ids=token_type_ids))

    class Full(Ids):
        def forward(self, input_ids, token_type_ids, position_ids, attention_mask):
            return post(self.m(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                               attention_mask=attention_mask))

    class IdsPositions(Ids):
        def forward(self, input_ids, position_ids):
            return post(self.m(input_ids=input_ids, position_ids=position_ids))

    return {("input_ids",): Ids, ("input_ids", "token_type_ids"): IdsTypes, ("input_ids", "position_ids"): IdsPositions,
            ("input_ids", "token_type_ids", "position_ids", "attention_mask"): Full}[tuple(names)](model)


def forward_names(model) -> tuple[str, ...]:
    """The id inputs a PaddleNLP model's forward takes: input_ids, and token_type_ids where it has them."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return ("input_ids", "token_type_ids") if "token_type_ids" in params else ("input_ids",)


def id_specs(names) -> list:
    """int64 [batch, sequence] InputSpecs named `names`."""
    import paddle
    return [paddle.static.InputSpec([None, None], "int64", n) for n in names]


# PaddleNLP's initializer_range 0.02 leaves a tiny encoder's layers all but idle (2 ERNIE layers keep the hidden
# states at cosine 0.99987 to the embeddings): the gate would hardly see attention, FFN, their fusions and INT8
# weights. At 0.1 they move them (cosine 0.92), as a trained encoder's layers do; at 0.2 (cosine 0.07) random
# MobileBERT and LayoutLM activations blow up past what dynamic INT8 keeps within its bound.
NLP_INIT_RANGE = 0.1


def build_nlp_family(out: Path, family: str):
    """PaddleNLP's {family}ForSequenceClassification, tiny, saved with input_ids (and token_type_ids where its
    forward takes them), as a user exports a fine-tuned classifier."""
    import paddle
    import paddlenlp.transformers as T

    paddle.seed(1)
    cfg = getattr(T, f"{family}Config")(**{**TINY_NLP, "initializer_range": NLP_INIT_RANGE})
    model = getattr(T, f"{family}ForSequenceClassification")(cfg)
    model.eval()
    _save(nlp_wrapper(model, forward_names(model)), out, id_specs(forward_names(model)))


# paddle.vision's classification families (tests/test_vision_families.py): random weights, 10 classes, 64 x 64 input
VISION_FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_25", "squeezenet1_1",
                   "resnet18")


def build_vision(out: Path, name: str):
    """paddle.vision.models.<name>(num_classes=10) in eval mode, saved with a [batch, 3, 64, 64] image input."""
    import paddle
    import paddle.vision.models as M

    paddle.seed(0)
    _save(getattr(M, name)(num_classes=10), out, [paddle.static.InputSpec([None, 3, 64, 64], "float32", "x")])


def build_bert_classifier(out: Path):
    """The zoo classifier's architecture (PaddleNLP BERT + masked mean pooling + head) at a tiny size, with
    MiniLM's 30,522-token vocabulary so the real tokenizer files drive it."""
    import paddle
    from paddle2ort.convert.zoo.minilm_sentiment import make_model

    paddle.seed(4)
    cfg = {"vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 32, "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12, "pad_token_id": 0}
    _save(make_model(cfg, 3), out, [paddle.static.InputSpec([None, None], "int64", n)
                                    for n in ("input_ids", "token_type_ids", "attention_mask")])


def build_geometry(out: Path, family: str, hidden: int, heads: int):
    """A 2-layer encoder of a given width and head count (the fusion tests): `bert` is the zoo classifier's
    architecture (an attention_mask input), `ernie` PaddleNLP's ERNIE classifier (its mask built from pad ids)."""
    import paddle
    paddle.seed(5)
    if family == "bert":
        from paddle2ort.convert.zoo.minilm_sentiment import make_model
        cfg = {"vocab_size": 120, "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": heads,
               "intermediate_size": 2 * hidden, "hidden_act": "gelu", "max_position_embeddings": 128,
               "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0}
        _save(make_model(cfg, 3), out, [paddle.static.InputSpec([None, None], "int64", n)
                                        for n in ("input_ids", "token_type_ids", "attention_mask")])
        return
    _save_ernie(out, 5, vocab_size=120, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                intermediate_size=2 * hidden, max_position_embeddings=128, type_vocab_size=2)


def smollm2_tokenizer(dest: Path) -> None:
    """SmolLM2's tokenizer, built from the real GGUF, saved in dest. Reading the GGUF's vocabulary takes ~3 s: the
    tiny LLaMA and GPT share one build, kept beside their directories (the session's tiny-model root)."""
    import os
    import shutil
    from paddle2ort.convert.zoo.smollm2 import gguf_path, read_gguf_tokenizer
    from paddle2ort.tokenization.bpe import tokenizer_from_gguf_fields
    shared = dest.parent.parent / "_smollm2_tokenizer"
    if not shared.is_dir():
        stage = shared.with_name(f"{shared.name}.{os.getpid()}")
        tokenizer_from_gguf_fields(read_gguf_tokenizer(gguf_path())).save(stage)
        os.replace(stage, shared)
    shutil.copytree(shared, dest)


def build_llama(out: Path):
    """A tiny LLaMA (GQA 4/2, random weights) with SmolLM2's 49,152-token vocabulary, saved with save_pretrained,
    plus the SmolLM2 tokenizer built from the real GGUF in out/tokenizer."""
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(5)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
                      rms_norm_eps=1e-5, use_flash_attention=False, use_fused_rms_norm=False, use_fused_rope=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg)
    with paddle.no_grad():      # random init is tiny; scale up so logits are not all ties
        for p in model.parameters():
            if len(p.shape) == 2:
                p.set_value(paddle.randn(p.shape) * 0.5)
    model.save_pretrained(str(out / "model"))
    smollm2_tokenizer(out / "tokenizer")


def build_gpt(out: Path):
    """A tiny GPT-2-style PaddleNLP GPTForCausalLM (random weights), the second export family."""
    import paddle
    from paddlenlp.transformers import GPTConfig, GPTForCausalLM

    paddle.seed(6)
    cfg = GPTConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=256, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, eos_token_id=2, pad_token_id=2, bos_token_id=1)
    model = GPTForCausalLM(cfg)
    with paddle.no_grad():
        for p in model.parameters():
            if len(p.shape) == 2:
                p.set_value(paddle.randn(p.shape) * 0.15)
    model.save_pretrained(str(out / "model"))
    smollm2_tokenizer(out / "tokenizer")


BUILDERS = {"ernie_medium": build_ernie_medium, "llama": build_llama, "gpt": build_gpt,
            "bert_classifier": build_bert_classifier, "mlp": build_mlp, "encoder": build_encoder, "ernie": build_ernie,
            "legacy": build_legacy, "two_heads": build_two_heads, "unsupported": build_unsupported,
            "nhwc_conv": build_nhwc_conv, "detector": build_detector,
            "detector_im_shape": lambda out: build_detector(out, im_shape=True), "segmenter": build_segmenter,
            "segmenter_int64": lambda out: build_segmenter(out, "int64"), "pyramid_256": build_pyramid_pool,
            "pyramid_384": lambda out: build_pyramid_pool(out, 384), "crnn": build_crnn,
            "gather_text": build_gather_text, "no_lookup_text": lambda out: build_gather_text(out, lookup=False)}
BUILDERS.update({f"nlp_{fam}": (lambda out, fam=fam: build_nlp_family(out, fam)) for fam in NLP_FAMILIES})
BUILDERS.update({f"vision_{name}": (lambda out, name=name: build_vision(out, name)) for name in VISION_FAMILIES})
# fusion tests: f"{family}_h{hidden}_n{heads}"
BUILDERS.update({f"{fam}_h{h}_n{n}": (lambda out, fam=fam, h=h, n=n: build_geometry(out, fam, h, n))
                 for fam in ("bert", "ernie") for h, n in ((32, 2), (32, 4), (64, 2), (64, 4))})


def text_image(width: int, height: int, lines: list[str]) -> np.ndarray:
    """A normalized NCHW float32 image of printed text (PP-OCR preprocessing: (x/255 - 0.5) / 0.5)."""
    from PIL import Image, ImageDraw, ImageFont
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=28)
    for i, t in enumerate(lines):
        draw.text((10, 10 + 40 * i), t, fill="black", font=font)
    x = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    BUILDERS[kind](out)
