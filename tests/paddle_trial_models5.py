"""Trial builders of quantized Paddle models and PaddleClas CNN families paddle2ort had not been tried on:
`python tests/paddle_trial_models5.py NAME DIR`.

1. Models quantized with Paddle's own quantization APIs, as PaddleSlim users ship them (weights stored as the
   quantized integers, the program holding quantize_linear / dequantize_linear or fake-quant ops):
   - `qat_cnn`: a small conv-BN-ReLU CNN with a Linear head, paddle.quantization.QAT with QuantConfig(activation=
     weight=FakeQuanterWithAbsMaxObserver), a few SGD steps on random batches, QAT.convert, saved as a legacy
     program (*.pdmodel: under PIR, jit.save of a converted model needs a static batch, see qat_cnn_pir);
   - `qat_cnn_pir`: the same saved as a PIR program (inference.json) with batch 1: the only shape Paddle 3.3.1's
     PIR jit.save accepts for a converted model (a None batch: "shape[0] = -1" from quantize_linear's persistable
     output), and an export Paddle Inference itself then cannot load ("Tensor holds no memory");
   - `ptq_encoder`: a small post-LN transformer encoder over token ids (pad-id mask, [CLS] head + Softmax),
     paddle.quantization.PTQ with QuantConfig(activation=weight=AbsmaxObserver), calibrated on 4 random batches,
     PTQ.convert, legacy program (attention by einsum, ReLU FFN and pooler: paddle 3.3.1 saves no matmul, bmm,
     gelu or tanh as a legacy program);
   - `slim_qat_cnn` / `slim_qat_cnn_fake`: PaddleSlim's dygraph QAT path (paddle.quantization.ImperativeQuantAware,
     which paddleslim.QAT wraps: channel-wise abs-max weights, moving-average activations), a few SGD steps,
     save_quantized_model with onnx_format=True (quantize_linear / dequantize_linear) or False (the legacy
     fake_quantize_dequantize_* / fake_channel_wise_* ops);
   - `ptq_cnn_fp8`: qat_cnn's net through PTQ with AbsmaxObserver(quant_bits=(4, 3)), an FP8 e4m3 QDQ program (the
     only form of quantize_linear paddle2onnx 2.1.0 writes).
   paddle 3.3.1's FakeQuanterWithAbsMaxObserverLayer.zero_points() returns None, on which QAT.convert fails
   ("Can't constructs a 'paddle.Tensor' with data type NoneType"): patched here to zeros as the observers return;
   its save_quantized_model(onnx_format=False) fails on float() of a [1] scale: patched too. Heads are calibrated
   on structured images (_center_head) so that the classes vary.
2. PaddleClas CNN families (ppcls/arch/backbone): `mobilenetv3` (legacy_models/mobilenet_v3.py small: hardswish,
   SE blocks with hardsigmoid(slope=0.2, offset=0.5), 1x1 class-expand conv), `convnext` (model_zoo/convnext.py:
   depthwise 7x7, NHWC LayerNorm via transpose, Linear pointwise convs, GELU, layer-scale gamma, channels-first
   LayerNorm written out in the stem and downsamplers; `convnext_hot`: its stem's output x100, as activations of a
   net trained without input normalisation, whose channels-first LayerNorm squares values past FP16's range),
   `pphgnet` (legacy_models/pp_hgnet.py: HG blocks with concat aggregation and ESE), `pphgnetv2`
   (pp_hgnet_v2.py: the stem with pads and a ceil-mode max-pool, light blocks, learnable affine blocks),
   `repvgg` (model_zoo/repvgg.py, built with its three branches and re-parameterised into the deploy form, 3x3
   convs with bias only, checked against the training form; dynamic height and width). Each ends with the Softmax
   PaddleClas' export adds; input [None, 3, 64, 64] unless said.

Random weights, seeded; weights drawn so that every block moves its input and the heads are not saturated (builders
print a check of that). Paddle is imported inside the builders.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from paddle_trial_models2 import _randomize_norms, _save
from paddle_trial_models4 import _check_images, _init


def _image_spec(batch=None, h=64, w=64):
    import paddle
    return paddle.static.InputSpec([batch, 3, h, w], "float32", "x")


def _images(n: int, seed: int, h: int = 64, w: int = 64):
    """Structured, normalised images (rectangles on a tinted background) as calibration / training batches."""
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n):
        img = np.full((h, w, 3), 0.9, np.float32) * rng.uniform(0.3, 1.0, (1, 1, 3))
        for _ in range(8):
            y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
            img[y0:y0 + rng.integers(2, h // 2), x0:x0 + rng.integers(2, w // 2)] = rng.uniform(0, 1, 3)
        xs.append(((img - 0.45) / 0.225).transpose(2, 0, 1))
    return np.stack(xs).astype("float32")


def _print_quant_ops(out: Path):
    """The quantization ops of the saved program (legacy *.pdmodel or PIR *.json)."""
    import re
    from collections import Counter
    files = list(out.glob("inference.pdmodel")) + list(out.glob("inference.json"))
    data = files[0].read_bytes()
    ops = Counter(m.decode() for m in re.findall(rb"(?:fake_[a-z_]+|(?:de)?quantize_linear)", data))
    print(f"{files[0].name}: {dict(sorted(ops.items()))}")


# --- 1. quantized models


def _patch_fake_quanter():
    import paddle
    from paddle.quantization.quanters.abs_max import FakeQuanterWithAbsMaxObserverLayer as Layer
    Layer.zero_points = lambda self: paddle.zeros_like(self._scale)


def _small_cnn(classes: int = 10):
    import paddle.nn as nn

    def cbr(cin, cout, s):
        return [nn.Conv2D(cin, cout, 3, s, 1, bias_attr=False), nn.BatchNorm2D(cout), nn.ReLU()]

    return nn.Sequential(*cbr(3, 16, 2), *cbr(16, 32, 2), *cbr(32, 32, 1), *cbr(32, 64, 2),
                         nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes),
                         nn.Softmax(-1))


def _center_head(m, seed: int):
    """Calibrate the CNN's first head Linear on structured images: its pre-activations centred, std ~1 (random
    conv features after global pooling differ little between images: every image would get one class)."""
    import paddle
    lin = m[-4]
    with paddle.no_grad():
        feats = m[:-4](paddle.to_tensor(_images(32, seed + 100))).numpy()
    w = lin.weight.numpy()
    pre = feats @ w
    w = w / (pre.std(0, keepdims=True) + 1e-6)
    lin.weight.set_value(w.astype("float32"))
    lin.bias.set_value((-(feats.mean(0) @ w)).astype("float32"))


def _train_steps(m, batches, steps: int = 4, lr: float = 1e-3):
    """A few SGD steps (QAT: the fake quanters' moving scales follow the activations)."""
    import paddle
    opt = paddle.optimizer.SGD(lr, parameters=m.parameters())
    for i in range(steps):
        x = paddle.to_tensor(batches[i % len(batches)])
        labels = paddle.to_tensor(np.random.default_rng(i).integers(0, 10, (x.shape[0], 1)))
        loss = paddle.nn.functional.cross_entropy(paddle.log(m(x) + 1e-6), labels, use_softmax=False)
        loss.backward()
        opt.step()
        opt.clear_grad()


def _save_legacy(m, out: Path, specs):
    """A legacy program (*.pdmodel), as PaddleSlim writes: these builders run with FLAGS_enable_pir_api=0 (LEGACY)."""
    import paddle
    m.eval()
    out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(m, str(out / "inference"), input_spec=specs)


def build_qat_cnn(out: Path, pir: bool = False):
    import paddle
    from paddle.quantization import QAT, QuantConfig
    from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver
    _patch_fake_quanter()
    paddle.seed(51)
    m = _small_cnn()
    _init(m, 51)
    m.eval()
    _center_head(m, 51)
    m[-2].weight.set_value(m[-2].weight * 2.0)
    quanter = FakeQuanterWithAbsMaxObserver(moving_rate=0.9)
    qat = QAT(QuantConfig(activation=quanter, weight=quanter))
    m.train()
    qm = qat.quantize(m)
    _train_steps(qm, [_images(8, s) for s in range(4)], steps=6)
    qm.eval()
    cm = qat.convert(qm)
    _check_images(cm, (8, 3, 64, 64), "qat_cnn")
    if pir:
        _save(cm, out, [_image_spec(batch=1)])
    else:
        _save_legacy(cm, out, [_image_spec()])
    _print_quant_ops(out)


def build_ptq_cnn_fp8(out: Path):
    import paddle
    from paddle.quantization import PTQ, QuantConfig
    from paddle.quantization.observers import AbsmaxObserver
    paddle.seed(52)
    m = _small_cnn()
    _init(m, 52)
    m.eval()
    _center_head(m, 52)
    m[-2].weight.set_value(m[-2].weight * 2.0)
    observer = AbsmaxObserver(quant_bits=(4, 3))
    ptq = PTQ(QuantConfig(activation=observer, weight=observer))
    qm = ptq.quantize(m)
    with paddle.no_grad():
        for s in range(4):
            qm(paddle.to_tensor(_images(8, s)))
    cm = ptq.convert(qm)
    _check_images(cm, (8, 3, 64, 64), "ptq_cnn_fp8")
    _save_legacy(cm, out, [_image_spec()])
    _print_quant_ops(out)


def build_slim_qat_cnn(out: Path, onnx_format: bool = True):
    import paddle
    from paddle.quantization import ImperativeQuantAware
    from paddle.quantization.imperative import utils
    # paddle 3.3.1: save_quantized_model(onnx_format=False) reads each out-scale with float() of a [1] array
    utils.fp_numpy_to_naive = lambda x: float(np.asarray(x).reshape(-1)[0])
    paddle.seed(53)
    m = _small_cnn()
    _init(m, 53)
    m.eval()
    _center_head(m, 53)
    m[-2].weight.set_value(m[-2].weight * 2.0)
    iqa = ImperativeQuantAware(weight_quantize_type="channel_wise_abs_max",
                               activation_quantize_type="moving_average_abs_max", onnx_format=onnx_format)
    iqa.quantize(m)
    m.train()
    _train_steps(m, [_images(8, s) for s in range(4)], steps=6)
    m.eval()
    _check_images(m, (8, 3, 64, 64), "slim_qat_cnn")
    out.mkdir(parents=True, exist_ok=True)
    iqa.save_quantized_model(m, str(out / "inference"), input_spec=[_image_spec()])
    _print_quant_ops(out)


def _encoder_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    from paddle_trial_models4 import _uie_classes

    class Layer(_uie_classes().Layer):
        """The UIE trial's post-LN encoder layer with its attention written with einsum: paddle 3.3.1 saves no
        paddle.matmul / bmm as a legacy program ("matmul(): argument (position 1) must be Value, but got
        Variable", which also stops nn.TransformerEncoderLayer); q/k/v/out projections and the FFN are nn.Linear,
        which the quantizers wrap."""

        def forward(self, x, mask):
            def split(t):
                return t.reshape([0, 0, self.h, self.hd]).transpose([0, 2, 1, 3])
            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            a = paddle.einsum("bhqd,bhkd->bhqk", q * self.hd ** -0.5, k) + mask
            a = paddle.einsum("bhqk,bhkd->bhqd", F.softmax(a, -1), v)
            a = a.transpose([0, 2, 1, 3]).reshape([0, 0, self.h * self.hd])
            x = self.norm1(x + self.out_proj(a))
            return self.norm2(x + self.linear2(F.relu(self.linear1(x))))   # gelu: not saved either, as matmul

    class Encoder(nn.Layer):
        """ERNIE-like: word + position embeddings, LayerNorm, post-LN layers, the pad id 0 masked, [CLS] pooler
        and a classifier with a Softmax."""

        def __init__(self, vocab=500, d=64, heads=4, ff=128, layers=2, max_pos=64, classes=5):
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, d, padding_idx=0)
            self.position_embeddings = nn.Embedding(max_pos, d)
            self.norm = nn.LayerNorm(d)
            self.layers = nn.LayerList([Layer(d, heads, ff) for _ in range(layers)])
            self.pooler = nn.Linear(d, d)
            self.classifier = nn.Linear(d, classes)

        def forward(self, input_ids):
            pos = paddle.arange(paddle.shape(input_ids)[1], dtype="int64").unsqueeze(0)
            x = self.norm(self.word_embeddings(input_ids) + self.position_embeddings(pos))
            mask = ((input_ids == 0).astype("float32") * -1e4).unsqueeze([1, 2])
            for layer in self.layers:
                x = layer(x, mask)
            pooled = F.relu(self.pooler(x[:, 0]))       # tanh: not saved as a legacy program either
            return F.softmax(self.classifier(pooled), -1)

    return Encoder


def _token_batches(n: int, seed: int, length: int = 24):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 500, (n, length))
    for i, cut in enumerate(rng.integers(length // 2, length + 1, n)):
        ids[i, cut:] = 0
    return ids.astype("int64")


def build_ptq_encoder(out: Path):
    import paddle
    from paddle.quantization import PTQ, QuantConfig
    from paddle.quantization.observers import AbsmaxObserver
    paddle.seed(54)
    m = _encoder_classes()()
    _init(m, 54)
    rng = np.random.default_rng(54)
    for emb in (m.word_embeddings, m.position_embeddings):
        emb.weight.set_value(rng.normal(0, 0.5, emb.weight.shape).astype("float32"))
    m.classifier.weight.set_value(m.classifier.weight * 3.0)
    m.eval()
    ptq = PTQ(QuantConfig(activation=AbsmaxObserver(), weight=AbsmaxObserver()))
    qm = ptq.quantize(m)
    with paddle.no_grad():
        for s in range(4):
            qm(paddle.to_tensor(_token_batches(8, s)))
    cm = ptq.convert(qm)
    with paddle.no_grad():
        y = cm(paddle.to_tensor(_token_batches(8, 9))).numpy()
        y0 = m(paddle.to_tensor(_token_batches(8, 9))).numpy()
    print(f"ptq_encoder: out {list(y.shape)} argmax {y.argmax(-1).tolist()} float model argmax "
          f"{y0.argmax(-1).tolist()} max |q - float| {np.abs(y - y0).max():.3g}")
    _save_legacy(cm, out, [paddle.static.InputSpec([None, None], "int64", "input_ids")])
    _print_quant_ops(out)


# --- 2. PaddleClas CNN families


def _calibrate_head(m, fc, gain: float = 2.5, seed: int = 0):
    """The classifier `fc` (a Linear) re-scaled on structured images: its logits centred over them, std ~gain per
    class (random trunks' pooled features differ little from image to image: every image would get one class)."""
    import paddle
    feats = []
    hook = fc.register_forward_pre_hook(lambda layer, inputs: feats.append(inputs[0].numpy()))
    with paddle.no_grad():
        m(paddle.to_tensor(_images(32, seed + 200)))
    hook.remove()
    f = feats[0].reshape(32, -1)
    w = fc.weight.numpy()
    w = w * gain / ((f - f.mean(0)) @ w).std(0, keepdims=True).clip(1e-6)
    fc.weight.set_value(w.astype("float32"))
    fc.bias.set_value((-(f.mean(0) @ w) + np.random.default_rng(seed).normal(0, 0.5, w.shape[1])).astype("float32"))


def _make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _mobilenetv3_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ConvBNLayer(nn.Layer):
        def __init__(self, cin, cout, k, s, groups=1, act=None):
            super().__init__()
            self.conv = nn.Conv2D(cin, cout, k, s, (k - 1) // 2, groups=groups, bias_attr=False)
            self.bn = nn.BatchNorm2D(cout)
            self.act = act

        def forward(self, x):
            x = self.bn(self.conv(x))
            if self.act == "relu":
                x = F.relu(x)
            elif self.act == "hardswish":
                x = F.hardswish(x)
            return x

    class SEModule(nn.Layer):
        def __init__(self, channel, reduction=4):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.conv1 = nn.Conv2D(channel, channel // reduction, 1)
            self.conv2 = nn.Conv2D(channel // reduction, channel, 1)

        def forward(self, x):
            s = self.conv2(F.relu(self.conv1(self.avg_pool(x))))
            return paddle.multiply(x=x, y=F.hardsigmoid(s, slope=0.2, offset=0.5))

    class ResidualUnit(nn.Layer):
        def __init__(self, cin, mid, cout, k, s, use_se, act):
            super().__init__()
            self.if_shortcut = s == 1 and cin == cout
            self.expand_conv = ConvBNLayer(cin, mid, 1, 1, act=act)
            self.bottleneck_conv = ConvBNLayer(mid, mid, k, s, groups=mid, act=act)
            self.mid_se = SEModule(mid) if use_se else None
            self.linear_conv = ConvBNLayer(mid, cout, 1, 1)

        def forward(self, x):
            y = self.bottleneck_conv(self.expand_conv(x))
            if self.mid_se is not None:
                y = self.mid_se(y)
            y = self.linear_conv(y)
            return paddle.add(x, y) if self.if_shortcut else y

    # MobileNetV3_small config: k, exp, c, se, act, s
    small = [[3, 16, 16, True, "relu", 2], [3, 72, 24, False, "relu", 2], [3, 88, 24, False, "relu", 1],
             [5, 96, 40, True, "hardswish", 2], [5, 240, 40, True, "hardswish", 1],
             [5, 120, 48, True, "hardswish", 1], [5, 288, 96, True, "hardswish", 2],
             [5, 576, 96, True, "hardswish", 1]]

    class MobileNetV3(nn.Layer):
        def __init__(self, scale=0.5, classes=100, class_expand=256):
            super().__init__()
            inp = _make_divisible(16 * scale)
            self.conv = ConvBNLayer(3, inp, 3, 2, act="hardswish")
            blocks = []
            for k, exp, c, se, act, s in small:
                blocks.append(ResidualUnit(inp, _make_divisible(scale * exp), _make_divisible(scale * c), k, s, se,
                                           act))
                inp = _make_divisible(scale * c)
            self.blocks = nn.Sequential(*blocks)
            last = _make_divisible(scale * 576)
            self.last_second_conv = ConvBNLayer(inp, last, 1, 1, act="hardswish")
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.last_conv = nn.Conv2D(last, class_expand, 1, bias_attr=False)
            self.flatten = nn.Flatten(start_axis=1, stop_axis=-1)
            self.fc = nn.Linear(class_expand, classes)

        def forward(self, x):
            x = self.last_second_conv(self.blocks(self.conv(x)))
            x = F.hardswish(self.last_conv(self.avg_pool(x)))
            return F.softmax(self.fc(self.flatten(x)), -1)

    return MobileNetV3


def build_mobilenetv3(out: Path):
    import paddle
    paddle.seed(55)
    m = _mobilenetv3_classes()()
    _init(m, 55)
    m.eval()
    _calibrate_head(m, m.fc, seed=55)
    _check_images(m, (8, 3, 64, 64), "mobilenetv3")
    _save(m, out, [_image_spec()])


def _convnext_classes():
    import paddle
    import paddle.nn as nn

    class ChannelsFirstLayerNorm(nn.Layer):
        def __init__(self, c, epsilon=1e-6):
            super().__init__()
            self.weight = self.create_parameter([c], default_initializer=nn.initializer.Constant(1.0))
            self.bias = self.create_parameter([c], default_initializer=nn.initializer.Constant(0.0))
            self.epsilon = epsilon

        def forward(self, x):
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / paddle.sqrt(s + self.epsilon)
            return self.weight[:, None, None] * x + self.bias[:, None, None]

    class Block(nn.Layer):
        def __init__(self, dim):
            super().__init__()
            self.dwconv = nn.Conv2D(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, epsilon=1e-6)
            self.pwconv1 = nn.Linear(dim, 4 * dim)
            self.act = nn.GELU()
            self.pwconv2 = nn.Linear(4 * dim, dim)
            self.gamma = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1e-6))

        def forward(self, x):
            y = self.dwconv(x).transpose([0, 2, 3, 1])
            y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
            return x + (self.gamma * y).transpose([0, 3, 1, 2])

    class ConvNeXt(nn.Layer):
        def __init__(self, depths=(1, 1, 2, 1), dims=(16, 32, 64, 96), classes=100):
            super().__init__()
            self.downsample_layers = nn.LayerList([nn.Sequential(nn.Conv2D(3, dims[0], 4, stride=4),
                                                                 ChannelsFirstLayerNorm(dims[0]))])
            for i in range(3):
                self.downsample_layers.append(nn.Sequential(ChannelsFirstLayerNorm(dims[i]),
                                                            nn.Conv2D(dims[i], dims[i + 1], 2, stride=2)))
            self.stages = nn.LayerList([nn.Sequential(*[Block(dims[i]) for _ in range(d)])
                                        for i, d in enumerate(depths)])
            self.norm = nn.LayerNorm(dims[-1], epsilon=1e-6)
            self.head = nn.Linear(dims[-1], classes)

        def forward(self, x):
            for down, stage in zip(self.downsample_layers, self.stages):
                x = stage(down(x))
            return nn.functional.softmax(self.head(self.norm(x.mean([-2, -1]))), -1)

    return ConvNeXt, ChannelsFirstLayerNorm, Block


def build_convnext(out: Path, hot: bool = False):
    """hot: the stem conv x100 (values ~ +-300 into the stem's channels-first LayerNorm, whose squares pass 65504)."""
    import paddle
    paddle.seed(56)
    ConvNeXt, CFLN, Block = _convnext_classes()
    m = ConvNeXt()
    _init(m, 56)
    rng = np.random.default_rng(56)
    for sub in m.sublayers():
        if isinstance(sub, CFLN):
            sub.weight.set_value(rng.uniform(0.7, 1.3, sub.weight.shape).astype("float32"))
            sub.bias.set_value(rng.normal(0, 0.1, sub.bias.shape).astype("float32"))
        if isinstance(sub, Block):                 # trained layer scales: ~0.1-0.6, a few near-idle channels
            g = rng.uniform(0.1, 0.6, sub.gamma.shape)
            g[rng.random(g.shape) < 0.1] = 1e-4
            sub.gamma.set_value(g.astype("float32"))
    m.eval()
    _calibrate_head(m, m.head, seed=56)
    if hot:
        stem = m.downsample_layers[0][0]
        stem.weight.set_value(stem.weight * 100.0)
        stem.bias.set_value(stem.bias * 100.0)
    m.eval()
    with paddle.no_grad():
        s = m.downsample_layers[0][0](paddle.to_tensor(_images(4, 0)))
    print(f"convnext: stem output |max| {float(s.abs().max()):.4g}, largest (x - mean)^2 "
          f"{float(((s - s.mean(1, keepdim=True)) ** 2).max()):.4g}")
    _check_images(m, (8, 3, 64, 64), "convnext_hot" if hot else "convnext")
    _save(m, out, [_image_spec()])


def _hgnet_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class LearnableAffineBlock(nn.Layer):
        def __init__(self):
            super().__init__()
            self.scale = self.create_parameter([1], default_initializer=nn.initializer.Constant(1.0))
            self.bias = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.0))

        def forward(self, x):
            return self.scale * x + self.bias

    class ConvBNAct(nn.Layer):
        def __init__(self, cin, cout, k, s=1, groups=1, use_act=True, use_lab=False, padding=None):
            super().__init__()
            self.conv = nn.Conv2D(cin, cout, k, s, (k - 1) // 2 if padding is None else padding, groups=groups,
                                  bias_attr=False)
            self.bn = nn.BatchNorm2D(cout)
            self.use_act = use_act
            self.lab = LearnableAffineBlock() if use_act and use_lab else None

        def forward(self, x):
            x = self.bn(self.conv(x))
            if self.use_act:
                x = F.relu(x)
                if self.lab is not None:
                    x = self.lab(x)
            return x

    class ESEModule(nn.Layer):
        def __init__(self, c):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.conv = nn.Conv2D(c, c, 1)

        def forward(self, x):
            return paddle.multiply(x, F.sigmoid(self.conv(self.avg_pool(x))))

    class HGBlock(nn.Layer):
        """v1: 3x3 ConvBNAct layers, concat, 1x1 aggregation, ESE. v2: light (1x1 + depthwise) or 3x3 layers,
        squeeze + excitation 1x1 aggregation, learnable affine blocks."""

        def __init__(self, cin, mid, cout, layer_num, identity=False, v2=False, light=False, k=3):
            super().__init__()
            self.identity, self.v2 = identity, v2
            layers = []
            for i in range(layer_num):
                c = cin if i == 0 else mid
                if light:
                    layers.append(nn.Sequential(ConvBNAct(c, mid, 1, use_act=False, use_lab=True),
                                                ConvBNAct(mid, mid, k, groups=mid, use_lab=True)))
                else:
                    layers.append(ConvBNAct(c, mid, k, use_lab=v2))
            self.layers = nn.LayerList(layers)
            total = cin + layer_num * mid
            if v2:
                self.aggregation = nn.Sequential(ConvBNAct(total, cout // 2, 1, use_lab=True),
                                                 ConvBNAct(cout // 2, cout, 1, use_lab=True))
            else:
                self.aggregation = nn.Sequential(ConvBNAct(total, cout, 1), ESEModule(cout))

        def forward(self, x):
            identity = x
            outs = [x]
            for layer in self.layers:
                x = layer(x)
                outs.append(x)
            x = self.aggregation(paddle.concat(outs, axis=1))
            return x + identity if self.identity else x

    class HGStage(nn.Layer):
        def __init__(self, cin, mid, cout, blocks, layer_num, downsample=True, v2=False, light=False, k=3):
            super().__init__()
            self.downsample = (ConvBNAct(cin, cin, 3, 2, groups=cin, use_act=False) if downsample else None)
            self.blocks = nn.Sequential(*[HGBlock(cin if i == 0 else cout, mid, cout, layer_num, identity=i > 0,
                                                  v2=v2, light=light, k=k) for i in range(blocks)])

        def forward(self, x):
            if self.downsample is not None:
                x = self.downsample(x)
            return self.blocks(x)

    class StemBlockV2(nn.Layer):
        def __init__(self, cin, mid, cout):
            super().__init__()
            self.stem1 = ConvBNAct(cin, mid, 3, 2, use_lab=True)
            self.stem2a = ConvBNAct(mid, mid // 2, 2, 1, use_lab=True, padding=0)
            self.stem2b = ConvBNAct(mid // 2, mid, 2, 1, use_lab=True, padding=0)
            self.stem3 = ConvBNAct(mid * 2, mid, 3, 2, use_lab=True)
            self.stem4 = ConvBNAct(mid, cout, 1, use_lab=True)
            self.pool = nn.MaxPool2D(kernel_size=2, stride=1, ceil_mode=True)

        def forward(self, x):
            x = F.pad(self.stem1(x), [0, 1, 0, 1])
            x2 = self.stem2b(F.pad(self.stem2a(x), [0, 1, 0, 1]))
            x = paddle.concat([self.pool(x), x2], 1)
            return self.stem4(self.stem3(x))

    class PPHGNet(nn.Layer):
        def __init__(self, v2=False, classes=100, class_expand=256):
            super().__init__()
            if v2:
                self.stem = StemBlockV2(3, 16, 32)
                # cin, mid, cout, blocks, downsample, light, k, layer_num
                cfg = [(32, 16, 64, 1, False, False, 3, 3), (64, 32, 128, 1, True, False, 3, 3),
                       (128, 48, 192, 2, True, True, 5, 3), (192, 64, 256, 1, True, True, 5, 3)]
                self.stages = nn.Sequential(*[HGStage(ci, mi, co, b, ln, ds, v2=True, light=lt, k=k)
                                              for ci, mi, co, b, ds, lt, k, ln in cfg])
                last = 256
            else:
                self.stem = nn.Sequential(ConvBNAct(3, 16, 3, 2), ConvBNAct(16, 16, 3), ConvBNAct(16, 32, 3),
                                          nn.MaxPool2D(3, 2, 1))
                cfg = [(32, 32, 64, 1, False, 3), (64, 48, 128, 1, True, 3), (128, 64, 192, 2, True, 3),
                       (192, 96, 256, 1, True, 3)]
                self.stages = nn.Sequential(*[HGStage(ci, mi, co, b, ln, ds) for ci, mi, co, b, ds, ln in cfg])
                last = 256
            self.v2 = v2
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.last_conv = nn.Conv2D(last, class_expand, 1, bias_attr=False)
            self.lab = LearnableAffineBlock() if v2 else None
            self.fc = nn.Linear(class_expand, classes)

        def forward(self, x):
            x = F.relu(self.last_conv(self.avg_pool(self.stages(self.stem(x)))))
            if self.lab is not None:
                x = self.lab(x)
            return F.softmax(self.fc(x.flatten(1)), -1)

    return PPHGNet, LearnableAffineBlock


def build_pphgnet(out: Path, v2: bool = False):
    import paddle
    paddle.seed(57)
    PPHGNet, LAB = _hgnet_classes()
    m = PPHGNet(v2=v2)
    _init(m, 57)
    rng = np.random.default_rng(57)
    for sub in m.sublayers():
        if isinstance(sub, LAB):                    # trained affine blocks: scale ~0.6-1.4, bias ~ +-0.1
            sub.scale.set_value(rng.uniform(0.6, 1.4, [1]).astype("float32"))
            sub.bias.set_value(rng.normal(0, 0.1, [1]).astype("float32"))
    m.eval()
    _calibrate_head(m, m.fc, seed=57)
    _check_images(m, (8, 3, 64, 64), "pphgnetv2" if v2 else "pphgnet")
    _save(m, out, [_image_spec()])


def _repvgg_classes():
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ConvBN(nn.Layer):
        def __init__(self, cin, cout, k, s, p):
            super().__init__()
            self.conv = nn.Conv2D(cin, cout, k, s, p, bias_attr=False)
            self.bn = nn.BatchNorm2D(cout)

        def forward(self, x):
            return self.bn(self.conv(x))

    class RepVGGBlock(nn.Layer):
        def __init__(self, cin, cout, s=1):
            super().__init__()
            self.cin, self.cout = cin, cout
            self.rbr_identity = nn.BatchNorm2D(cin) if cin == cout and s == 1 else None
            self.rbr_dense = ConvBN(cin, cout, 3, s, 1)
            self.rbr_1x1 = ConvBN(cin, cout, 1, s, 0)
            self.rbr_reparam = None

        def forward(self, x):
            if self.rbr_reparam is not None:
                return F.relu(self.rbr_reparam(x))
            y = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                y = y + self.rbr_identity(x)
            return F.relu(y)

        @staticmethod
        def _fuse(kernel, bn):
            std = np.sqrt(bn._variance.numpy() + bn._epsilon)
            t = bn.weight.numpy() / std
            return kernel * t.reshape(-1, 1, 1, 1), bn.bias.numpy() - bn._mean.numpy() * t

        def re_parameterize(self):
            """PaddleClas' RepVGGBlock.re_parameterize: one 3x3 conv with bias, the branches dropped."""
            k3, b3 = self._fuse(self.rbr_dense.conv.weight.numpy(), self.rbr_dense.bn)
            k1, b1 = self._fuse(self.rbr_1x1.conv.weight.numpy(), self.rbr_1x1.bn)
            kernel, bias = k3 + np.pad(k1, [(0, 0), (0, 0), (1, 1), (1, 1)]), b3 + b1
            if self.rbr_identity is not None:
                ident = np.zeros((self.cin, self.cin, 3, 3), np.float32)
                ident[np.arange(self.cin), np.arange(self.cin), 1, 1] = 1.0
                ki, bi = self._fuse(ident, self.rbr_identity)
                kernel, bias = kernel + ki, bias + bi
            conv = self.rbr_dense.conv
            self.rbr_reparam = nn.Conv2D(self.cin, self.cout, 3, conv._stride, 1)
            self.rbr_reparam.weight.set_value(kernel.astype("float32"))
            self.rbr_reparam.bias.set_value(bias.astype("float32"))
            del self.rbr_dense, self.rbr_1x1, self.rbr_identity
            self.rbr_identity = None

    class RepVGG(nn.Layer):
        def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 2, 2, 1), classes=100):
            super().__init__()
            self.stage0 = RepVGGBlock(3, widths[0], 2)
            layers, cin = [], widths[0]
            for w, n in zip(widths, blocks):
                for i in range(n):
                    layers.append(RepVGGBlock(cin, w, 2 if i == 0 else 1))
                    cin = w
            self.stages = nn.Sequential(*layers)
            self.gap = nn.AdaptiveAvgPool2D(1)
            self.linear = nn.Linear(widths[-1], classes)

        def forward(self, x):
            x = self.gap(self.stages(self.stage0(x))).flatten(1)
            return F.softmax(self.linear(x), -1)

    return RepVGG, RepVGGBlock


def build_repvgg(out: Path):
    import paddle
    paddle.seed(58)
    RepVGG, Block = _repvgg_classes()
    m = RepVGG()
    _init(m, 58)
    # trained RepVGG branches: per-channel BN scales spread over a decade (the fused kernels' channels then differ
    # by ~30x, which per-tensor INT8 of the convolutions meets)
    rng = np.random.default_rng(58)
    for sub in m.sublayers():
        if isinstance(sub, paddle.nn.BatchNorm2D):
            sub._variance.set_value(np.exp(rng.uniform(np.log(0.1), np.log(10), sub._variance.shape))
                                    .astype("float32"))
            sub.weight.set_value(rng.uniform(0.3, 1.5, sub.weight.shape).astype("float32"))
    m.eval()
    _calibrate_head(m, m.linear, seed=58)
    x = paddle.to_tensor(_images(4, 0))
    with paddle.no_grad():
        before = m(x).numpy()
        for sub in m.sublayers():
            if isinstance(sub, Block):
                sub.re_parameterize()
        after = m(x).numpy()
    print(f"repvgg: deploy form vs training form max |diff| {np.abs(after - before).max():.3g}")
    _check_images(m, (8, 3, 64, 64), "repvgg")
    _save(m, out, [_image_spec(h=None, w=None)])


BUILDERS = {
    "qat_cnn": build_qat_cnn,
    "qat_cnn_pir": lambda out: build_qat_cnn(out, pir=True),
    "ptq_cnn_fp8": build_ptq_cnn_fp8,
    "slim_qat_cnn": build_slim_qat_cnn,
    "slim_qat_cnn_fake": lambda out: build_slim_qat_cnn(out, onnx_format=False),
    "ptq_encoder": build_ptq_encoder,
    "mobilenetv3": build_mobilenetv3,
    "convnext": build_convnext,
    "convnext_hot": lambda out: build_convnext(out, hot=True),
    "pphgnet": build_pphgnet,
    "pphgnetv2": lambda out: build_pphgnet(out, v2=True),
    "repvgg": build_repvgg,
}

# built with the legacy IR from the start (FLAGS_enable_pir_api=0 before paddle is imported; paddle.pir_utils.
# OldIrGuard around jit.save alone fails on nn.TransformerEncoderLayer: "matmul(): ... must be Value, but got Variable")
LEGACY = {"qat_cnn", "ptq_cnn_fp8", "slim_qat_cnn", "slim_qat_cnn_fake", "ptq_encoder"}

if __name__ == "__main__":
    kind, dest = sys.argv[1], Path(sys.argv[2])
    if kind in LEGACY:
        import os
        os.environ["FLAGS_enable_pir_api"] = "0"
    dest.mkdir(parents=True, exist_ok=True)
    BUILDERS[kind](dest)
