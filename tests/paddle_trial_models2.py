"""Trial builders of vision model families paddle2ort had not been tried on:
`python tests/paddle_trial_models2.py NAME DIR`.

Small, random-weight re-creations (eval mode) of the public model code of PaddleGAN (ESRGAN's RRDBNet, an EDSR-like
pixel-shuffle SR net, the AnimeGANv2 generator, pix2pix's UnetGenerator), PaddleSeg matting (MODNet, PP-Matting),
PaddleDetection keypoints (HRNet-W32-lite top-down, with and without its heatmap post-processing), MiDaS-small depth,
a BlazeFace face detector without NMS, and two interpolate probes (nearest with scale_factor, bilinear with
align_corners=True). Each is saved with paddle.jit.save(layer, DIR/"inference", input_spec=[...]) so DIR holds
inference.json + inference.pdiparams. Paddle is imported inside the builders.
"""
from __future__ import annotations

import sys
from pathlib import Path


# ---------------------------------------------------------------- shared


def _save(layer, out: Path, specs):
    import paddle
    layer.eval()
    out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(layer, str(out / "inference"), input_spec=specs)


def _randomize_norms(layer, seed: int = 0):
    """BatchNorm/InstanceNorm/GroupNorm affine params and running stats drawn as a trained net has them (gamma ~ 1,
    small beta, running var ~ 1): with the defaults (mean 0, var 1) every BN is the identity."""
    import numpy as np
    import paddle
    import paddle.nn as nn
    rng = np.random.default_rng(seed)
    for sub in layer.sublayers():
        if isinstance(sub, (nn.BatchNorm2D, nn.InstanceNorm2D, nn.GroupNorm, nn.LayerNorm)):
            if getattr(sub, "weight", None) is not None:
                sub.weight.set_value(rng.uniform(0.7, 1.3, sub.weight.shape).astype("float32"))
            if getattr(sub, "bias", None) is not None:
                sub.bias.set_value(rng.normal(0, 0.1, sub.bias.shape).astype("float32"))
            if isinstance(sub, nn.BatchNorm2D):
                sub._mean.set_value(rng.normal(0, 0.1, sub._mean.shape).astype("float32"))
                sub._variance.set_value(rng.uniform(0.5, 1.5, sub._variance.shape).astype("float32"))
    paddle.seed(seed)


def _image_spec(name="x", h=None, w=None, c=3):
    import paddle
    return paddle.static.InputSpec([None, c, h, w], "float32", name)


def _conv_bn_relu(cin, cout, k=3, s=1, groups=1, act="relu"):
    import paddle.nn as nn
    layers = [nn.Conv2D(cin, cout, k, s, k // 2, groups=groups, bias_attr=False), nn.BatchNorm2D(cout)]
    if act == "relu":
        layers.append(nn.ReLU())
    elif act == "relu6":
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- 1. PaddleGAN


def build_esrgan(out: Path, nf: int = 16, nb: int = 2, gc: int = 8):
    """PaddleGAN ppgan/models/generators/rrdb_net.py RRDBNet: conv_first, nb RRDBs (each 3 ResidualDenseBlock_5C,
    dense concatenation, LeakyReLU 0.2, residual scale 0.2), trunk_conv, x4 by two F.interpolate(scale_factor=2,
    mode='nearest') + upconv + LeakyReLU, HRconv, conv_last. Input: an LR image in [0, 1]."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ResidualDenseBlock_5C(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2D(nf, gc, 3, 1, 1)
            self.conv2 = nn.Conv2D(nf + gc, gc, 3, 1, 1)
            self.conv3 = nn.Conv2D(nf + 2 * gc, gc, 3, 1, 1)
            self.conv4 = nn.Conv2D(nf + 3 * gc, gc, 3, 1, 1)
            self.conv5 = nn.Conv2D(nf + 4 * gc, nf, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2)

        def forward(self, x):
            x1 = self.lrelu(self.conv1(x))
            x2 = self.lrelu(self.conv2(paddle.concat((x, x1), 1)))
            x3 = self.lrelu(self.conv3(paddle.concat((x, x1, x2), 1)))
            x4 = self.lrelu(self.conv4(paddle.concat((x, x1, x2, x3), 1)))
            x5 = self.conv5(paddle.concat((x, x1, x2, x3, x4), 1))
            return x5 * 0.2 + x

    class RRDB(nn.Layer):
        def __init__(self):
            super().__init__()
            self.RDB1, self.RDB2, self.RDB3 = ResidualDenseBlock_5C(), ResidualDenseBlock_5C(), ResidualDenseBlock_5C()

        def forward(self, x):
            return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x

    class RRDBNet(nn.Layer):
        def __init__(self, in_nc=3, out_nc=3):
            super().__init__()
            self.conv_first = nn.Conv2D(in_nc, nf, 3, 1, 1)
            self.RRDB_trunk = nn.Sequential(*[RRDB() for _ in range(nb)])
            self.trunk_conv = nn.Conv2D(nf, nf, 3, 1, 1)
            self.upconv1 = nn.Conv2D(nf, nf, 3, 1, 1)
            self.upconv2 = nn.Conv2D(nf, nf, 3, 1, 1)
            self.HRconv = nn.Conv2D(nf, nf, 3, 1, 1)
            self.conv_last = nn.Conv2D(nf, out_nc, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2)

        def forward(self, x):
            fea = self.conv_first(x)
            trunk = self.trunk_conv(self.RRDB_trunk(fea))
            fea = fea + trunk
            fea = self.lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode='nearest')))
            fea = self.lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode='nearest')))
            return self.conv_last(self.lrelu(self.HRconv(fea)))

    paddle.seed(11)
    _save(RRDBNet(), out, [_image_spec("lq")])


def build_edsr_ps(out: Path, nf: int = 32, nb: int = 4):
    """An EDSR/PAN-like SR net with pixel-shuffle x4 (PaddleGAN's EDSR Upsampler: conv to 4*nf + PixelShuffle(2),
    twice), residual blocks with res_scale 0.1 and MeanShift in/out. Input: an LR image in [0, 255]-ish."""
    import paddle
    import paddle.nn as nn

    class ResBlock(nn.Layer):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2D(nf, nf, 3, padding=1), nn.ReLU(), nn.Conv2D(nf, nf, 3, padding=1))

        def forward(self, x):
            return self.body(x) * 0.1 + x

    class EDSR(nn.Layer):
        def __init__(self):
            super().__init__()
            self.mean = paddle.to_tensor([0.4488, 0.4371, 0.4040]).reshape([1, 3, 1, 1])
            self.head = nn.Conv2D(3, nf, 3, padding=1)
            self.body = nn.Sequential(*[ResBlock() for _ in range(nb)], nn.Conv2D(nf, nf, 3, padding=1))
            self.tail = nn.Sequential(nn.Conv2D(nf, 4 * nf, 3, padding=1), nn.PixelShuffle(2),
                                      nn.Conv2D(nf, 4 * nf, 3, padding=1), nn.PixelShuffle(2),
                                      nn.Conv2D(nf, 3, 3, padding=1))

        def forward(self, x):
            x = x - self.mean
            x = self.head(x)
            x = self.body(x) + x
            return self.tail(x) + self.mean

    paddle.seed(12)
    _save(EDSR(), out, [_image_spec("lq")])


def build_animegan(out: Path):
    """AnimeGANv2 generator (PaddleGAN generator_animegan / bryandlee's AnimeGAN2): ConvNormLReLU (reflect pad,
    conv, InstanceNorm, LeakyReLU 0.2), inverted residual blocks, bilinear resize to half and full input size
    (align_corners=True, sizes read from the input), Tanh output in [-1, 1]."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ConvNormLReLU(nn.Sequential):
        def __init__(self, cin, cout, k=3, s=1, pad=1, groups=1):
            super().__init__(nn.Pad2D(pad, mode="reflect"), nn.Conv2D(cin, cout, k, s, 0, groups=groups,
                                                                        bias_attr=False),
                             nn.InstanceNorm2D(cout), nn.LeakyReLU(0.2))

    class InvertedResBlock(nn.Layer):
        def __init__(self, cin, cout, expansion_ratio=2):
            super().__init__()
            self.use_res_connect = cin == cout
            bottleneck = int(round(cin * expansion_ratio))
            self.layers = nn.Sequential(
                ConvNormLReLU(cin, bottleneck, k=1, pad=0),
                ConvNormLReLU(bottleneck, bottleneck, groups=bottleneck),
                nn.Conv2D(bottleneck, cout, 1, bias_attr=False),
                nn.InstanceNorm2D(cout))

        def forward(self, x):
            out = self.layers(x)
            return x + out if self.use_res_connect else out

    class Generator(nn.Layer):
        def __init__(self, c=16):
            super().__init__()
            self.block_a = nn.Sequential(ConvNormLReLU(3, c, k=7, pad=3),
                                         ConvNormLReLU(c, 2 * c, s=2, pad=(0, 1, 0, 1)),
                                         ConvNormLReLU(2 * c, 2 * c))
            self.block_b = nn.Sequential(ConvNormLReLU(2 * c, 4 * c, s=2, pad=(0, 1, 0, 1)),
                                         ConvNormLReLU(4 * c, 4 * c))
            self.block_c = nn.Sequential(ConvNormLReLU(4 * c, 4 * c), InvertedResBlock(4 * c, 8 * c),
                                         InvertedResBlock(8 * c, 8 * c), InvertedResBlock(8 * c, 8 * c),
                                         ConvNormLReLU(8 * c, 4 * c))
            self.block_d = nn.Sequential(ConvNormLReLU(4 * c, 4 * c), ConvNormLReLU(4 * c, 4 * c))
            self.block_e = nn.Sequential(ConvNormLReLU(4 * c, 2 * c), ConvNormLReLU(2 * c, 2 * c),
                                         ConvNormLReLU(2 * c, c, k=7, pad=3))
            self.out_layer = nn.Sequential(nn.Conv2D(c, 3, 1, bias_attr=False), nn.Tanh())

        def forward(self, x):
            out = self.block_a(x)
            half_size = paddle.shape(out)[2:]
            out = self.block_b(out)
            out = self.block_c(out)
            out = F.interpolate(out, size=half_size, mode="bilinear", align_corners=True)
            out = self.block_d(out)
            out = F.interpolate(out, size=paddle.shape(x)[2:], mode="bilinear", align_corners=True)
            out = self.block_e(out)
            return self.out_layer(out)

    paddle.seed(13)
    g = Generator()
    _randomize_norms(g, 13)
    _save(g, out, [_image_spec("x")])


def build_unet(out: Path, ngf: int = 16, num_downs: int = 5):
    """pix2pix UnetGenerator (PaddleGAN generator_unet.py UnetSkipConnectionBlock): Conv 4x4 s2 + LeakyReLU 0.2 +
    BatchNorm down, ReLU + Conv2DTranspose 4x4 s2 + BatchNorm up, skip concatenation, Dropout in the inner blocks
    (identity in eval), Tanh output. Input height/width multiples of 2**num_downs."""
    import paddle
    import paddle.nn as nn

    class Block(nn.Layer):
        def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                     use_dropout=False):
            super().__init__()
            self.outermost = outermost
            input_nc = input_nc or outer_nc
            downconv = nn.Conv2D(input_nc, inner_nc, 4, 2, 1, bias_attr=False)
            downrelu, downnorm = nn.LeakyReLU(0.2), nn.BatchNorm2D(inner_nc)
            uprelu, upnorm = nn.ReLU(), nn.BatchNorm2D(outer_nc)
            if outermost:
                upconv = nn.Conv2DTranspose(inner_nc * 2, outer_nc, 4, 2, 1)
                model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
            elif innermost:
                upconv = nn.Conv2DTranspose(inner_nc, outer_nc, 4, 2, 1, bias_attr=False)
                model = [downrelu, downconv, uprelu, upconv, upnorm]
            else:
                upconv = nn.Conv2DTranspose(inner_nc * 2, outer_nc, 4, 2, 1, bias_attr=False)
                model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
                if use_dropout:
                    model.append(nn.Dropout(0.5))
            self.model = nn.Sequential(*model)

        def forward(self, x):
            return self.model(x) if self.outermost else paddle.concat([x, self.model(x)], 1)

    class UnetGenerator(nn.Layer):
        def __init__(self):
            super().__init__()
            blk = Block(ngf * 8, ngf * 8, innermost=True)
            for _ in range(num_downs - 5):
                blk = Block(ngf * 8, ngf * 8, submodule=blk, use_dropout=True)
            blk = Block(ngf * 4, ngf * 8, submodule=blk)
            blk = Block(ngf * 2, ngf * 4, submodule=blk)
            blk = Block(ngf, ngf * 2, submodule=blk)
            self.model = Block(3, ngf, input_nc=3, submodule=blk, outermost=True)

        def forward(self, x):
            return self.model(x)

    paddle.seed(14)
    g = UnetGenerator()
    _randomize_norms(g, 14)
    _save(g, out, [_image_spec("x")])


# ---------------------------------------------------------------- 2. PaddleSeg matting


def _mbv2_lite(widths=(16, 24, 32, 64)):
    """A MobileNetV2-lite encoder returning features at 1/2, 1/4, 1/8, 1/16 and 1/32."""
    import paddle.nn as nn

    class IR(nn.Layer):
        def __init__(self, cin, cout, s, t=4):
            super().__init__()
            hid = cin * t
            self.res = s == 1 and cin == cout
            self.conv = nn.Sequential(_conv_bn_relu(cin, hid, 1, act="relu6"),
                                      _conv_bn_relu(hid, hid, 3, s, groups=hid, act="relu6"),
                                      _conv_bn_relu(hid, cout, 1, act=None))

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class Enc(nn.Layer):
        def __init__(self):
            super().__init__()
            w0, w1, w2, w3 = widths
            self.stem = _conv_bn_relu(3, w0, 3, 2, act="relu6")             # 1/2
            self.s1 = nn.Sequential(IR(w0, w0, 1), IR(w0, w1, 2))            # 1/4
            self.s2 = nn.Sequential(IR(w1, w2, 2), IR(w2, w2, 1))            # 1/8
            self.s3 = nn.Sequential(IR(w2, w3, 2), IR(w3, w3, 1))            # 1/16
            self.s4 = nn.Sequential(IR(w3, 2 * w3, 2), IR(2 * w3, 2 * w3, 1))  # 1/32
            self.channels = (w0, w1, w2, w3, 2 * w3)

        def forward(self, x):
            f0 = self.stem(x)
            f1 = self.s1(f0)
            f2 = self.s2(f1)
            f3 = self.s3(f2)
            f4 = self.s4(f3)
            return [f0, f1, f2, f3, f4]

    return Enc()


def build_modnet(out: Path):
    """PaddleSeg Matting MODNet (contrib/Matting/ppmatting/models/modnet.py): MobileNetV2 backbone, LRBranch (SE
    block on enc32x, bilinear x2 upsampling, lr8x), HRBranch (enc2x/enc4x with the image, 1/4 -> 1/2 -> full),
    FusionBranch (lr8x up x4 bilinear + hr2x, up x2 to full, concat with the image, 1-channel conv, sigmoid).
    Inference returns the alpha matte [N, 1, H, W]."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    hr = 16

    class SEBlock(nn.Layer):
        def __init__(self, c, r=4):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Sequential(nn.Conv2D(c, c // r, 1, bias_attr=False), nn.ReLU(),
                                    nn.Conv2D(c // r, c, 1, bias_attr=False), nn.Sigmoid())

        def forward(self, x):
            return x * self.fc(self.pool(x))

    class MODNet(nn.Layer):
        def __init__(self):
            super().__init__()
            self.backbone = _mbv2_lite()
            ch = self.backbone.channels
            self.se_block = SEBlock(ch[4])
            self.conv_lr16x = _conv_bn_relu(ch[4], ch[3], 5)
            self.conv_lr8x = _conv_bn_relu(ch[3], ch[2], 5)
            self.conv_lr = nn.Conv2D(ch[2], 1, 3, padding=1)
            self.tohr_enc2x = _conv_bn_relu(ch[0], hr, 1)
            self.conv_enc2x = _conv_bn_relu(hr + 3, hr, 3, 2)
            self.tohr_enc4x = _conv_bn_relu(ch[1], hr, 1)
            self.conv_enc4x = _conv_bn_relu(2 * hr, 2 * hr, 3)
            self.conv_hr4x = nn.Sequential(_conv_bn_relu(2 * hr + ch[2] + 3, 2 * hr, 3), _conv_bn_relu(2 * hr, hr, 3))
            self.conv_hr2x = nn.Sequential(_conv_bn_relu(2 * hr, 2 * hr, 3), _conv_bn_relu(2 * hr, hr, 3))
            self.conv_f2x = _conv_bn_relu(ch[2] + hr, hr, 3)
            self.conv_f = nn.Sequential(_conv_bn_relu(hr + 3, hr // 2, 3), nn.Conv2D(hr // 2, 1, 1))

        def forward(self, img):
            enc2x, enc4x, _, _, enc32x = self.backbone(img)
            # LR branch
            enc32x = self.se_block(enc32x)
            lr16x = F.interpolate(enc32x, scale_factor=2, mode="bilinear", align_corners=False)
            lr16x = self.conv_lr16x(lr16x)
            lr8x = F.interpolate(lr16x, scale_factor=2, mode="bilinear", align_corners=False)
            lr8x = self.conv_lr8x(lr8x)
            # HR branch
            img2x = F.interpolate(img, scale_factor=1 / 2, mode="bilinear", align_corners=False)
            img4x = F.interpolate(img, scale_factor=1 / 4, mode="bilinear", align_corners=False)
            enc2x = self.tohr_enc2x(enc2x)
            hr4x = self.conv_enc2x(paddle.concat((img2x, enc2x), axis=1))
            enc4x = self.tohr_enc4x(enc4x)
            hr4x = self.conv_enc4x(paddle.concat((hr4x, enc4x), axis=1))
            lr4x = F.interpolate(lr8x, scale_factor=2, mode="bilinear", align_corners=False)
            hr4x = self.conv_hr4x(paddle.concat((hr4x, lr4x, img4x), axis=1))
            hr2x = F.interpolate(hr4x, scale_factor=2, mode="bilinear", align_corners=False)
            hr2x = self.conv_hr2x(paddle.concat((hr2x, enc2x), axis=1))
            # Fusion branch
            lr4x = F.interpolate(lr8x, scale_factor=2, mode="bilinear", align_corners=False)
            lr2x = F.interpolate(lr4x, scale_factor=2, mode="bilinear", align_corners=False)
            f2x = self.conv_f2x(paddle.concat((lr2x, hr2x), axis=1))
            f = F.interpolate(f2x, scale_factor=2, mode="bilinear", align_corners=False)
            f = self.conv_f(paddle.concat((f, img), axis=1))
            return F.sigmoid(f)

    paddle.seed(21)
    m = MODNet()
    _randomize_norms(m, 21)
    _save(m, out, [_image_spec("img")])


def build_ppmatting(out: Path, shape=(None, None, None)):
    """PaddleSeg PP-Matting (ppmatting/models/ppmatting.py): backbone, a glance branch (PPM-lite + decoder, 3-class
    trimap logits, softmax), a focus branch (decoder with low-level skips, sigmoid detail), both bilinearly
    upsampled to the input size, and PP-Matting's hard fusion: argmax of the glance -> transition / foreground
    masks, alpha = focus * transition + foreground. Inference returns the fused alpha [N, 1, H, W]."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class PPM(nn.Layer):
        def __init__(self, cin, c, bins=(1, 2, 3, 6)):
            super().__init__()
            self.bins = bins
            self.stages = nn.LayerList([_conv_bn_relu(cin, c, 1) for _ in bins])
            self.bottleneck = _conv_bn_relu(cin + c * len(bins), c, 3)

        def forward(self, x):
            size = paddle.shape(x)[2:]
            outs = [x]
            for b, stage in zip(self.bins, self.stages):
                y = stage(F.adaptive_avg_pool2d(x, b))
                outs.append(F.interpolate(y, size, mode="bilinear", align_corners=False))
            return self.bottleneck(paddle.concat(outs, 1))

    class PPMatting(nn.Layer):
        def __init__(self):
            super().__init__()
            self.backbone = _mbv2_lite()
            ch = self.backbone.channels
            self.ppm = PPM(ch[4], 64)
            # glance: 1/32 -> 1/16 -> 1/8 -> 1/4, 3-class logits
            self.g16 = _conv_bn_relu(64 + ch[3], 48, 3)
            self.g8 = _conv_bn_relu(48 + ch[2], 32, 3)
            self.g4 = _conv_bn_relu(32 + ch[1], 32, 3)
            self.g_out = nn.Conv2D(32, 3, 3, padding=1)
            # focus: 1/32 -> ... -> 1/2, 1-channel detail
            self.f16 = _conv_bn_relu(64 + ch[3], 48, 3)
            self.f8 = _conv_bn_relu(48 + ch[2], 32, 3)
            self.f4 = _conv_bn_relu(32 + ch[1], 32, 3)
            self.f2 = _conv_bn_relu(32 + ch[0], 16, 3)
            self.f_out = nn.Conv2D(16 + 3, 1, 3, padding=1)

        @staticmethod
        def up_cat(x, skip):
            x = F.interpolate(x, paddle.shape(skip)[2:], mode="bilinear", align_corners=False)
            return paddle.concat([x, skip], 1)

        def forward(self, img):
            f2, f4, f8, f16, f32 = self.backbone(img)
            ctx = self.ppm(f32)
            g = self.g16(self.up_cat(ctx, f16))
            g = self.g8(self.up_cat(g, f8))
            g = self.g4(self.up_cat(g, f4))
            glance = F.interpolate(self.g_out(g), paddle.shape(img)[2:], mode="bilinear", align_corners=False)
            glance_sigmoid = F.softmax(glance, axis=1)
            d = self.f16(self.up_cat(ctx, f16))
            d = self.f8(self.up_cat(d, f8))
            d = self.f4(self.up_cat(d, f4))
            d = self.f2(self.up_cat(d, f2))
            focus = self.f_out(self.up_cat(d, img))
            focus_sigmoid = F.sigmoid(focus)
            # PP-Matting's fusion
            index = paddle.argmax(glance_sigmoid, axis=1, keepdim=True)
            transition_mask = (index == 1).astype("float32")
            fg = (index == 2).astype("float32")
            return focus_sigmoid * transition_mask + fg

    paddle.seed(22)
    m = PPMatting()
    _randomize_norms(m, 22)
    n, h, w = shape
    _save(m, out, [paddle.static.InputSpec([n, 3, h, w], "float32", "img")])


# ---------------------------------------------------------------- 3. PaddleDetection keypoints


def _hrnet_lite(num_joints=17, width=32):
    """PaddleDetection HRNet (ppdet/modeling/backbones/hrnet.py) cut to stem + stage 2 (two branches, width and
    2*width) + stage 3 (three branches) with its fuse layers (nearest upsampling by scale_factor 2**(j-i) in
    FuseLayers), and TopDownHRNet's final 1x1 conv on the highest-resolution branch: heatmaps [N, K, H/4, W/4]."""
    import paddle.nn as nn
    import paddle.nn.functional as F

    class BasicBlock(nn.Layer):
        def __init__(self, c):
            super().__init__()
            self.c1 = _conv_bn_relu(c, c, 3)
            self.c2 = _conv_bn_relu(c, c, 3, act=None)

        def forward(self, x):
            return F.relu(self.c2(self.c1(x)) + x)

    class FuseLayers(nn.Layer):
        def __init__(self, chs):
            super().__init__()
            self.chs = chs
            self.ups = nn.LayerList()
            self.downs = nn.LayerList()
            for i in range(len(chs)):
                for j in range(len(chs)):
                    if j > i:
                        self.ups.append(_conv_bn_relu(chs[j], chs[i], 1, act=None))
                    elif j < i:
                        seq = []
                        for k in range(i - j):
                            last = k == i - j - 1
                            seq.append(_conv_bn_relu(chs[j], chs[i] if last else chs[j], 3, 2,
                                                     act=None if last else "relu"))
                        self.downs.append(nn.Sequential(*seq))

        def forward(self, xs):
            outs, u, d = [], 0, 0
            for i in range(len(self.chs)):
                y = xs[i]
                for j in range(len(self.chs)):
                    if j > i:
                        z = self.ups[u](xs[j])
                        u += 1
                        y = y + F.interpolate(z, scale_factor=2 ** (j - i), mode="nearest")
                    elif j < i:
                        y = y + self.downs[d](xs[j])
                        d += 1
                outs.append(F.relu(y))
            return outs

    class HRNetLite(nn.Layer):
        def __init__(self):
            super().__init__()
            w = width
            self.stem = nn.Sequential(_conv_bn_relu(3, 64, 3, 2), _conv_bn_relu(64, 64, 3, 2))
            self.layer1 = nn.Sequential(_conv_bn_relu(64, 64, 3), _conv_bn_relu(64, 64, 3))
            self.t1_0 = _conv_bn_relu(64, w, 3)
            self.t1_1 = _conv_bn_relu(64, 2 * w, 3, 2)
            self.st2 = nn.LayerList([BasicBlock(w), BasicBlock(2 * w)])
            self.fuse2 = FuseLayers((w, 2 * w))
            self.t2_2 = _conv_bn_relu(2 * w, 4 * w, 3, 2)
            self.st3 = nn.LayerList([BasicBlock(w), BasicBlock(2 * w), BasicBlock(4 * w)])
            self.fuse3 = FuseLayers((w, 2 * w, 4 * w))
            self.final_conv = nn.Conv2D(w, num_joints, 1)

        def forward(self, image):
            x = self.layer1(self.stem(image))
            xs = [self.t1_0(x), self.t1_1(x)]
            xs = self.fuse2([b(t) for b, t in zip(self.st2, xs)])
            xs = xs + [self.t2_2(xs[1])]
            xs = self.fuse3([b(t) for b, t in zip(self.st3, xs)])
            return self.final_conv(xs[0])

    return HRNetLite()


def build_hrnet_kpt(out: Path):
    """TopDownHRNet-W32-lite as PaddleDetection exports it: image [N, 3, 128, 96] -> heatmaps [N, 17, 32, 24]."""
    import paddle
    paddle.seed(31)
    m = _hrnet_lite()
    _randomize_norms(m, 31)
    _save(m, out, [_image_spec("image", 128, 96)])


def build_hrnet_kpt_post(out: Path):
    """The same net with HRNetPostProcess's get_max_preds in the graph: argmax over each flattened heatmap, x = idx
    % W, y = idx // W (zeroed where the max <= 0), times the stride 4 back to input pixels, plus the max values:
    keypoints [N, K, 2] float and maxvals [N, K, 1]."""
    import paddle
    import paddle.nn as nn

    class WithPost(nn.Layer):
        def __init__(self):
            super().__init__()
            self.net = _hrnet_lite()

        def forward(self, image):
            hm = self.net(image)
            n, k, h, w = hm.shape[0], hm.shape[1], hm.shape[2], hm.shape[3]
            flat = paddle.reshape(hm, [-1, k, h * w])
            idx = paddle.argmax(flat, axis=2, keepdim=True)
            maxvals = paddle.max(flat, axis=2, keepdim=True)
            idxf = idx.astype("float32")
            x = paddle.remainder(idxf, paddle.to_tensor(float(w)))
            y = paddle.floor(idxf / float(w))
            preds = paddle.concat([x, y], axis=2)
            mask = (maxvals > 0.0).astype("float32")
            return preds * mask * 4.0, maxvals

    paddle.seed(31)
    m = WithPost()
    _randomize_norms(m.net, 31)
    _save(m, out, [_image_spec("image", 128, 96)])


# ---------------------------------------------------------------- 4. depth


def build_midas_small(out: Path, features: int = 32):
    """MiDaS v2.1 small (MidasNet_small): an EfficientNet-lite-like encoder (1/4..1/32), scratch 3x3 convs to
    `features`, FeatureFusionBlock_custom refinenets (ResidualConvUnit_custom with ReLU, skip add, bilinear x2
    align_corners=True, 1x1 out_conv), output_conv head (conv, Interpolate x2 bilinear align_corners=True, conv,
    ReLU, 1x1 conv, ReLU: non_negative). Output: inverse depth [N, H, W]."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class RCU(nn.Layer):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2D(c, c, 3, padding=1)
            self.conv2 = nn.Conv2D(c, c, 3, padding=1)

        def forward(self, x):
            out = self.conv1(F.relu(x))
            out = self.conv2(F.relu(out))
            return out + x

    class FFB(nn.Layer):
        def __init__(self, c, first=False):
            super().__init__()
            self.rcu1 = None if first else RCU(c)
            self.rcu2 = RCU(c)
            self.out_conv = nn.Conv2D(c, c, 1)

        def forward(self, x, skip=None):
            if skip is not None:
                x = x + self.rcu1(skip)
            x = self.rcu2(x)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            return self.out_conv(x)

    class MidasSmall(nn.Layer):
        def __init__(self):
            super().__init__()
            self.enc = _mbv2_lite(widths=(16, 24, 40, 56))
            ch = self.enc.channels
            self.layer1_rn = nn.Conv2D(ch[1], features, 3, padding=1, bias_attr=False)
            self.layer2_rn = nn.Conv2D(ch[2], features, 3, padding=1, bias_attr=False)
            self.layer3_rn = nn.Conv2D(ch[3], features, 3, padding=1, bias_attr=False)
            self.layer4_rn = nn.Conv2D(ch[4], features, 3, padding=1, bias_attr=False)
            self.refinenet4 = FFB(features, first=True)
            self.refinenet3 = FFB(features)
            self.refinenet2 = FFB(features)
            self.refinenet1 = FFB(features)
            self.output_conv = nn.Sequential(
                nn.Conv2D(features, features // 2, 3, padding=1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                nn.Conv2D(features // 2, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2D(32, 1, 1, bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.5))),
                nn.ReLU())

        def forward(self, x):
            _, l1, l2, l3, l4 = self.enc(x)
            p4 = self.refinenet4(self.layer4_rn(l4))
            p3 = self.refinenet3(p4, self.layer3_rn(l3))
            p2 = self.refinenet2(p3, self.layer2_rn(l2))
            p1 = self.refinenet1(p2, self.layer1_rn(l1))
            return paddle.squeeze(self.output_conv(p1), axis=1)

    paddle.seed(41)
    m = MidasSmall()
    _randomize_norms(m, 41)
    _save(m, out, [_image_spec("x")])


# ---------------------------------------------------------------- 5. face detection


def build_blazeface(out: Path):
    """PaddleDetection BlazeFace (ppdet/modeling/backbones/blazenet.py + FaceHead), MediaPipe-front sized: input
    [N, 3, 128, 128]; BlazeBlocks (5x5 depthwise + 1x1, max-pool shortcut with channel zero-padding when strided),
    double BlazeBlocks, heads on the 16x16 (2 anchors) and 8x8 (6 anchors) maps; no prior-box decoding, no NMS:
    raw box regressions [N, 896, 4] and class scores softmax [N, 896, 2] (background, face)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class BlazeBlock(nn.Layer):
        def __init__(self, cin, cout, stride=1, mid=None):
            super().__init__()
            self.stride, self.cin, self.cout = stride, cin, cout
            self.dw1 = _conv_bn_relu(cin, cin, 5, stride, groups=cin, act=None)
            if mid:                                               # double BlazeBlock
                self.pw1 = _conv_bn_relu(cin, mid, 1, act="relu")
                self.dw2 = _conv_bn_relu(mid, mid, 5, 1, groups=mid, act=None)
                self.pw2 = _conv_bn_relu(mid, cout, 1, act=None)
            else:
                self.pw1 = _conv_bn_relu(cin, cout, 1, act=None)
                self.dw2 = self.pw2 = None

        def forward(self, x):
            y = self.pw1(self.dw1(x))
            if self.dw2 is not None:
                y = self.pw2(self.dw2(y))
            sc = x
            if self.stride == 2:
                sc = F.max_pool2d(sc, 2, 2, ceil_mode=True)
            if self.cout != self.cin:
                sc = F.pad(sc, [0, 0, 0, self.cout - self.cin, 0, 0, 0, 0])   # channel zero-padding
            return F.relu(y + sc)

    class BlazeFace(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv1 = _conv_bn_relu(3, 24, 3, 2)                                      # 64
            self.blocks16 = nn.Sequential(BlazeBlock(24, 24), BlazeBlock(24, 24), BlazeBlock(24, 48, 2),  # 32
                                          BlazeBlock(48, 48), BlazeBlock(48, 48),
                                          BlazeBlock(48, 96, 2, mid=24), BlazeBlock(96, 96, mid=24))       # 16
            self.blocks8 = nn.Sequential(BlazeBlock(96, 96, 2, mid=24), BlazeBlock(96, 96, mid=24))     # 8
            self.loc16 = nn.Conv2D(96, 2 * 4, 3, padding=1)
            self.conf16 = nn.Conv2D(96, 2 * 2, 3, padding=1)
            self.loc8 = nn.Conv2D(96, 6 * 4, 3, padding=1)
            self.conf8 = nn.Conv2D(96, 6 * 2, 3, padding=1)

        @staticmethod
        def flat(t, d):
            return paddle.reshape(paddle.transpose(t, [0, 2, 3, 1]), [0, -1, d])

        def forward(self, image):
            f16 = self.blocks16(self.conv1(image))
            f8 = self.blocks8(f16)
            boxes = paddle.concat([self.flat(self.loc16(f16), 4), self.flat(self.loc8(f8), 4)], 1)
            scores = paddle.concat([self.flat(self.conf16(f16), 2), self.flat(self.conf8(f8), 2)], 1)
            return boxes, F.softmax(scores, axis=-1)

    paddle.seed(51)
    m = BlazeFace()
    _randomize_norms(m, 51)
    _save(m, out, [_image_spec("image", 128, 128)])


# ---------------------------------------------------------------- 6. interpolate probes


def build_interp_nearest(out: Path):
    """conv -> F.interpolate(scale_factor=2, nearest) -> conv -> F.interpolate(scale_factor=1.5, nearest) -> conv:
    Paddle 3.3 writes the *_interp `scale` attribute as float64 (convert/repair/f64_attrs.py)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2D(3, 8, 3, padding=1)
            self.c2 = nn.Conv2D(8, 8, 3, padding=1)
            self.c3 = nn.Conv2D(8, 3, 3, padding=1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = F.relu(self.c2(y))
            y = F.interpolate(y, scale_factor=1.5, mode="nearest")
            return self.c3(y)

    paddle.seed(61)
    _save(Net(), out, [_image_spec("x")])


def build_interp_frac(out: Path, scale: float = 1.3, mode: str = "nearest"):
    """conv -> F.interpolate(scale_factor=1.3) -> conv: a factor that is not a float32 value (1.3 as float64 is
    1.3000000000000000444, as float32 1.2999999523), where in_size * scale lands on an integer (10 * 1.3)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2D(3, 8, 3, padding=1)
            self.c2 = nn.Conv2D(8, 3, 3, padding=1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            y = F.interpolate(y, scale_factor=scale, mode=mode)
            return self.c2(y)

    paddle.seed(63)
    _save(Net(), out, [_image_spec("x")])


def build_interp_bilinear_ac(out: Path):
    """conv -> bilinear x2 align_corners=True (scale_factor) -> conv -> bilinear to a fixed size (align_corners=True)
    -> conv, and bilinear with align_mode=0 (align_corners=False) on a side branch."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2D(3, 8, 3, padding=1)
            self.c2 = nn.Conv2D(8, 8, 3, padding=1)
            self.c3 = nn.Conv2D(16, 3, 3, padding=1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            a = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
            a = F.relu(self.c2(a))
            a = F.interpolate(a, size=[100, 150], mode="bilinear", align_corners=True)
            b = F.interpolate(y, size=[100, 150], mode="bilinear", align_corners=False, align_mode=0)
            return self.c3(paddle.concat([a, b], 1))

    paddle.seed(62)
    _save(Net(), out, [_image_spec("x")])



def build_float_attrs(out: Path):
    """conv -> GroupNorm(epsilon=1e-2) over a zero group -> F.pad(value=0.5) -> softplus -> leaky_relu(0.1) ->
    thresholded_relu(0.2, value 0.05) -> conv -> gelu(approximate=True) -> hardtanh(-0.5, 3): float attributes
    Paddle 3.3 writes as float64 and paddle2onnx 2.1.0 misreads (convert/repair/f64_attrs.py: the pad value came
    out 0 or 1e19 from run to run, the epsilon 0 (the zero group: 0/0), softplus refused at its defaults),
    hardtanh's bounds, which it read under other names (Clip(-1, 1): hardtanh_bounds), the tanh GELU it wrote in its
    erf form (gelu_tanh) and thresholded_relu's value it left out (thresholded_relu_value)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2D(3, 4, 3, padding=1)
            self.norm = nn.GroupNorm(2, 8, epsilon=1e-2)
            self.c2 = nn.Conv2D(8, 3, 3)

        def forward(self, x):
            y = self.c1(x)
            y = paddle.concat([y, paddle.zeros_like(y)], 1)            # channels 4..7: a group of zeros
            y = F.pad(self.norm(y), [1, 1, 1, 1], value=0.5)
            y = F.thresholded_relu(F.leaky_relu(F.softplus(y), 0.1), 0.2, 0.05)
            return F.hardtanh(F.gelu(self.c2(y), approximate=True), -0.5, 3.0)

    paddle.seed(64)
    _save(Net(), out, [_image_spec("x")])


def build_roi_align(out: Path, aligned: bool = False):
    """conv -> paddle.vision.ops.roi_align(aligned=False, spatial_scale 0.5, sampling_ratio 2) over given boxes, as
    PaddleDetection's older RoIAlign heads: paddle2onnx 2.1.0 writes RoiAlign without its coordinate mode, which
    from opset 16 defaults to aligned (convert/repair/roi_align_mode.py)."""
    import paddle
    import paddle.nn as nn
    from paddle.vision.ops import roi_align

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2D(3, 8, 3, padding=1)

        def forward(self, x, boxes, num):
            return roi_align(self.c(x), boxes, num, output_size=4, spatial_scale=0.5, sampling_ratio=2,
                             aligned=aligned)

    paddle.seed(65)
    _save(Net(), out, [paddle.static.InputSpec([1, 3, 32, 32], "float32", "x"),
                       paddle.static.InputSpec([None, 4], "float32", "boxes"),
                       paddle.static.InputSpec([1], "int32", "num")])

BUILDERS = {
    "esrgan": build_esrgan,
    "edsr_ps": build_edsr_ps,
    "animegan": build_animegan,
    "unet": build_unet,
    "modnet": build_modnet,
    "ppmatting": build_ppmatting,
    # fixed input as paddle2onnx's adaptive pooling needs (PPM bins 1, 2, 3, 6 on the 1/32 map: H, W multiples of 192)
    "ppmatting_fixed": lambda out: build_ppmatting(out, (1, 192, 192)),
    "hrnet_kpt": build_hrnet_kpt,
    "hrnet_kpt_post": build_hrnet_kpt_post,
    "midas_small": build_midas_small,
    "blazeface": build_blazeface,
    "interp_nearest": build_interp_nearest,
    "float_attrs": build_float_attrs,
    "roi_align": build_roi_align,
    "roi_align_aligned": lambda out: build_roi_align(out, True),
    "interp_bilinear_ac": build_interp_bilinear_ac,
    "interp_frac": build_interp_frac,
    "interp_frac_bilinear": lambda out: build_interp_frac(out, 1.3, "bilinear"),
}

if __name__ == "__main__":
    BUILDERS[sys.argv[1]](Path(sys.argv[2]))
