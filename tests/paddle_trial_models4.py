"""Trial builders of transformer families paddle2ort had not been tried on: `python tests/paddle_trial_models4.py
NAME DIR`.

Small, random-weight (seeded) re-creations in eval mode of the public model code of
- PaddleClas' vision transformers: ViT / DeiT (`vit`, `deit`: patch-embed conv, cls (and distillation) token +
  position embedding, pre-LN blocks with multi-head attention written as matmul / softmax, GELU MLP, linear head,
  the Softmax PaddleClas' export_model adds) and Swin (`swin`: window partition by reshape / transpose, shifted
  windows by roll with the shift mask as a buffer, the relative position bias gathered from its table by an index
  buffer, patch merging);
- PaddleDetection's RT-DETR (`rtdetr`: conv backbone, one AIFI encoder layer, query selection by top-k over the
  encoder's class scores, decoder layers with learned queries, single-level deformable attention sampling with
  grid_sample, iterative sigmoid box refinement, DETRPostProcess's top-k over class scores and gather of boxes;
  inputs im_shape, image, scale_factor and the infer_cfg.yml the export writes; `rtdetr_nocfg` without it;
  `rtdetr_raw`: exported with exclude_post_process, image in, sigmoid scores and cxcywh boxes out);
- PaddleOCR's SVTR recognizer (`svtr`: conv stem, a Local mixer with its -inf window mask and two Global attention
  mixers, sub-sampling conv, CTC head with softmax over a 97-class charset, input N x 3 x 32 x 100; `svtr_dyn`: a
  dynamic width, Global mixers only, no position embedding, as PP-OCRv3's SVTR neck);
- PaddleNLP's UIE (`uie4`: a small ERNIE-like post-LN encoder written out, inputs input_ids, token_type_ids,
  position_ids, attention_mask as UIE's export has them, two Linear + Sigmoid pointer heads start_prob / end_prob;
  `uie4_pos48`: its position table only 48 rows long).

Each is saved with paddle.jit.save(layer, DIR/"inference", input_spec=[...]) (inference.json + .pdiparams). Weights
are drawn so that every block moves its input (PaddleClas' trunc-normal 0.02 leaves a tiny transformer idle) and the
heads are not saturated; builders print a check of that. Paddle is imported inside the builders.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from paddle_trial_models2 import _randomize_norms, _save


def _init(layer, seed: int, gain: float = 1.0):
    """Linear / conv weights ~ N(0, gain / sqrt(fan_in)) (Paddle's Linear weight is [in, out]), biases ~ N(0, 0.05);
    norms as a trained net has them (_randomize_norms)."""
    import paddle.nn as nn
    rng = np.random.default_rng(seed)
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, nn.Linear):
            w = sub.weight
            w.set_value(rng.normal(0, gain / np.sqrt(w.shape[0]), w.shape).astype("float32"))
            if sub.bias is not None:
                sub.bias.set_value(rng.normal(0, 0.05, sub.bias.shape).astype("float32"))
        elif isinstance(sub, (nn.Conv2D, nn.Conv1D)):
            w = sub.weight
            fan_in = int(np.prod(w.shape[1:]))
            w.set_value(rng.normal(0, gain * np.sqrt(2.0 / fan_in), w.shape).astype("float32"))
            if sub.bias is not None:
                sub.bias.set_value(rng.normal(0, 0.05, sub.bias.shape).astype("float32"))
    _randomize_norms(layer, seed)


def _check_images(m, shape, what: str):
    """Print how the outputs move over structured images (argmax diversity of a classifier)."""
    import paddle
    rng = np.random.default_rng(0)
    n, c, h, w = shape
    xs = []
    for i in range(n):
        img = np.full((h, w, c), 0.9, np.float32) * rng.uniform(0.5, 1.0, (1, 1, c))
        for _ in range(6):
            y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
            img[y0:y0 + rng.integers(2, h // 2), x0:x0 + rng.integers(2, w // 2)] = rng.uniform(0, 1, c)
        xs.append(((img - 0.45) / 0.225).transpose(2, 0, 1))
    with paddle.no_grad():
        y = m(paddle.to_tensor(np.stack(xs).astype("float32")))
    y = (y[0] if isinstance(y, (tuple, list)) else y).numpy()
    print(f"{what}: out {list(y.shape)} std {y.std():.4g} max {y.max():.4g} argmax over {n} images "
          f"{sorted(set(y.reshape(n, -1, y.shape[-1]).argmax(-1).ravel().tolist()))[:12]}")


# --- ViT / DeiT (ppcls/arch/backbone/model_zoo/vision_transformer.py)


class _Mlp:
    @staticmethod
    def make(d, hidden):
        import paddle.nn as nn
        return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))


def _vit_classes():
    import paddle
    import paddle.nn as nn

    class Attention(nn.Layer):
        def __init__(self, dim, heads):
            super().__init__()
            self.num_heads, self.scale = heads, (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            N, C = x.shape[1:]
            qkv = self.qkv(x).reshape((-1, N, 3, self.num_heads, C // self.num_heads)).transpose((2, 0, 3, 1, 4))
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = (q.matmul(k.transpose((0, 1, 3, 2)))) * self.scale
            attn = nn.functional.softmax(attn, axis=-1)
            x = (attn.matmul(v)).transpose((0, 2, 1, 3)).reshape((-1, N, C))
            return self.proj(x)

    class Block(nn.Layer):
        def __init__(self, dim, heads, mlp_ratio=4):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, epsilon=1e-6)
            self.attn = Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim, epsilon=1e-6)
            self.mlp = _Mlp.make(dim, dim * mlp_ratio)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class VisionTransformer(nn.Layer):
        def __init__(self, img=64, patch=8, dim=64, depth=3, heads=4, classes=100, distilled=False):
            super().__init__()
            self.patch_embed = nn.Conv2D(3, dim, patch, stride=patch)
            n = (img // patch) ** 2
            self.distilled = distilled
            extra = 2 if distilled else 1
            self.cls_token = self.create_parameter([1, 1, dim], default_initializer=nn.initializer.Normal(0, 0.5))
            if distilled:
                self.dist_token = self.create_parameter([1, 1, dim],
                                                        default_initializer=nn.initializer.Normal(0, 0.5))
            self.pos_embed = self.create_parameter([1, n + extra, dim],
                                                   default_initializer=nn.initializer.Normal(0, 0.3))
            self.blocks = nn.LayerList([Block(dim, heads) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, epsilon=1e-6)
            self.head = nn.Linear(dim, classes)
            if distilled:
                self.head_dist = nn.Linear(dim, classes)
            self.softmax = nn.Softmax(axis=-1)        # PaddleClas export_model: infer_add_softmax (default on)

        def forward(self, x):
            B = paddle.shape(x)[0]
            x = self.patch_embed(x).flatten(2).transpose((0, 2, 1))
            tokens = [self.cls_token.expand((B, -1, -1))]
            if self.distilled:
                tokens.append(self.dist_token.expand((B, -1, -1)))
            x = paddle.concat(tokens + [x], axis=1) + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)
            if self.distilled:
                x = (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
            else:
                x = self.head(x[:, 0])
            return self.softmax(x)

    return VisionTransformer


def build_vit(out: Path, distilled: bool = False):
    import paddle
    paddle.seed(41)
    m = _vit_classes()(distilled=distilled)
    _init(m, 41)
    for h in ([m.head, m.head_dist] if distilled else [m.head]):
        h.weight.set_value(h.weight * 2.5)                # logits std ~2.5: a confident, unsaturated softmax
    m.eval()
    _check_images(m, (8, 3, 64, 64), "deit" if distilled else "vit")
    _save(m, out, [paddle.static.InputSpec([None, 3, 64, 64], "float32", "x")])


# --- Swin (ppcls/arch/backbone/legendary_models/swin_transformer.py)


def _relative_position_index(ws: int) -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (ws - 1)
    return (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).astype("int64")


def _shift_mask(h: int, w: int, ws: int, shift: int) -> np.ndarray:
    img = np.zeros((h, w), np.float32)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    mask = win[:, None, :] - win[:, :, None]
    return np.where(mask != 0, -100.0, 0.0).astype(np.float32)


def _swin_classes():
    import paddle
    import paddle.nn as nn

    def window_partition(x, ws):
        _, H, W, C = x.shape
        x = x.reshape([-1, H // ws, ws, W // ws, ws, C])
        return x.transpose([0, 1, 3, 2, 4, 5]).reshape([-1, ws, ws, C])

    def window_reverse(windows, ws, H, W):
        C = windows.shape[-1]
        x = windows.reshape([-1, H // ws, W // ws, ws, ws, C])
        return x.transpose([0, 1, 3, 2, 4, 5]).reshape([-1, H, W, C])

    class WindowAttention(nn.Layer):
        def __init__(self, dim, ws, heads):
            super().__init__()
            self.ws, self.num_heads, self.scale = ws, heads, (dim // heads) ** -0.5
            self.relative_position_bias_table = self.create_parameter(
                [(2 * ws - 1) ** 2, heads], default_initializer=nn.initializer.Normal(0, 1.0))
            self.register_buffer("relative_position_index", paddle.to_tensor(_relative_position_index(ws)))
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x, mask=None):
            _, N, C = x.shape
            qkv = self.qkv(x).reshape([-1, N, 3, self.num_heads, C // self.num_heads]).transpose([2, 0, 3, 1, 4])
            q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
            attn = paddle.mm(q, k.transpose([0, 1, 3, 2]))
            index = self.relative_position_index.reshape([-1])
            bias = paddle.index_select(self.relative_position_bias_table, index)
            bias = bias.reshape([self.ws * self.ws, self.ws * self.ws, -1]).transpose([2, 0, 1])
            attn = attn + bias.unsqueeze(0)
            if mask is not None:
                nW = mask.shape[0]
                attn = attn.reshape([-1, nW, self.num_heads, N, N]) + mask.unsqueeze(1).unsqueeze(0)
                attn = attn.reshape([-1, self.num_heads, N, N])
            attn = nn.functional.softmax(attn, axis=-1)
            x = paddle.mm(attn, v).transpose([0, 2, 1, 3]).reshape([-1, N, C])
            return self.proj(x)

    class SwinBlock(nn.Layer):
        def __init__(self, dim, res, heads, ws, shift):
            super().__init__()
            self.res, self.ws, self.shift = res, ws, shift
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, ws, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = _Mlp.make(dim, dim * 4)
            self.attn_mask = (paddle.to_tensor(_shift_mask(res, res, ws, shift)) if shift else None)
            if shift:
                self.register_buffer("attn_mask", self.attn_mask)

        def forward(self, x):
            H = W = self.res
            C = x.shape[-1]
            shortcut = x
            x = self.norm1(x).reshape([-1, H, W, C])
            if self.shift > 0:
                x = paddle.roll(x, shifts=(-self.shift, -self.shift), axis=(1, 2))
            win = window_partition(x, self.ws).reshape([-1, self.ws * self.ws, C])
            win = self.attn(win, mask=self.attn_mask).reshape([-1, self.ws, self.ws, C])
            x = window_reverse(win, self.ws, H, W)
            if self.shift > 0:
                x = paddle.roll(x, shifts=(self.shift, self.shift), axis=(1, 2))
            x = shortcut + x.reshape([-1, H * W, C])
            return x + self.mlp(self.norm2(x))

    class PatchMerging(nn.Layer):
        def __init__(self, res, dim):
            super().__init__()
            self.res = res
            self.norm = nn.LayerNorm(4 * dim)
            self.reduction = nn.Linear(4 * dim, 2 * dim, bias_attr=False)

        def forward(self, x):
            H = W = self.res
            C = x.shape[-1]
            x = x.reshape([-1, H, W, C])
            x = paddle.concat([x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]],
                              -1)
            return self.reduction(self.norm(x.reshape([-1, H * W // 4, 4 * C])))

    class Swin(nn.Layer):
        def __init__(self, img=64, patch=4, dim=32, heads=(2, 4), ws=4, classes=100):
            super().__init__()
            res = img // patch
            self.patch_embed = nn.Conv2D(3, dim, patch, stride=patch)
            self.patch_norm = nn.LayerNorm(dim)
            self.stage1 = nn.LayerList([SwinBlock(dim, res, heads[0], ws, s) for s in (0, ws // 2)])
            self.merge = PatchMerging(res, dim)
            self.stage2 = nn.LayerList([SwinBlock(2 * dim, res // 2, heads[1], ws, s) for s in (0, ws // 2)])
            self.norm = nn.LayerNorm(2 * dim)
            self.avgpool = nn.AdaptiveAvgPool1D(1)
            self.head = nn.Linear(2 * dim, classes)

        def forward(self, x):
            x = self.patch_norm(self.patch_embed(x).flatten(2).transpose([0, 2, 1]))
            for b in self.stage1:
                x = b(x)
            x = self.merge(x)
            for b in self.stage2:
                x = b(x)
            x = self.avgpool(self.norm(x).transpose([0, 2, 1])).flatten(1)
            return nn.functional.softmax(self.head(x), axis=-1)

    return Swin


def build_swin(out: Path):
    import paddle
    paddle.seed(42)
    m = _swin_classes()()
    _init(m, 42)
    m.head.weight.set_value(m.head.weight * 3.0)
    m.eval()
    _check_images(m, (8, 3, 64, 64), "swin")
    _save(m, out, [paddle.static.InputSpec([None, 3, 64, 64], "float32", "x")])


# --- RT-DETR (ppdet/modeling/transformers/rtdetr_transformer.py)

RTDETR_CLASSES = 10
RTDETR_QUERIES = 30
RTDETR_TOP = 30                 # DETRPostProcess num_top_queries = num_queries, as RT-DETR ships
RTDETR_SIZE = 64
RTDETR_CFG = """mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: false
arch: DETR
min_subgraph_size: 3
Preprocess:
- interp: 2
  keep_ratio: false
  target_size:
  - {s}
  - {s}
  type: Resize
- is_scale: true
  mean:
  - 0.0
  - 0.0
  - 0.0
  norm_type: none
  std:
  - 1.0
  - 1.0
  - 1.0
  type: NormalizeImage
- type: Permute
label_list:
{labels}
"""


def _inverse_sigmoid(x, eps=1e-5):
    import paddle
    x = x.clip(min=0.0, max=1.0)
    return paddle.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def _rtdetr_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    def conv_bn(cin, cout, s):
        return nn.Sequential(nn.Conv2D(cin, cout, 3, s, 1, bias_attr=False), nn.BatchNorm2D(cout), nn.ReLU())

    class MLP(nn.Layer):
        def __init__(self, i, h, o, n):
            super().__init__()
            dims = [i] + [h] * (n - 1)
            self.layers = nn.LayerList([nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [o])])

        def forward(self, x):
            for k, layer in enumerate(self.layers):
                x = F.relu(layer(x)) if k < len(self.layers) - 1 else layer(x)
            return x

    class MSDeformableAttention(nn.Layer):
        """One feature level: sampling offsets and weights from the query, values sampled with grid_sample."""

        def __init__(self, d, heads, points):
            super().__init__()
            self.h, self.p, self.hd = heads, points, d // heads
            self.sampling_offsets = nn.Linear(d, heads * points * 2)
            self.attention_weights = nn.Linear(d, heads * points)
            self.value_proj = nn.Linear(d, d)
            self.output_proj = nn.Linear(d, d)

        def forward(self, query, ref, value, hw):
            Q = query.shape[1]
            H, W = hw
            v = self.value_proj(value).reshape([-1, H * W, self.h, self.hd])
            off = self.sampling_offsets(query).reshape([-1, Q, self.h, self.p, 2])
            aw = F.softmax(self.attention_weights(query).reshape([-1, Q, self.h, self.p]), -1)
            loc = ref[:, :, None, None, :2] + off / self.p * ref[:, :, None, None, 2:] * 0.5   # [B, Q, h, p, 2]
            v = v.transpose([0, 2, 3, 1]).reshape([-1, self.hd, H, W])                          # [B*h, hd, H, W]
            grid = (2 * loc - 1).transpose([0, 2, 1, 3, 4]).reshape([-1, Q, self.p, 2])          # [B*h, Q, p, 2]
            s = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*h,hd,Q,p]
            aw = aw.transpose([0, 2, 1, 3]).reshape([-1, 1, Q, self.p])
            out = (s * aw).sum(-1).reshape([-1, self.h * self.hd, Q]).transpose([0, 2, 1])
            return self.output_proj(out)

    class DecoderLayer(nn.Layer):
        def __init__(self, d, heads, points, ff):
            super().__init__()
            self.self_attn = nn.MultiHeadAttention(d, heads)
            self.norm1 = nn.LayerNorm(d)
            self.cross_attn = MSDeformableAttention(d, heads, points)
            self.norm2 = nn.LayerNorm(d)
            self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
            self.norm3 = nn.LayerNorm(d)

        def forward(self, tgt, ref, memory, hw, pos):
            q = tgt + pos
            tgt = self.norm1(tgt + self.self_attn(q, q, tgt))
            tgt = self.norm2(tgt + self.cross_attn(tgt + pos, ref, memory, hw))
            return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))

    class RTDETRLite(nn.Layer):
        def __init__(self, d=32, heads=4, points=4, layers=3, ff=64, classes=RTDETR_CLASSES,
                     queries=RTDETR_QUERIES, top=RTDETR_TOP, size=RTDETR_SIZE):
            super().__init__()
            self.classes, self.queries, self.top = classes, queries, top
            self.backbone = nn.Sequential(conv_bn(3, 16, 2), conv_bn(16, 32, 2), conv_bn(32, 32, 2))
            self.input_proj = nn.Sequential(nn.Conv2D(32, d, 1, bias_attr=False), nn.BatchNorm2D(d))
            self.hw = (size // 8, size // 8)
            h, w = self.hw
            # AIFI: one encoder layer over the flattened map with a fixed 2-D sine position embedding
            ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
            omega = 1.0 / 10000 ** (np.arange(d // 4, dtype=np.float32) / (d // 4))
            pe = np.concatenate([np.sin(xs.reshape(-1, 1) * omega), np.cos(xs.reshape(-1, 1) * omega),
                                 np.sin(ys.reshape(-1, 1) * omega), np.cos(ys.reshape(-1, 1) * omega)], 1)
            self.register_buffer("pos_embed", paddle.to_tensor(pe[None].astype("float32")))
            self.encoder = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0)
            # query selection: anchors per cell (logit space), encoder heads
            cx, cy = (xs.reshape(-1) + 0.5) / w, (ys.reshape(-1) + 0.5) / h
            anchors = np.stack([cx, cy, np.full_like(cx, 0.1), np.full_like(cy, 0.1)], -1)
            self.register_buffer("anchors", paddle.to_tensor(np.log(anchors / (1 - anchors))[None].astype("float32")))
            self.enc_output = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
            self.enc_score_head = nn.Linear(d, classes)
            self.enc_bbox_head = MLP(d, d, 4, 3)
            self.tgt_embed = nn.Embedding(queries, d)          # learnt_init_query
            self.query_pos_head = MLP(4, 2 * d, d, 2)
            self.decoder = nn.LayerList([DecoderLayer(d, heads, points, ff) for _ in range(layers)])
            self.dec_bbox_head = nn.LayerList([MLP(d, d, 4, 3) for _ in range(layers)])
            self.dec_score_head = nn.LayerList([nn.Linear(d, classes) for _ in range(layers)])

        def forward(self, im_shape, image, scale_factor):
            logits, ref = self.raw(image)
            bs = paddle.shape(logits)[0]
            # DETRPostProcess (use_focal_loss): boxes cxcywh -> xyxy in the source image, top-k over class scores
            cxcy, wh = ref[..., :2], ref[..., 2:]
            boxes = paddle.concat([cxcy - 0.5 * wh, cxcy + 0.5 * wh], -1)
            origin = paddle.floor(im_shape / scale_factor + 0.5)
            img_h, img_w = paddle.split(origin, 2, axis=-1)
            boxes = boxes * paddle.concat([img_w, img_h, img_w, img_h], -1).unsqueeze(1)
            scores = F.sigmoid(logits)
            scores, index = paddle.topk(scores.flatten(1), self.top, axis=-1)
            labels = index % self.classes
            index = index // self.classes
            batch_ind = paddle.arange(end=bs, dtype=index.dtype).unsqueeze(-1).tile([1, self.top])
            boxes = paddle.gather_nd(boxes, paddle.stack([batch_ind, index], axis=-1))
            bbox = paddle.concat([labels.unsqueeze(-1).astype("float32"), scores.unsqueeze(-1), boxes], -1)
            bbox_num = paddle.full([bs], self.top, dtype="int32")
            return bbox.reshape([-1, 6]), bbox_num

        def raw(self, image):
            """The head's outputs before DETRPostProcess: class logits [B, Q, C], boxes cxcywh in [0, 1]."""
            feat = self.input_proj(self.backbone(image))
            memory = feat.flatten(2).transpose([0, 2, 1])
            memory = self.encoder(memory + self.pos_embed)
            bs = paddle.shape(memory)[0]
            out_mem = self.enc_output(memory)
            enc_cls = self.enc_score_head(out_mem)
            enc_box = self.enc_bbox_head(out_mem) + self.anchors
            _, topk_ind = paddle.topk(enc_cls.max(-1), self.queries, axis=1)
            batch_ind = paddle.arange(end=bs, dtype=topk_ind.dtype).unsqueeze(-1).tile([1, self.queries])
            ref_unact = paddle.gather_nd(enc_box, paddle.stack([batch_ind, topk_ind], axis=-1))
            ref = F.sigmoid(ref_unact)
            tgt = self.tgt_embed.weight.unsqueeze(0).tile([bs, 1, 1])
            for layer, box_head, score_head in zip(self.decoder, self.dec_bbox_head, self.dec_score_head):
                tgt = layer(tgt, ref, memory, self.hw, self.query_pos_head(ref))
                ref = F.sigmoid(box_head(tgt) + _inverse_sigmoid(ref))
                logits = score_head(tgt)
            return logits, ref

    class RTDETRRaw(nn.Layer):
        """exclude_post_process: image in, sigmoid scores [B, Q, C] and boxes [B, Q, 4] (cxcywh, 0..1) out."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            logits, boxes = self.m.raw(image)
            return F.sigmoid(logits), boxes

    RTDETRLite.Raw = RTDETRRaw
    return RTDETRLite


def build_rtdetr(out: Path, with_cfg: bool = True, raw: bool = False):
    import paddle
    paddle.seed(43)
    cls = _rtdetr_classes()
    m = cls()
    _init(m, 43)
    for lin in [m.enc_score_head] + list(m.dec_score_head):
        # a trained head's spread (scores ~0.01-0.9 over the queries) around the focal-loss prior's bias
        lin.weight.set_value(lin.weight * 2.0)
        lin.bias.set_value(np.full(lin.bias.shape, -2.5, "float32"))
    m.eval()
    rng = np.random.default_rng(0)
    img = paddle.to_tensor(rng.uniform(0, 1, (2, 3, RTDETR_SIZE, RTDETR_SIZE)).astype("float32"))
    shape = paddle.to_tensor(np.full((2, 2), RTDETR_SIZE, "float32"))
    bbox, num = m(shape, img, paddle.ones([2, 2]))
    b = bbox.numpy()
    print(f"rtdetr: bbox {b.shape} labels {sorted(set(b[:, 0].astype(int)))} scores {b[:, 1].min():.3f}.."
          f"{b[:, 1].max():.3f} boxes {b[:, 2:].min():.1f}..{b[:, 2:].max():.1f} num {num.numpy()}")
    if raw:
        _save(cls.Raw(m), out, [paddle.static.InputSpec([None, 3, RTDETR_SIZE, RTDETR_SIZE], "float32", "image")])
        return
    _save(m, out, [paddle.static.InputSpec([None, 2], "float32", "im_shape"),
                   paddle.static.InputSpec([None, 3, RTDETR_SIZE, RTDETR_SIZE], "float32", "image"),
                   paddle.static.InputSpec([None, 2], "float32", "scale_factor")])
    if with_cfg:
        labels = "\n".join(f"- class{i}" for i in range(RTDETR_CLASSES))
        (out / "infer_cfg.yml").write_text(RTDETR_CFG.format(s=RTDETR_SIZE, labels=labels))


# --- SVTR (ppocr/modeling/backbones/rec_svtrnet.py)

SVTR_CLASSES = 97          # blank + 95 printable ASCII + space (PaddleOCR's en_dict with use_space_char)


def _svtr_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ConvBN(nn.Sequential):
        def __init__(self, cin, cout, k=3, s=2, p=1):
            super().__init__(nn.Conv2D(cin, cout, k, s, p, bias_attr=False), nn.BatchNorm2D(cout), nn.GELU())

    class Attention(nn.Layer):
        """SVTR's mixer: Global (all tokens) or Local (a window mask of -inf outside hk x wk)."""

        def __init__(self, dim, heads, mixer="Global", hw=None, local_k=(7, 11)):
            super().__init__()
            self.num_heads, self.dim, self.scale = heads, dim, (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)
            self.mixer = mixer
            if mixer == "Local":
                H, W = hw
                hk, wk = local_k
                mask = np.ones([H * W, H + hk - 1, W + wk - 1], dtype="float32")
                for h in range(H):
                    for w in range(W):
                        mask[h * W + w, h:h + hk, w:w + wk] = 0.0
                mask_flat = mask[:, hk // 2:H + hk // 2, wk // 2:W + wk // 2].reshape(H * W, -1)
                mask = np.where(mask_flat < 1, mask_flat, -np.inf).astype("float32")    # as PaddleOCR: -inf
                self.register_buffer("mask", paddle.to_tensor(mask[None, None]))

        def forward(self, x):
            N, C = x.shape[1], self.dim
            qkv = self.qkv(x).reshape((0, -1, 3, self.num_heads, C // self.num_heads)).transpose((2, 0, 3, 1, 4))
            q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
            attn = q.matmul(k.transpose((0, 1, 3, 2)))
            if self.mixer == "Local":
                attn += self.mask
            attn = F.softmax(attn, axis=-1)
            x = attn.matmul(v).transpose((0, 2, 1, 3)).reshape((0, -1, C))
            return self.proj(x)

    class Block(nn.Layer):
        """prenorm=True in SVTRNet: x = norm1(x + mixer(x)); x = norm2(x + mlp(x))."""

        def __init__(self, dim, heads, mixer="Global", hw=None):
            super().__init__()
            self.mixer = Attention(dim, heads, mixer, hw)
            self.norm1 = nn.LayerNorm(dim, epsilon=1e-6)
            self.mlp = _Mlp.make(dim, dim * 4)
            self.norm2 = nn.LayerNorm(dim, epsilon=1e-6)

        def forward(self, x):
            x = self.norm1(x + self.mixer(x))
            return self.norm2(x + self.mlp(x))

    class SVTR(nn.Layer):
        def __init__(self, dims=(32, 48), heads=(2, 3), out_channels=64, classes=SVTR_CLASSES, dynamic=False):
            super().__init__()
            self.dynamic = dynamic
            self.patch_embed = nn.Sequential(ConvBN(3, dims[0] // 2), ConvBN(dims[0] // 2, dims[0]))
            hw = (8, 25)
            if not dynamic:
                self.pos_embed = self.create_parameter([1, hw[0] * hw[1], dims[0]],
                                                       default_initializer=nn.initializer.Normal(0, 0.3))
            mixers = ("Global", "Global") if dynamic else ("Local", "Global")
            self.blocks1 = nn.LayerList([Block(dims[0], heads[0], mx, hw) for mx in mixers])
            self.sub1 = nn.Conv2D(dims[0], dims[1], 3, (2, 1), 1)            # SubSample: H / 2
            self.sub_norm = nn.LayerNorm(dims[1])
            self.blocks2 = nn.LayerList([Block(dims[1], heads[1], "Global")])
            self.last_conv = nn.Conv2D(dims[1], out_channels, 1, bias_attr=False)
            self.hardswish = nn.Hardswish()
            self.fc = nn.Linear(out_channels, classes)                        # CTCHead

        def forward(self, x):
            x = self.patch_embed(x)                                          # [B, C, 8, W/4]
            H, W = x.shape[2], x.shape[3]
            C = x.shape[1]
            x = x.flatten(2).transpose([0, 2, 1])
            if not self.dynamic:
                x = x + self.pos_embed
            for b in self.blocks1:
                x = b(x)
            # back to a map: static sizes as SVTRNet has them (a -1 width beside a dynamic batch leaves the
            # adaptive pooling's input size unknown, which paddle2onnx refuses); a dynamic width only where it is one
            x = x.transpose([0, 2, 1]).reshape([-1, C, H, W])
            x = self.sub1(x)
            C2 = x.shape[1]
            x = self.sub_norm(x.flatten(2).transpose([0, 2, 1]))
            for b in self.blocks2:
                x = b(x)
            x = x.transpose([0, 2, 1]).reshape([-1, C2, H // 2, W])
            # SVTRNet's last stage: AdaptiveAvgPool2D([1, out_char_num]); a dynamic width pools the height alone
            x = F.avg_pool2d(x, [H // 2, 1]) if self.dynamic else F.adaptive_avg_pool2d(x, [1, W])
            x = self.hardswish(self.last_conv(x))                            # [B, 64, 1, W/4]
            x = x.squeeze(2).transpose([0, 2, 1])                            # Im2Seq
            return F.softmax(self.fc(x), axis=2)

    return SVTR


def build_svtr(out: Path, dynamic: bool = False):
    import paddle
    paddle.seed(44)
    m = _svtr_classes()(dynamic=dynamic)
    _init(m, 44)
    m.fc.weight.set_value(m.fc.weight * 2.5)
    m.eval()
    _check_images(m, (4, 3, 32, 100), "svtr_dyn" if dynamic else "svtr")
    _save(m, out, [paddle.static.InputSpec([None, 3, 32, None if dynamic else 100], "float32", "x")])


# --- UIE (paddlenlp/taskflow information_extraction, model UIE)


def _uie_classes():
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    class Layer(nn.Layer):
        """ERNIE's post-LN encoder layer, attention written out."""

        def __init__(self, d, heads, ff):
            super().__init__()
            self.h, self.hd = heads, d // heads
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.out_proj = nn.Linear(d, d)
            self.norm1 = nn.LayerNorm(d, epsilon=1e-12)
            self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
            self.norm2 = nn.LayerNorm(d, epsilon=1e-12)

        def forward(self, x, mask):
            def split(t):
                return t.reshape([0, 0, self.h, self.hd]).transpose([0, 2, 1, 3])
            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            a = paddle.matmul(q * self.hd ** -0.5, k, transpose_y=True) + mask
            a = paddle.matmul(F.softmax(a, -1), v).transpose([0, 2, 1, 3]).reshape([0, 0, self.h * self.hd])
            x = self.norm1(x + self.out_proj(a))
            return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))

    class UIELite(nn.Layer):
        def __init__(self, vocab=1000, d=64, heads=4, ff=128, layers=2, max_pos=128, types=4):
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, d, padding_idx=0)
            self.position_embeddings = nn.Embedding(max_pos, d)
            self.token_type_embeddings = nn.Embedding(types, d)
            self.emb_norm = nn.LayerNorm(d, epsilon=1e-12)
            self.layers = nn.LayerList([Layer(d, heads, ff) for _ in range(layers)])
            self.linear_start = nn.Linear(d, 1)
            self.linear_end = nn.Linear(d, 1)

        def forward(self, input_ids, token_type_ids, position_ids, attention_mask):
            x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
                 + self.token_type_embeddings(token_type_ids))
            x = self.emb_norm(x)
            mask = (1.0 - attention_mask.unsqueeze([1, 2]).astype("float32")) * -1e4
            for layer in self.layers:
                x = layer(x, mask)
            start = F.sigmoid(self.linear_start(x).squeeze(-1))
            end = F.sigmoid(self.linear_end(x).squeeze(-1))
            return start, end

    UIELite.Layer = Layer                # paddle_trial_models5's quantized encoder reuses it
    return UIELite


def build_uie(out: Path, max_pos: int = 128):
    import paddle
    from paddle_models import id_specs
    paddle.seed(45)
    m = _uie_classes()(max_pos=max_pos)
    _init(m, 45)
    rng = np.random.default_rng(45)
    for emb in (m.word_embeddings, m.position_embeddings, m.token_type_embeddings):
        emb.weight.set_value(rng.normal(0, 0.5, emb.weight.shape).astype("float32"))
    m.eval()
    ids = rng.integers(1, 1000, (2, 16))
    with paddle.no_grad():
        s, e = m(paddle.to_tensor(ids), paddle.zeros([2, 16], "int64"), paddle.arange(16).tile([2, 1]),
                 paddle.ones([2, 16], "int64"))
    print(f"uie: start {s.shape} {float(s.min()):.3f}..{float(s.max()):.3f} end {float(e.min()):.3f}.."
          f"{float(e.max()):.3f}")
    _save(m, out, id_specs(("input_ids", "token_type_ids", "position_ids", "attention_mask")))


BUILDERS = {
    "vit": build_vit,
    "deit": lambda out: build_vit(out, distilled=True),
    "swin": build_swin,
    "rtdetr": build_rtdetr,
    "rtdetr_nocfg": lambda out: build_rtdetr(out, with_cfg=False),
    "rtdetr_raw": lambda out: build_rtdetr(out, raw=True),
    "svtr": build_svtr,
    "svtr_dyn": lambda out: build_svtr(out, dynamic=True),
    "uie4": build_uie,
    "uie4_pos48": lambda out: build_uie(out, max_pos=48),
}

if __name__ == "__main__":
    kind, dest = sys.argv[1], Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    BUILDERS[kind](dest)
