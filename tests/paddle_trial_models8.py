"""Trial builders of audio models and CNN families paddle2ort had not been tried on:
`python tests/paddle_trial_models8.py NAME DIR` (DIR/inference.json + inference.pdiparams, paddle.jit.save).

1. PaddleSpeech vocoders (paddlespeech/t2s/models/{hifigan,melgan}), weight_norm applied and removed as the export
   does, input mel [N, 80, T] with T dynamic:
   - `hifigan`: Conv1D(80, 64, 7) pre, four Conv1DTranspose upsamplers x8 x8 x2 x2 (kernel 2u, padding u//2 + u%2,
     output_padding u%2), multi-receptive-field ResBlocks (kernels 3/7/11, dilations 1/3/5, LeakyReLU 0.1, their
     mean), LeakyReLU(0.01), Conv1D(., 1, 7), tanh: [N, 1, 256 T];
   - `mb_melgan`: the MelGAN generator with four bands (reflect Pad1D -- F.pad mode reflect on a 3-D tensor --,
     Conv1DTranspose x4 x4 x4, residual stacks with dilations 1/3/9 and their 1x1 skips, tanh) and PaddleSpeech's
     PQMF synthesis: conv1d_transpose by the 4 x 4 x 4 up-down filter, zero Pad1D(31), conv1d with the fixed
     Kaiser-windowed cosine-modulated filter bank [1, 4, 63]: [N, 1, 256 T];
   - `melgan_tv`: mb_melgan as PaddleSpeech's vocoder export writes it: MelGANInference with the normalizer
     ((logmel - mu) / std), the input an unbatched [T, 80] mel (InputSpec([-1, 80])), the output wav [T * 256, 1].
2. `cnn14`: PANNs CNN14-lite (paddlespeech/cls/models/panns): log-mel [N, 1, T, 64] (T dynamic), bn0 over the mel
   bins, ConvBlocks (two 3x3 conv + BN + ReLU, 2x2 avg pool), mean over the mel axis, max + mean over time, fc1 +
   ReLU, fc_audioset + sigmoid over 50 classes.
3. PaddleClas CNNs (ppcls/arch/backbone), input [N, 3, 64, 64], each ending in PaddleClas' Softmax:
   `pplcnetv2` (RepDepthwiseSeparable: depthwise 5/3/1 branches re-parameterised into one 5x5, checked against the
   training form; SE with hardsigmoid; split pointwise; shortcut), `ghostnet` (ghost modules: primary 1x1 conv, cheap
   depthwise, concat, slice to the odd output width; SE by Linear layers and clip(0, 1)), `res2net` (Res2Net-vd
   bottlenecks: the 1x1's output split into 4 scales, each 3x3 conv fed the previous one's output, avg-pooled last
   scale in stride-2 blocks, concat), `resnext` (ResNeXt bottlenecks, grouped 3x3 convs, cardinality 8), `dla34`
   (DLA-lite: BasicBlocks, Trees whose Root concatenates the children, level_root, max-pool downsampling and 1x1
   projections), `esnet` (ESNet: split, pointwise / depthwise / SE(hardsigmoid) / pointwise, concat, channel shuffle
   by reshape-transpose-reshape; hardswish), `cspdarknet` (CSPDarkNet with Mish = x * tanh(softplus(x)) written out,
   as ppdet's and PaddleClas' `mish` helpers do), `bit_resnet` (BiT ResNetV2: StdConv2d -- weight standardization
   computed in the graph from the parameter -- pre-activation GroupNorm bottlenecks), `style_in` (a fast style-transfer
   net: reflect pad, conv + InstanceNorm + ReLU, residual IN blocks, nearest upsampling; image out, tanh; dynamic H,
   W).
4. PaddleVideo PP-TSM-lite (ppTSM: ResNet-vd bottlenecks with temporal_shift(seg_num 8, shift_ratio 0.125) before
   each block, avg-pool, mean over the segments, fc, softmax): `pptsm` with the export's [N, 8, 3, 64, 64] input
   reshaped inside; `pptsm_flat` taking [N*T, 3, 64, 64] directly.

Random weights, seeded; weights drawn so that every block moves its input and the heads are not saturated (builders
print a check of that). Paddle is imported inside the builders.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from paddle_trial_models2 import _randomize_norms, _save
from paddle_trial_models4 import _check_images
from paddle_trial_models5 import _calibrate_head, _images


def _init(layer, seed: int, gain: float = 1.0):
    """Conv (1-D, 2-D, transposed) and Linear weights ~ N(0, gain * sqrt(2 / fan_in)) (He, so ReLU stacks keep
    their scale), biases ~ N(0, 0.05); norms as a trained net has them."""
    import paddle.nn as nn
    rng = np.random.default_rng(seed)
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, nn.Linear):
            w = sub.weight
            w.set_value(rng.normal(0, gain / np.sqrt(w.shape[0]), w.shape).astype("float32"))
        elif isinstance(sub, (nn.Conv1D, nn.Conv2D)):
            w = sub.weight
            fan_in = int(np.prod(w.shape[1:]))
            w.set_value(rng.normal(0, gain * np.sqrt(2.0 / fan_in), w.shape).astype("float32"))
        elif isinstance(sub, (nn.Conv1DTranspose, nn.Conv2DTranspose)):
            w = sub.weight                      # [in, out / groups, k]: each output sums in * k / stride taps
            stride = sub._stride[0] if isinstance(sub._stride, (list, tuple)) else sub._stride
            fan_in = w.shape[0] * int(np.prod(w.shape[2:])) / stride
            w.set_value(rng.normal(0, gain * np.sqrt(2.0 / fan_in), w.shape).astype("float32"))
        else:
            continue
        if getattr(sub, "bias", None) is not None:
            sub.bias.set_value(rng.normal(0, 0.05, sub.bias.shape).astype("float32"))
    _randomize_norms(layer, seed)
    for sub in layer.sublayers():       # _randomize_norms knows the 2-D BatchNorm only
        if isinstance(sub, (nn.BatchNorm1D, nn.BatchNorm3D)):
            sub.weight.set_value(rng.uniform(0.7, 1.3, sub.weight.shape).astype("float32"))
            sub.bias.set_value(rng.normal(0, 0.1, sub.bias.shape).astype("float32"))
            sub._mean.set_value(rng.normal(0, 0.1, sub._mean.shape).astype("float32"))
            sub._variance.set_value(rng.uniform(0.5, 1.5, sub._variance.shape).astype("float32"))


def _mels(n: int, t: int, seed: int, bins: int = 80) -> np.ndarray:
    """Log-mel-like [N, bins, T]: smooth formant bands moving over time plus noise, normalised (~N(0, 1))."""
    rng = np.random.default_rng(seed)
    f = np.arange(bins)[:, None]
    tt = np.arange(t)[None]
    out = []
    for _ in range(n):
        x = rng.normal(0, 0.3, (bins, t))
        for _ in range(3):
            c = rng.uniform(5, bins - 5) + rng.uniform(-8, 8) * np.sin(tt / rng.uniform(4, 16))
            x += rng.uniform(1, 2.5) * np.exp(-((f - c) / rng.uniform(2, 6)) ** 2)
        x *= (0.5 + 0.5 * np.abs(np.sin(tt / rng.uniform(3, 9))))       # syllable-like energy
        out.append((x - x.mean()) / x.std())
    return np.stack(out).astype("float32")


def _weight_norm_folded(m):
    """weight_norm applied then removed on every conv, as PaddleSpeech does before export (remove_weight_norm)."""
    import paddle.nn as nn
    convs = [s for s in m.sublayers() if isinstance(s, (nn.Conv1D, nn.Conv1DTranspose))]
    for c in convs:
        nn.utils.weight_norm(c)
    for c in convs:
        nn.utils.remove_weight_norm(c)


def _print_wave(m, x, what: str):
    import paddle
    with paddle.no_grad():
        y = m(paddle.to_tensor(x)).numpy()
    print(f"{what}: in {list(x.shape)} out {list(y.shape)} std {y.std():.4g} |y|>0.99 {np.mean(np.abs(y) > 0.99):.3f} "
          f"per-sample std {[round(float(s), 3) for s in y.reshape(len(y), -1).std(1)]}" if y.ndim >= 2 and
          y.shape[0] == len(x) else f"{what}: in {list(x.shape)} out {list(y.shape)} std {y.std():.4g} "
          f"|y|>0.99 {np.mean(np.abs(y) > 0.99):.3f}")


# --- 1. vocoders


def _hifigan_classes():
    import paddle.nn as nn

    class ResBlock(nn.Layer):
        """HiFiGANResidualBlock: per dilation, LeakyReLU -> dilated conv -> LeakyReLU -> conv, added to its input."""

        def __init__(self, ch, k, dilations=(1, 3, 5), slope=0.1):
            super().__init__()
            self.convs1 = nn.LayerList([nn.Sequential(nn.LeakyReLU(slope),
                                                      nn.Conv1D(ch, ch, k, dilation=d, padding=(k - 1) // 2 * d))
                                        for d in dilations])
            self.convs2 = nn.LayerList([nn.Sequential(nn.LeakyReLU(slope), nn.Conv1D(ch, ch, k, padding=(k - 1) // 2))
                                        for _ in dilations])

        def forward(self, x):
            for c1, c2 in zip(self.convs1, self.convs2):
                x = c2(c1(x)) + x
            return x

    class HiFiGANGenerator(nn.Layer):
        def __init__(self, in_ch=80, ch=64, ups=(8, 8, 2, 2), rb_kernels=(3, 7, 11), slope=0.1):
            super().__init__()
            self.num_blocks = len(rb_kernels)
            self.input_conv = nn.Conv1D(in_ch, ch, 7, padding=3)
            self.upsamples = nn.LayerList()
            self.blocks = nn.LayerList()
            for i, u in enumerate(ups):
                cin, cout = ch // 2 ** i, ch // 2 ** (i + 1)
                self.upsamples.append(nn.Sequential(nn.LeakyReLU(slope), nn.Conv1DTranspose(
                    cin, cout, 2 * u, stride=u, padding=u // 2 + u % 2, output_padding=u % 2)))
                for k in rb_kernels:
                    self.blocks.append(ResBlock(cout, k, slope=slope))
            self.output_conv = nn.Sequential(nn.LeakyReLU(0.01), nn.Conv1D(ch // 2 ** len(ups), 1, 7, padding=3),
                                             nn.Tanh())

        def forward(self, c):
            c = self.input_conv(c)
            for i, up in enumerate(self.upsamples):
                c = up(c)
                cs = 0.0
                for j in range(self.num_blocks):
                    cs += self.blocks[i * self.num_blocks + j](c)
                c = cs / self.num_blocks
            return self.output_conv(c)

    return HiFiGANGenerator, ResBlock


def build_hifigan(out: Path):
    import paddle
    paddle.seed(81)
    Gen, ResBlock = _hifigan_classes()
    m = Gen()
    _weight_norm_folded(m)
    _init(m, 81, gain=0.7)
    rng = np.random.default_rng(81)
    for sub in m.sublayers():           # trained resblocks add a fraction of their input, not a multiple
        if isinstance(sub, ResBlock):
            for seq in sub.convs2:
                seq[1].weight.set_value((seq[1].weight.numpy() * rng.uniform(0.3, 0.6)).astype("float32"))
    m.eval()
    _print_wave(m, _mels(2, 24, 0), "hifigan")
    _save(m, out, [paddle.static.InputSpec([None, 80, None], "float32", "logmel")])


def _pqmf_filters(subbands=4, taps=62, cutoff=0.142, beta=9.0):
    """PaddleSpeech's PQMF (paddlespeech/t2s/modules/pqmf.py): the Kaiser-windowed prototype filter, cosine-
    modulated into the synthesis bank [1, subbands, taps + 1], and the up-down filter [subbands, subbands, subbands]."""
    from numpy import kaiser
    omega_c = np.pi * cutoff
    with np.errstate(invalid="ignore"):
        h_i = np.sin(omega_c * (np.arange(taps + 1) - 0.5 * taps)) / (np.pi * (np.arange(taps + 1) - 0.5 * taps))
    h_i[taps // 2] = np.cos(0) * cutoff
    h_proto = h_i * kaiser(taps + 1, beta)
    g = np.zeros((subbands, taps + 1))
    for k in range(subbands):
        g[k] = 2 * h_proto * np.cos((2 * k + 1) * (np.pi / (2 * subbands)) * (np.arange(taps + 1) - taps / 2)
                                    - (-1) ** k * np.pi / 4)
    updown = np.zeros((subbands, subbands, subbands))
    for k in range(subbands):
        updown[k, k, 0] = 1.0
    return g[None].astype("float32"), updown.astype("float32")


def _melgan_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ResidualStack(nn.Layer):
        def __init__(self, ch, dilation, k=3):
            super().__init__()
            self.stack = nn.Sequential(nn.LeakyReLU(0.2), nn.Pad1D((k - 1) // 2 * dilation, mode="reflect"),
                                       nn.Conv1D(ch, ch, k, dilation=dilation), nn.LeakyReLU(0.2),
                                       nn.Conv1D(ch, ch, 1))
            self.skip_layer = nn.Conv1D(ch, ch, 1)

        def forward(self, c):
            return self.stack(c) + self.skip_layer(c)

    class PQMF(nn.Layer):
        def __init__(self, subbands=4):
            super().__init__()
            g, updown = _pqmf_filters(subbands)
            self.subbands = subbands
            self.register_buffer("synthesis_filter", paddle.to_tensor(g))
            self.register_buffer("updown_filter", paddle.to_tensor(updown))
            self.pad_fn = nn.Pad1D((g.shape[-1] - 1) // 2, mode="constant", value=0.0)

        def synthesis(self, x):
            x = F.conv1d_transpose(x, self.updown_filter * self.subbands, stride=self.subbands)
            return F.conv1d(self.pad_fn(x), self.synthesis_filter)

    class MelGANGenerator(nn.Layer):
        def __init__(self, in_ch=80, out_ch=4, ch=96, ups=(4, 4, 4), stacks=3):
            super().__init__()
            layers = [nn.Pad1D(3, mode="reflect"), nn.Conv1D(in_ch, ch, 7)]
            for i, u in enumerate(ups):
                cin, cout = ch // 2 ** i, ch // 2 ** (i + 1)
                layers += [nn.LeakyReLU(0.2), nn.Conv1DTranspose(cin, cout, 2 * u, stride=u, padding=u // 2 + u % 2,
                                                                 output_padding=u % 2)]
                layers += [ResidualStack(cout, 3 ** j) for j in range(stacks)]
            layers += [nn.LeakyReLU(0.2), nn.Pad1D(3, mode="reflect"), nn.Conv1D(ch // 2 ** len(ups), out_ch, 7),
                       nn.Tanh()]
            self.melgan = nn.Sequential(*layers)
            self.pqmf = PQMF(out_ch) if out_ch > 1 else None

        def forward(self, c):
            out = self.melgan(c)
            return self.pqmf.synthesis(out) if self.pqmf is not None else out

    class MelGANInference(nn.Layer):
        """PaddleSpeech's vocoder export: the normalizer, then generator.inference on one unbatched mel [T, 80]."""

        def __init__(self, gen, mu, std):
            super().__init__()
            self.gen = gen
            self.register_buffer("mu", paddle.to_tensor(mu))
            self.register_buffer("std", paddle.to_tensor(std))

        def forward(self, logmel):
            c = (logmel - self.mu) / self.std
            out = self.gen(c.transpose([1, 0]).unsqueeze(0))
            return out.squeeze(0).transpose([1, 0])

    return MelGANGenerator, ResidualStack, MelGANInference


def _melgan(seed: int):
    import paddle
    paddle.seed(seed)
    Gen, Stack, _ = _melgan_classes()
    m = Gen()
    _weight_norm_folded(m)
    _init(m, seed, gain=0.7)
    rng = np.random.default_rng(seed)
    for sub in m.sublayers():
        if isinstance(sub, Stack):
            w = sub.stack[4].weight
            w.set_value((w.numpy() * rng.uniform(0.3, 0.6)).astype("float32"))
    last = m.melgan[-2]                 # the bands' tanh kept off saturation
    last.weight.set_value((last.weight.numpy() * 0.4).astype("float32"))
    m.eval()
    return m


def build_mb_melgan(out: Path):
    import paddle
    m = _melgan(82)
    _print_wave(m, _mels(2, 24, 1), "mb_melgan")
    _save(m, out, [paddle.static.InputSpec([None, 80, None], "float32", "logmel")])


def build_melgan_tv(out: Path):
    import paddle
    gen = _melgan(83)
    _, _, Inference = _melgan_classes()
    rng = np.random.default_rng(83)
    mu, std = rng.normal(-4, 1, 80).astype("float32"), rng.uniform(1.5, 2.5, 80).astype("float32")
    m = Inference(gen, mu, std)
    m.eval()
    x = _mels(1, 24, 2)[0].T * std + mu
    with paddle.no_grad():
        y = m(paddle.to_tensor(x.astype("float32"))).numpy()
    print(f"melgan_tv: in {list(x.shape)} out {list(y.shape)} std {y.std():.4g}")
    _save(m, out, [paddle.static.InputSpec([None, 80], "float32", "logmel")])


# --- 2. PANNs CNN14-lite


def build_cnn14(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ConvBlock(nn.Layer):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2D(cin, cout, 3, padding=1, bias_attr=False)
            self.conv2 = nn.Conv2D(cout, cout, 3, padding=1, bias_attr=False)
            self.bn1, self.bn2 = nn.BatchNorm2D(cout), nn.BatchNorm2D(cout)

        def forward(self, x, pool_size=(2, 2)):
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            return F.avg_pool2d(x, kernel_size=pool_size)

    class CNN14(nn.Layer):
        def __init__(self, mel_bins=64, widths=(16, 32, 64, 128), emb=64, classes=50):
            super().__init__()
            self.bn0 = nn.BatchNorm2D(mel_bins)
            blocks, cin = [], 1
            for w in widths:
                blocks.append(ConvBlock(cin, w))
                cin = w
            self.conv_blocks = nn.LayerList(blocks)
            self.fc1 = nn.Linear(cin, emb)
            self.fc_audioset = nn.Linear(emb, classes)
            self.dropout = nn.Dropout(0.2)

        def forward(self, x):
            x = x.transpose([0, 3, 2, 1])          # [N, 1, T, mel] -> [N, mel, T, 1]: bn0 over the mel bins
            x = self.bn0(x)
            x = x.transpose([0, 3, 2, 1])
            for block in self.conv_blocks:
                x = self.dropout(block(x))
            x = x.mean(axis=3)
            x = x.max(axis=2) + x.mean(axis=2)
            x = F.relu(self.fc1(self.dropout(x)))
            return F.sigmoid(self.fc_audioset(x))

    paddle.seed(84)
    m = CNN14()
    _init(m, 84)
    m.eval()
    spec = _mels(32, 96, 84, bins=64).transpose(0, 2, 1)[:, None]       # [N, 1, T, 64]
    feats = []
    hook = m.fc_audioset.register_forward_pre_hook(lambda layer, inp: feats.append(inp[0].numpy()))
    with paddle.no_grad():
        m(paddle.to_tensor(spec))
    hook.remove()
    f = feats[0]
    w = m.fc_audioset.weight.numpy()
    w = w * 2.0 / ((f - f.mean(0)) @ w).std(0, keepdims=True).clip(1e-6)   # logits std ~2, centred near -1
    m.fc_audioset.weight.set_value(w.astype("float32"))
    m.fc_audioset.bias.set_value((-(f.mean(0) @ w) - 1.0).astype("float32"))
    with paddle.no_grad():
        y = m(paddle.to_tensor(spec[:8])).numpy()
    print(f"cnn14: out {list(y.shape)} mean {y.mean():.3f} std {y.std():.3f} saturated "
          f"{np.mean((y < 2.5e-4) | (y > 1 - 2.5e-4)):.3f} argmax {sorted(set(y.argmax(-1).tolist()))}")
    _save(m, out, [paddle.static.InputSpec([None, 1, None, 64], "float32", "logmel")])


# --- 3. PaddleClas CNNs


def _conv_bn(cin, cout, k, s=1, groups=1, act="relu", padding=None):
    import paddle.nn as nn
    layers = [nn.Conv2D(cin, cout, k, s, (k - 1) // 2 if padding is None else padding, groups=groups,
                        bias_attr=False), nn.BatchNorm2D(cout)]
    if act == "relu":
        layers.append(nn.ReLU())
    elif act == "hardswish":
        layers.append(nn.Hardswish())
    return nn.Sequential(*layers)


def _classifier(m, fc, what, seed):
    _calibrate_head(m, fc, seed=seed)
    _check_images(m, (8, 3, 64, 64), what)


def _image_spec(h=64, w=64):
    import paddle
    return paddle.static.InputSpec([None, 3, h, w], "float32", "x")


def build_pplcnetv2(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class SEModule(nn.Layer):
        def __init__(self, c, r=4):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.conv1, self.conv2 = nn.Conv2D(c, c // r, 1), nn.Conv2D(c // r, c, 1)

        def forward(self, x):
            s = self.conv2(F.relu(self.conv1(self.avg_pool(x))))
            return paddle.multiply(x, F.hardsigmoid(s))

    class RepDepthwiseSeparable(nn.Layer):
        def __init__(self, cin, cout, stride, dw_size=3, split_pw=False, use_rep=False, use_se=False,
                     use_shortcut=False):
            super().__init__()
            self.use_rep, self.use_shortcut, self.split_pw = use_rep, use_shortcut, split_pw
            self.cin, self.stride, self.dw_size = cin, stride, dw_size
            if use_rep:
                self.dw_conv_list = nn.LayerList([_conv_bn(cin, cin, k, stride, groups=cin, act=None)
                                                  for k in range(dw_size, 0, -2)])
                self.dw_conv = None
            else:
                self.dw_conv = _conv_bn(cin, cin, dw_size, stride, groups=cin)
            self.se = SEModule(cin) if use_se else None
            if split_pw:
                self.pw_conv_1 = _conv_bn(cin, cout // 2, 1)
                self.pw_conv_2 = _conv_bn(cout // 2, cout, 1)
            else:
                self.pw_conv = _conv_bn(cin, cout, 1)

        def forward(self, x):
            inp = x
            if self.use_rep and self.dw_conv is None:
                x = F.relu(sum(b(x) for b in self.dw_conv_list))
            elif self.use_rep:
                x = F.relu(self.dw_conv(x))
            else:
                x = self.dw_conv(x)
            if self.se is not None:
                x = self.se(x)
            x = self.pw_conv_2(self.pw_conv_1(x)) if self.split_pw else self.pw_conv(x)
            return x + inp if self.use_shortcut else x

        def rep(self):
            """PaddleClas' RepDepthwiseSeparable.rep: the BN-folded 5x5, 3x3 and 1x1 kernels padded to 5x5 and
            summed into one depthwise conv with bias."""
            k, b = 0, 0
            for branch in self.dw_conv_list:
                conv, bn = branch[0], branch[1]
                t = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + bn._epsilon)
                w = conv.weight.numpy() * t.reshape(-1, 1, 1, 1)
                p = (self.dw_size - w.shape[-1]) // 2
                k = k + np.pad(w, [(0, 0), (0, 0), (p, p), (p, p)])
                b = b + bn.bias.numpy() - bn._mean.numpy() * t
            self.dw_conv = nn.Conv2D(self.cin, self.cin, self.dw_size, self.stride, (self.dw_size - 1) // 2,
                                     groups=self.cin)
            self.dw_conv.weight.set_value(k.astype("float32"))
            self.dw_conv.bias.set_value(b.astype("float32"))
            del self.dw_conv_list

    # in, k, split_pw, use_rep, use_se, use_shortcut (PP-LCNetV2 NET_CONFIG, scale 0.25, one block a stage)
    cfg = [(16, 3, False, False, False, False), (32, 3, False, False, False, False),
           (64, 5, True, True, True, False), (128, 5, False, True, False, True)]

    class PPLCNetV2(nn.Layer):
        def __init__(self, classes=100):
            super().__init__()
            self.stem = nn.Sequential(_conv_bn(3, 8, 3, 2), RepDepthwiseSeparable(8, 16, 1, 3))
            blocks = []
            for i, (c, k, split, rep, se, short) in enumerate(cfg):
                blocks.append(RepDepthwiseSeparable(c, c * 2 if i < 3 else c, 2 if i < 3 else 1, k, split, rep, se,
                                                    False))
                blocks.append(RepDepthwiseSeparable(c * 2 if i < 3 else c, c * 2 if i < 3 else c, 1, k, split, rep,
                                                    se, short or i == 3))
            self.stages = nn.Sequential(*blocks)
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.last_conv = nn.Conv2D(128, 256, 1, bias_attr=False)
            self.fc = nn.Linear(256, classes)

        def forward(self, x):
            x = F.relu(self.last_conv(self.avg_pool(self.stages(self.stem(x)))))
            return F.softmax(self.fc(x.flatten(1)), -1)

    paddle.seed(85)
    m = PPLCNetV2()
    _init(m, 85)
    m.eval()
    x = paddle.to_tensor(_images(4, 0))
    with paddle.no_grad():
        before = m(x).numpy()
        for sub in m.sublayers():
            if isinstance(sub, RepDepthwiseSeparable) and sub.use_rep:
                sub.rep()
        after = m(x).numpy()
    print(f"pplcnetv2: deploy form vs training form max |diff| {np.abs(after - before).max():.3g}")
    _classifier(m, m.fc, "pplcnetv2", 85)
    _save(m, out, [_image_spec()])


def build_ghostnet(out: Path):
    import math

    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class SEBlock(nn.Layer):
        def __init__(self, c, r=4):
            super().__init__()
            self.pool2d_gap = nn.AdaptiveAvgPool2D(1)
            self.squeeze, self.excitation = nn.Linear(c, c // r), nn.Linear(c // r, c)

        def forward(self, x):
            s = F.relu(self.squeeze(self.pool2d_gap(x).flatten(1)))
            e = paddle.clip(self.excitation(s), min=0, max=1)
            return x * e.unsqueeze([2, 3])

    class GhostModule(nn.Layer):
        def __init__(self, cin, oup, k=1, ratio=2, dw=3, stride=1, relu=True):
            super().__init__()
            init = int(math.ceil(oup / ratio))
            self._output_channels = oup
            act = "relu" if relu else None
            self.primary_conv = _conv_bn(cin, init, k, stride, act=act)
            self.cheap_operation = _conv_bn(init, init * (ratio - 1), dw, 1, groups=init, act=act)

        def forward(self, x):
            x = self.primary_conv(x)
            y = self.cheap_operation(x)
            return paddle.concat([x, y], axis=1)[:, :self._output_channels]

    class GhostBottleneck(nn.Layer):
        def __init__(self, cin, hidden, cout, k, stride, use_se):
            super().__init__()
            self.ghost1 = GhostModule(cin, hidden, relu=True)
            self.dw = _conv_bn(hidden, hidden, k, stride, groups=hidden, act=None) if stride == 2 else None
            self.se = SEBlock(hidden) if use_se else None
            self.ghost2 = GhostModule(hidden, cout, relu=False)
            self.shortcut = None if stride == 1 and cin == cout else nn.Sequential(
                _conv_bn(cin, cin, k, stride, groups=cin, act=None), _conv_bn(cin, cout, 1, act=None))

        def forward(self, x):
            y = self.ghost1(x)
            if self.dw is not None:
                y = self.dw(y)
            if self.se is not None:
                y = self.se(y)
            y = self.ghost2(y)
            return y + (x if self.shortcut is None else self.shortcut(x))

    # k, hidden, out, se, stride (GhostNet x0.5-ish; odd widths so that the ghost concat is sliced)
    cfg = [(3, 8, 8, False, 1), (3, 24, 13, False, 2), (3, 36, 13, False, 1), (5, 36, 21, True, 2),
           (5, 60, 21, True, 1), (3, 120, 41, False, 2), (3, 100, 41, True, 1)]

    class GhostNet(nn.Layer):
        def __init__(self, classes=100):
            super().__init__()
            self.conv1 = _conv_bn(3, 8, 3, 2)
            blocks, cin = [], 8
            for k, h, c, se, s in cfg:
                blocks.append(GhostBottleneck(cin, h, c, k, s, se))
                cin = c
            self.blocks = nn.Sequential(*blocks)
            self.conv_last = _conv_bn(cin, 120, 1)
            self.pool2d_gap = nn.AdaptiveAvgPool2D(1)
            self.fc_0 = nn.Sequential(nn.Conv2D(120, 256, 1), nn.ReLU())
            self.fc_1 = nn.Linear(256, classes)

        def forward(self, x):
            x = self.pool2d_gap(self.conv_last(self.blocks(self.conv1(x))))
            return F.softmax(self.fc_1(self.fc_0(x).flatten(1)), -1)

    paddle.seed(86)
    m = GhostNet()
    _init(m, 86)
    m.eval()
    _classifier(m, m.fc_1, "ghostnet", 86)
    _save(m, out, [_image_spec()])


def _bottleneck_net(kind: str):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Res2Block(nn.Layer):
        """Res2Net-vd bottleneck: 1x1 -> split into `scales`, y_i = conv3x3(x_i + y_{i-1}) (the last scale passes
        through, avg-pooled in a stride-2 block), concat -> 1x1; the vd shortcut avg-pools before its 1x1."""

        def __init__(self, cin, width, cout, stride, scales=4, groups=1):
            super().__init__()
            self.scales, self.stride, self.width = scales, stride, width
            self.conv0 = _conv_bn(cin, width * scales, 1)
            n = scales - 1 if scales > 1 else 1
            self.convs = nn.LayerList([_conv_bn(width, width, 3, stride, groups=groups) for _ in range(n)])
            self.pool = nn.AvgPool2D(3, stride, 1) if stride == 2 else None
            self.conv2 = _conv_bn(width * scales, cout, 1, act=None)
            self.short = None if cin == cout and stride == 1 else nn.Sequential(
                nn.AvgPool2D(stride, stride, ceil_mode=True) if stride == 2 else nn.Identity(),
                _conv_bn(cin, cout, 1, act=None))

        def forward(self, x):
            y = self.conv0(x)
            if self.scales == 1:
                ys = [self.convs[0](y)]
            else:
                xs = paddle.split(y, self.scales, axis=1)
                ys = []
                for i, conv in enumerate(self.convs):
                    ys.append(conv(xs[i] if i == 0 or self.stride == 2 else xs[i] + ys[-1]))
                ys.append(xs[-1] if self.pool is None else self.pool(xs[-1]))
            y = self.conv2(paddle.concat(ys, axis=1))
            return F.relu(y + (x if self.short is None else self.short(x)))

    class Net(nn.Layer):
        def __init__(self, classes=100):
            super().__init__()
            self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), _conv_bn(16, 16, 3), _conv_bn(16, 32, 3),
                                      nn.MaxPool2D(3, 2, 1))
            blocks, cin = [], 32
            for i, (w, c) in enumerate([(8, 64), (16, 128), (32, 256)]):
                for j in range(2):
                    s = 2 if j == 0 and i > 0 else 1
                    if kind == "res2net":
                        blocks.append(Res2Block(cin, w, c, s, scales=4))
                    else:                       # ResNeXt: one grouped 3x3 over width * 4 channels, cardinality 8
                        blocks.append(Res2Block(cin, w * 4, c, s, scales=1, groups=8))
                    cin = c
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            return F.softmax(self.fc(self.pool(self.blocks(self.stem(x))).flatten(1)), -1)

    return Net


def build_res2net(out: Path, kind: str = "res2net"):
    import paddle
    paddle.seed(87)
    m = _bottleneck_net(kind)()
    _init(m, 87)
    m.eval()
    _classifier(m, m.fc, kind, 87)
    _save(m, out, [_image_spec()])


def build_dla34(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class BasicBlock(nn.Layer):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = _conv_bn(cin, cout, 3, stride)
            self.conv2 = _conv_bn(cout, cout, 3, act=None)

        def forward(self, x, residual=None):
            residual = x if residual is None else residual
            return F.relu(self.conv2(self.conv1(x)) + residual)

    class Root(nn.Layer):
        def __init__(self, cin, cout, residual):
            super().__init__()
            self.conv = _conv_bn(cin, cout, 1, act=None)
            self.residual = residual

        def forward(self, *xs):
            y = self.conv(paddle.concat(list(xs), axis=1))
            return F.relu(y + xs[0] if self.residual else y)

    class Tree(nn.Layer):
        def __init__(self, levels, cin, cout, stride=1, level_root=False, root_dim=0, root_residual=False):
            super().__init__()
            root_dim = root_dim or 2 * cout
            if level_root:
                root_dim += cin
            if levels == 1:
                self.tree1 = BasicBlock(cin, cout, stride)
                self.tree2 = BasicBlock(cout, cout, 1)
                self.root = Root(root_dim, cout, root_residual)
            else:
                self.tree1 = Tree(levels - 1, cin, cout, stride, root_dim=0, root_residual=root_residual)
                self.tree2 = Tree(levels - 1, cout, cout, root_dim=root_dim + cout, root_residual=root_residual)
                self.root = None
            self.level_root, self.levels = level_root, levels
            self.downsample = nn.MaxPool2D(stride, stride) if stride > 1 else None
            self.project = _conv_bn(cin, cout, 1, act=None) if cin != cout else None

        def forward(self, x, residual=None, children=None):
            children = [] if children is None else children
            bottom = self.downsample(x) if self.downsample is not None else x
            residual = self.project(bottom) if self.project is not None else bottom
            if self.level_root:
                children.append(bottom)
            x1 = self.tree1(x, residual)
            if self.levels == 1:
                x2 = self.tree2(x1)
                return self.root(x2, x1, *children)
            return self.tree2(x1, children=children + [x1])

    class DLA(nn.Layer):
        def __init__(self, levels=(1, 1, 1, 2, 2, 1), ch=(8, 16, 24, 32, 64, 96), classes=100):
            super().__init__()
            self.base_layer = _conv_bn(3, ch[0], 7)
            self.level0 = _conv_bn(ch[0], ch[0], 3)
            self.level1 = _conv_bn(ch[0], ch[1], 3, 2)
            self.level2 = Tree(levels[2], ch[1], ch[2], 2, level_root=False, root_residual=False)
            self.level3 = Tree(levels[3], ch[2], ch[3], 2, level_root=True, root_residual=False)
            self.level4 = Tree(levels[4], ch[3], ch[4], 2, level_root=True, root_residual=False)
            self.level5 = Tree(levels[5], ch[4], ch[5], 2, level_root=True, root_residual=False)
            self.avgpool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Conv2D(ch[5], classes, 1)

        def forward(self, x):
            x = self.level1(self.level0(self.base_layer(x)))
            x = self.level5(self.level4(self.level3(self.level2(x))))
            return F.softmax(self.fc(self.avgpool(x)).flatten(1), -1)

    paddle.seed(88)
    m = DLA()
    _init(m, 88)
    m.eval()
    _calibrate_conv_head(m, m.fc, 88)
    _check_images(m, (8, 3, 64, 64), "dla34")
    _save(m, out, [_image_spec()])



def _calibrate_conv_head(m, fc, seed: int):
    """A 1x1-conv classifier calibrated as paddle_trial_models5._calibrate_head does a Linear: its logits centred over
    structured images, std ~2.5 per class."""
    import paddle
    feats = []
    hook = fc.register_forward_pre_hook(lambda layer, inp: feats.append(inp[0].numpy()))
    with paddle.no_grad():
        m(paddle.to_tensor(_images(32, 200 + seed)))
    hook.remove()
    f = feats[0].reshape(32, -1)
    w = fc.weight.numpy()[:, :, 0, 0].T
    w = w * 2.5 / ((f - f.mean(0)) @ w).std(0, keepdims=True).clip(1e-6)
    fc.weight.set_value(w.T[:, :, None, None].astype("float32"))
    fc.bias.set_value((-(f.mean(0) @ w) + np.random.default_rng(seed).normal(0, 0.5, w.shape[1])).astype("float32"))

def build_esnet(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    def channel_shuffle(x, groups):
        b, c, h, w = x.shape[0:4]
        x = paddle.reshape(x, [b, groups, c // groups, h, w])
        x = paddle.transpose(x, [0, 2, 1, 3, 4])
        return paddle.reshape(x, [b, c, h, w])

    class SEModule(nn.Layer):
        def __init__(self, c, r=4):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.conv1, self.conv2 = nn.Conv2D(c, c // r, 1), nn.Conv2D(c // r, c, 1)

        def forward(self, x):
            return x * F.hardsigmoid(self.conv2(F.relu(self.conv1(self.avg_pool(x)))))

    class ESBlock1(nn.Layer):
        def __init__(self, c, mid):
            super().__init__()
            self.pw_1_1 = _conv_bn(c // 2, mid // 2, 1, act="hardswish")
            self.dw_1 = _conv_bn(mid // 2, mid // 2, 3, groups=mid // 2, act=None)
            self.se = SEModule(mid)
            self.pw_1_2 = _conv_bn(mid, c // 2, 1, act="hardswish")

        def forward(self, x):
            x1, x2 = paddle.split(x, [x.shape[1] // 2, x.shape[1] // 2], axis=1)
            x3 = self.pw_1_1(x2)
            x3 = self.pw_1_2(self.se(paddle.concat([x3, self.dw_1(x3)], axis=1)))
            return channel_shuffle(paddle.concat([x1, x3], axis=1), 2)

    class ESBlock2(nn.Layer):
        def __init__(self, cin, mid, cout):
            super().__init__()
            self.dw_1 = _conv_bn(cin, cin, 3, 2, groups=cin, act=None)
            self.pw_1 = _conv_bn(cin, cout // 2, 1, act="hardswish")
            self.pw_2_1 = _conv_bn(cin, mid // 2, 1, act="hardswish")
            self.dw_2 = _conv_bn(mid // 2, mid // 2, 3, 2, groups=mid // 2, act=None)
            self.se = SEModule(mid // 2)
            self.pw_2_2 = _conv_bn(mid // 2, cout // 2, 1, act="hardswish")
            self.concat_dw = _conv_bn(cout, cout, 3, groups=cout, act=None)
            self.concat_pw = _conv_bn(cout, cout, 1, act="hardswish")

        def forward(self, x):
            x1 = self.pw_1(self.dw_1(x))
            x2 = self.pw_2_2(self.se(self.dw_2(self.pw_2_1(x))))
            return self.concat_pw(self.concat_dw(paddle.concat([x1, x2], axis=1)))

    class ESNet(nn.Layer):
        def __init__(self, classes=100):
            super().__init__()
            self.conv1 = _conv_bn(3, 16, 3, 2, act="hardswish")
            self.max_pool = nn.MaxPool2D(3, 2, 1)
            blocks, cin = [], 16
            for c, n in [(32, 2), (64, 3), (128, 2)]:
                blocks.append(ESBlock2(cin, c, c))
                blocks += [ESBlock1(c, c) for _ in range(n - 1)]
                cin = c
            self.blocks = nn.Sequential(*blocks)
            self.conv2 = _conv_bn(cin, 256, 1, act="hardswish")
            self.avg_pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Linear(256, classes)

        def forward(self, x):
            x = self.avg_pool(self.conv2(self.blocks(self.max_pool(self.conv1(x)))))
            return F.softmax(self.fc(x.flatten(1)), -1)

    paddle.seed(89)
    m = ESNet()
    _init(m, 89)
    m.eval()
    _classifier(m, m.fc, "esnet", 89)
    _save(m, out, [_image_spec()])


def build_cspdarknet(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    def mish(x):
        return x * paddle.tanh(F.softplus(x))

    class ConvBnMish(nn.Layer):
        def __init__(self, cin, cout, k, s=1):
            super().__init__()
            self.conv = nn.Conv2D(cin, cout, k, s, (k - 1) // 2, bias_attr=False)
            self.bn = nn.BatchNorm2D(cout)

        def forward(self, x):
            return mish(self.bn(self.conv(x)))

    class ResBlock(nn.Layer):
        def __init__(self, c, hidden):
            super().__init__()
            self.conv1, self.conv2 = ConvBnMish(c, hidden, 1), ConvBnMish(hidden, c, 3)

        def forward(self, x):
            return x + self.conv2(self.conv1(x))

    class CSPStage(nn.Layer):
        def __init__(self, cin, cout, n, first=False):
            super().__init__()
            half = cout if first else cout // 2
            self.conv_down = ConvBnMish(cin, cout, 3, 2)
            self.split_conv0, self.split_conv1 = ConvBnMish(cout, half, 1), ConvBnMish(cout, half, 1)
            self.blocks = nn.Sequential(*[ResBlock(half, cout // 2 if first else half) for _ in range(n)],
                                        ConvBnMish(half, half, 1))
            self.concat_conv = ConvBnMish(2 * half, cout, 1)

        def forward(self, x):
            x = self.conv_down(x)
            return self.concat_conv(paddle.concat([self.blocks(self.split_conv1(x)), self.split_conv0(x)], axis=1))

    class CSPDarkNet(nn.Layer):
        def __init__(self, classes=100):
            super().__init__()
            self.stem = ConvBnMish(3, 16, 3)
            self.stages = nn.Sequential(CSPStage(16, 32, 1, first=True), CSPStage(32, 64, 2), CSPStage(64, 128, 2),
                                        CSPStage(128, 192, 1))
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Linear(192, classes)

        def forward(self, x):
            return F.softmax(self.fc(self.pool(self.stages(self.stem(x))).flatten(1)), -1)

    paddle.seed(90)
    m = CSPDarkNet()
    _init(m, 90, gain=0.8)
    m.eval()
    _classifier(m, m.fc, "cspdarknet", 90)
    _save(m, out, [_image_spec()])


def build_bit_resnet(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class StdConv2d(nn.Conv2D):
        """BiT's weight-standardized conv: the kernel standardized per output channel in the forward pass."""

        def forward(self, x):
            w = self.weight
            m = w.mean(axis=[1, 2, 3], keepdim=True)
            v = ((w - m) ** 2).mean(axis=[1, 2, 3], keepdim=True)
            w = (w - m) / paddle.sqrt(v + 1e-10)
            return F.conv2d(x, w, None, self._stride, self._padding, self._dilation, self._groups)

    class PreActBottleneck(nn.Layer):
        def __init__(self, cin, cout, mid, stride=1, groups=8):
            super().__init__()
            self.gn1 = nn.GroupNorm(groups, cin)
            self.conv1 = StdConv2d(cin, mid, 1, bias_attr=False)
            self.gn2 = nn.GroupNorm(groups, mid)
            self.conv2 = StdConv2d(mid, mid, 3, stride, 1, bias_attr=False)
            self.gn3 = nn.GroupNorm(groups, mid)
            self.conv3 = StdConv2d(mid, cout, 1, bias_attr=False)
            self.downsample = StdConv2d(cin, cout, 1, stride, bias_attr=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            out = F.relu(self.gn1(x))
            residual = self.downsample(out) if self.downsample is not None else x
            out = self.conv1(out)
            out = self.conv2(F.relu(self.gn2(out)))
            out = self.conv3(F.relu(self.gn3(out)))
            return out * 0.5 + residual

    class ResNetV2(nn.Layer):
        def __init__(self, classes=100):
            super().__init__()
            self.root = nn.Sequential(StdConv2d(3, 32, 7, 2, 3, bias_attr=False), nn.Pad2D(1), nn.MaxPool2D(3, 2))
            self.body = nn.Sequential(PreActBottleneck(32, 64, 16), PreActBottleneck(64, 64, 16),
                                      PreActBottleneck(64, 128, 32, 2), PreActBottleneck(128, 256, 64, 2))
            self.norm = nn.GroupNorm(8, 256)
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.head = nn.Conv2D(256, classes, 1)

        def forward(self, x):
            x = self.pool(F.relu(self.norm(self.body(self.root(x)))))
            return F.softmax(self.head(x).flatten(1), -1)

    paddle.seed(91)
    m = ResNetV2()
    _init(m, 91)
    m.eval()
    _calibrate_conv_head(m, m.head, 91)
    _check_images(m, (8, 3, 64, 64), "bit_resnet")
    _save(m, out, [_image_spec()])


def build_style_in(out: Path):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    def conv_in(cin, cout, k, s=1, act=True):
        layers = [nn.Pad2D((k - 1) // 2, mode="reflect"), nn.Conv2D(cin, cout, k, s),
                  nn.InstanceNorm2D(cout)]
        return nn.Sequential(*(layers + [nn.ReLU()] if act else layers))

    class ResidualBlock(nn.Layer):
        def __init__(self, c):
            super().__init__()
            self.block = nn.Sequential(conv_in(c, c, 3), conv_in(c, c, 3, act=False))

        def forward(self, x):
            return x + self.block(x)

    class Upsample(nn.Layer):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = conv_in(cin, cout, 3)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    class TransformerNet(nn.Layer):
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(conv_in(3, 16, 9), conv_in(16, 32, 3, 2), conv_in(32, 64, 3, 2))
            self.res = nn.Sequential(*[ResidualBlock(64) for _ in range(3)])
            self.up = nn.Sequential(Upsample(64, 32), Upsample(32, 16))
            self.out = nn.Sequential(nn.Pad2D(4, mode="reflect"), nn.Conv2D(16, 3, 9))

        def forward(self, x):
            return paddle.tanh(self.out(self.up(self.res(self.down(x)))))

    paddle.seed(92)
    m = TransformerNet()
    _init(m, 92)
    m.eval()
    x = _images(2, 0)
    with paddle.no_grad():
        y = m(paddle.to_tensor(x)).numpy()
    print(f"style_in: out {list(y.shape)} std {y.std():.3f} |y|>0.99 {np.mean(np.abs(y) > 0.99):.3f}")
    _save(m, out, [paddle.static.InputSpec([None, 3, None, None], "float32", "x")])


# --- 4. PP-TSM-lite


def build_pptsm(out: Path, flat: bool = False):
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F
    num_seg, classes, size = 8, 20, 64

    class BottleneckBlock(nn.Layer):
        """ppTSM's ResNet-vd bottleneck: temporal_shift(seg_num, 1/8) before conv0; the vd shortcut avg-pools."""

        def __init__(self, cin, mid, stride, shortcut):
            super().__init__()
            self.conv0 = _conv_bn(cin, mid, 1)
            self.conv1 = _conv_bn(mid, mid, 3, stride)
            self.conv2 = _conv_bn(mid, mid * 4, 1, act=None)
            self.short = None if shortcut else nn.Sequential(
                nn.AvgPool2D(stride, stride, ceil_mode=True) if stride == 2 else nn.Identity(),
                _conv_bn(cin, mid * 4, 1, act=None))

        def forward(self, x):
            shifts = F.temporal_shift(x, num_seg, 1.0 / num_seg)
            y = self.conv2(self.conv1(self.conv0(shifts)))
            return F.relu(y + (x if self.short is None else self.short(x)))

    class PPTSM(nn.Layer):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), _conv_bn(16, 16, 3), _conv_bn(16, 32, 3),
                                      nn.MaxPool2D(3, 2, 1))
            blocks, cin = [], 32
            for i, mid in enumerate((8, 16, 32)):
                for j in range(2):
                    blocks.append(BottleneckBlock(cin, mid, 2 if j == 0 and i > 0 else 1, shortcut=j > 0))
                    cin = mid * 4
            self.blocks = nn.Sequential(*blocks)
            self.avgpool2d = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Linear(cin, classes)
            self.cin = cin

        def forward(self, x):
            if not flat:
                x = paddle.reshape(x, [-1, 3, size, size])
            x = self.avgpool2d(self.blocks(self.stem(x)))
            x = paddle.reshape(x, [-1, num_seg, self.cin]).mean(axis=1)
            return F.softmax(self.fc(x), -1)

    paddle.seed(93)
    m = PPTSM()
    _init(m, 93)
    m.eval()
    clips = _images(4 * num_seg, 93)                   # 4 clips of 8 frames: one scene each, objects moving
    feats = []
    hook = m.fc.register_forward_pre_hook(lambda layer, inp: feats.append(inp[0].numpy()))
    with paddle.no_grad():
        m(paddle.to_tensor(clips if flat else clips.reshape(4, num_seg, 3, size, size)))
    hook.remove()
    f = feats[0]
    w = m.fc.weight.numpy()
    w = w * 2.5 / ((f - f.mean(0)) @ w).std(0, keepdims=True).clip(1e-6)
    m.fc.weight.set_value(w.astype("float32"))
    m.fc.bias.set_value((-(f.mean(0) @ w)).astype("float32"))
    with paddle.no_grad():
        y = m(paddle.to_tensor(clips if flat else clips.reshape(4, num_seg, 3, size, size))).numpy()
    print(f"pptsm{'_flat' if flat else ''}: out {list(y.shape)} max p {y.max():.3f} argmax {y.argmax(-1).tolist()}")
    shape = [None, 3, size, size] if flat else [None, num_seg, 3, size, size]
    _save(m, out, [paddle.static.InputSpec(shape, "float32", "data_batch_0")])


BUILDERS = {
    "hifigan": build_hifigan,
    "mb_melgan": build_mb_melgan,
    "melgan_tv": build_melgan_tv,
    "cnn14": build_cnn14,
    "pplcnetv2": build_pplcnetv2,
    "ghostnet": build_ghostnet,
    "res2net": build_res2net,
    "resnext": lambda out: build_res2net(out, "resnext"),
    "dla34": build_dla34,
    "esnet": build_esnet,
    "cspdarknet": build_cspdarknet,
    "bit_resnet": build_bit_resnet,
    "style_in": build_style_in,
    "pptsm": build_pptsm,
    "pptsm_flat": lambda out: build_pptsm(out, flat=True),
}

if __name__ == "__main__":
    kind, dest = sys.argv[1], Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    BUILDERS[kind](dest)
