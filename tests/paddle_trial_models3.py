"""Small PaddleSpeech-like TTS models for a new-user trial of paddle2ort.

Usage: python paddle_trial_models3.py NAME OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def _init(layer, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    for p in layer.parameters():
        if len(p.shape) == 1:
            if "norm" in p.name or "layer_norm" in p.name:
                continue
            v = rng.normal(0, 0.05, p.shape)
        else:
            fan_in = int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 1
            v = rng.normal(0, scale / np.sqrt(max(fan_in, 1)), p.shape)
        p.set_value(v.astype("float32"))


# ---------------- HiFiGAN (PaddleSpeech paddlespeech/t2s/models/hifigan) ----
class ResidualBlock(nn.Layer):
    def __init__(self, ch, k=3, dilations=(1, 3, 5)):
        super().__init__()
        self.convs1 = nn.LayerList()
        self.convs2 = nn.LayerList()
        for d in dilations:
            self.convs1.append(nn.Sequential(
                nn.LeakyReLU(0.1),
                nn.Conv1D(ch, ch, k, dilation=d, padding=(k - 1) // 2 * d)))
            self.convs2.append(nn.Sequential(
                nn.LeakyReLU(0.1),
                nn.Conv1D(ch, ch, k, dilation=1, padding=(k - 1) // 2)))

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = c2(c1(x)) + x
        return x


class HiFiGANGenerator(nn.Layer):
    def __init__(self, in_ch=80, ch=64, ups=(4, 4), kernels=(8, 8),
                 rb_kernels=(3, 7), rb_dil=((1, 3, 5), (1, 3, 5))):
        super().__init__()
        self.num_upsamples = len(ups)
        self.num_blocks = len(rb_kernels)
        self.input_conv = nn.Conv1D(in_ch, ch, 7, padding=3)
        self.upsamples = nn.LayerList()
        self.blocks = nn.LayerList()
        for i, (u, k) in enumerate(zip(ups, kernels)):
            cin, cout = ch // (2 ** i), ch // (2 ** (i + 1))
            self.upsamples.append(nn.Sequential(
                nn.LeakyReLU(0.1),
                nn.Conv1DTranspose(cin, cout, k, stride=u,
                                   padding=u // 2 + u % 2,
                                   output_padding=u % 2)))
            for rk, rd in zip(rb_kernels, rb_dil):
                self.blocks.append(ResidualBlock(cout, rk, rd))
        self.output_conv = nn.Sequential(
            nn.LeakyReLU(0.01),
            nn.Conv1D(ch // (2 ** len(ups)), 1, 7, padding=3),
            nn.Tanh())

    def forward(self, c):
        c = self.input_conv(c)
        for i in range(self.num_upsamples):
            c = self.upsamples[i](c)
            cs = 0.0
            for j in range(self.num_blocks):
                cs += self.blocks[i * self.num_blocks + j](c)
            c = cs / self.num_blocks
        return self.output_conv(c)


def build_hifigan(out_dir: Path):
    paddle.seed(0)
    m = HiFiGANGenerator()
    # weight norm applied then removed, as PaddleSpeech does before export
    for layer in m.sublayers():
        if isinstance(layer, (nn.Conv1D, nn.Conv1DTranspose)):
            nn.utils.weight_norm(layer)
    for layer in m.sublayers():
        if isinstance(layer, (nn.Conv1D, nn.Conv1DTranspose)):
            nn.utils.remove_weight_norm(layer)
    _init(m, 1, scale=1.4)
    m.eval()
    x = paddle.randn([1, 80, 20])
    y = m(x)
    print("hifigan out", y.shape, float(y.std()))
    paddle.jit.save(m, str(out_dir / "inference"), input_spec=[
        paddle.static.InputSpec([None, 80, None], "float32", name="logmel")])


# ---------------- MelGAN (paddlespeech/t2s/models/melgan) ----------------
class MelGANResStack(nn.Layer):
    def __init__(self, ch, dilation):
        super().__init__()
        self.stack = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Pad1D(dilation, mode="reflect"),
            nn.Conv1D(ch, ch, 3, dilation=dilation),
            nn.LeakyReLU(0.2),
            nn.Conv1D(ch, ch, 1))
        self.skip = nn.Conv1D(ch, ch, 1)

    def forward(self, x):
        return self.stack(x) + self.skip(x)


class MelGANGenerator(nn.Layer):
    def __init__(self, in_ch=80, ch=64, ups=(4, 4), stacks=3):
        super().__init__()
        layers = [nn.Pad1D(3, mode="reflect"), nn.Conv1D(in_ch, ch, 7)]
        for i, u in enumerate(ups):
            cin, cout = ch // (2 ** i), ch // (2 ** (i + 1))
            layers += [nn.LeakyReLU(0.2),
                       nn.Conv1DTranspose(cin, cout, u * 2, stride=u,
                                          padding=u // 2 + u % 2,
                                          output_padding=u % 2)]
            for j in range(stacks):
                layers.append(MelGANResStack(cout, 3 ** j))
        layers += [nn.LeakyReLU(0.2), nn.Pad1D(3, mode="reflect"),
                   nn.Conv1D(ch // (2 ** len(ups)), 1, 7), nn.Tanh()]
        self.melgan = nn.Sequential(*layers)

    def forward(self, c):
        return self.melgan(c)


def build_melgan(out_dir: Path):
    paddle.seed(0)
    m = MelGANGenerator()
    _init(m, 2, scale=1.4)
    m.eval()
    y = m(paddle.randn([1, 80, 20]))
    print("melgan out", y.shape, float(y.std()))
    paddle.jit.save(m, str(out_dir / "inference"), input_spec=[
        paddle.static.InputSpec([None, 80, None], "float32", name="logmel")])


# ---------------- FastSpeech2-lite (paddlespeech/t2s/models/fastspeech2) ----
class PositionalEncoding(nn.Layer):
    def __init__(self, d, max_len=2000):
        super().__init__()
        pos = np.arange(max_len)[:, None]
        div = np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))
        pe = np.zeros((max_len, d), "float32")
        pe[:, 0::2] = np.sin(pos * div)
        pe[:, 1::2] = np.cos(pos * div)
        self.register_buffer("pe", paddle.to_tensor(pe[None]))
        self.xscale = d ** 0.5

    def forward(self, x):
        T = paddle.shape(x)[1]
        return x * self.xscale + self.pe[:, :T]


class FFTBlock(nn.Layer):
    """Conformer-free transformer block as FastSpeech2 (normalize_before)."""

    def __init__(self, d, heads, ff, k=3):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiHeadAttention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        # conv1d positionwise feed forward (FastSpeech2 uses conv1d ffn)
        self.w1 = nn.Conv1D(d, ff, k, padding=k // 2)
        self.w2 = nn.Conv1D(ff, d, k, padding=k // 2)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h)
        h = self.norm2(x)
        h = self.w2(F.relu(self.w1(h.transpose([0, 2, 1])))).transpose([0, 2, 1])
        return x + h


class VariancePredictor(nn.Layer):
    def __init__(self, d, ch=64, k=3, layers=2):
        super().__init__()
        self.conv = nn.LayerList()
        self.norms = nn.LayerList()
        for i in range(layers):
            self.conv.append(nn.Conv1D(d if i == 0 else ch, ch, k, padding=k // 2))
            self.norms.append(nn.LayerNorm(ch))
        self.linear = nn.Linear(ch, 1)

    def forward(self, x):
        x = x.transpose([0, 2, 1])
        for c, n in zip(self.conv, self.norms):
            x = F.relu(c(x))
            x = n(x.transpose([0, 2, 1])).transpose([0, 2, 1])
        return self.linear(x.transpose([0, 2, 1])).squeeze(-1)


class FastSpeech2Lite(nn.Layer):
    def __init__(self, vocab=64, d=64, heads=2, ff=128, odim=80):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.pos_enc = PositionalEncoding(d)
        self.encoder = nn.LayerList([FFTBlock(d, heads, ff) for _ in range(2)])
        self.enc_norm = nn.LayerNorm(d)
        self.duration_predictor = VariancePredictor(d)
        self.pitch_predictor = VariancePredictor(d)
        self.pitch_embed = nn.Conv1D(1, d, 1)
        self.dec_pos = PositionalEncoding(d)
        self.decoder = nn.LayerList([FFTBlock(d, heads, ff) for _ in range(2)])
        self.dec_norm = nn.LayerNorm(d)
        self.feat_out = nn.Linear(d, odim)

    def forward(self, text):
        # text: [1, L] int64 (PaddleSpeech exports FastSpeech2 with batch 1)
        x = self.pos_enc(self.embed(text))
        for b in self.encoder:
            x = b(x)
        hs = self.enc_norm(x)
        # duration predictor works in log domain: d = exp(log_d) - 1, rounded
        log_d = self.duration_predictor(hs)
        d = paddle.clip(paddle.round(paddle.exp(paddle.clip(log_d, max=2.0)) - 1.0), min=0)
        d = d.astype("int64")
        p = self.pitch_predictor(hs)
        hs = hs + self.pitch_embed(p.unsqueeze(1)).transpose([0, 2, 1])
        # length regulator: repeat_interleave each phone by its duration
        if self.gather_lr:     # equivalent cumsum/gather length regulator
            cs = paddle.cumsum(d[0])
            t = paddle.arange(cs[-1], dtype="int64")
            idx = (t.unsqueeze(1) >= cs.unsqueeze(0)).astype("int64").sum(1)
            hs = paddle.gather(hs[0], idx).unsqueeze(0)
        else:
            hs = paddle.repeat_interleave(hs[0], d[0], axis=0).unsqueeze(0)
        x = self.dec_pos(hs)
        for b in self.decoder:
            x = b(x)
        return self.feat_out(self.dec_norm(x))


def build_fastspeech2(out_dir: Path, gather_lr=False):
    paddle.seed(0)
    m = FastSpeech2Lite()
    m.gather_lr = gather_lr
    _init(m, 3, scale=1.0)
    # bias the duration predictor so durations are ~1..6 frames
    m.duration_predictor.linear.bias.set_value(np.array([1.2], "float32"))
    m.eval()
    ids = paddle.to_tensor(np.random.default_rng(0).integers(1, 64, (1, 12)))
    y = m(ids)
    print("fastspeech2 out", y.shape, float(y.std()))
    paddle.jit.save(m, str(out_dir / "inference"), input_spec=[
        paddle.static.InputSpec([1, None], "int64", name="text")])


BUILDERS = {
    "hifigan": build_hifigan,
    "fastspeech2": build_fastspeech2,
    "melgan": build_melgan,
    "fastspeech2_gather": lambda d: build_fastspeech2(d, gather_lr=True),
}

if __name__ == "__main__":
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    BUILDERS[sys.argv[1]](out)
