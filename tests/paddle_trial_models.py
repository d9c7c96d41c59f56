"""Trial builders of model families paddle2ort had not been tried on: `python tests/paddle_trial_models.py NAME DIR`.

Small, random-weight re-creations (eval mode) of the public model code of PaddleRec (Wide&Deep, DeepFM, DIN, DSSM),
PaddleVideo (TSM, a C3D-style 3D-conv net), PaddleSpeech (DeepSpeech2, a Conformer encoder) and PaddleTS (an LSTM
and a TCN forecaster), each saved with paddle.jit.save(layer, DIR/"inference", input_spec=[...]) so DIR holds
inference.json + inference.pdiparams. Paddle is imported inside the builders.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

# ---------------------------------------------------------------- shared


def _save(layer, out: Path, specs):
    import paddle
    layer.eval()
    out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(layer, str(out / "inference"), input_spec=specs)


# Wide&Deep / DeepFM: 10 sparse slots (Criteo-like C1..C10 [N, 1] int64) + 13 dense floats
SLOT_SIZES = (1000, 2000, 5000, 10000, 20000, 50000, 100000, 3000, 8000, 1500)
DENSE_DIM = 13


def _slot_specs():
    import paddle
    return ([paddle.static.InputSpec([None, 1], "int64", f"C{i + 1}") for i in range(len(SLOT_SIZES))]
            + [paddle.static.InputSpec([None, DENSE_DIM], "float32", "dense_input")])


# ---------------------------------------------------------------- 1. PaddleRec


def build_wide_deep(out: Path):
    """PaddleRec models/rank/wide_deep WideDeepLayer: a wide Linear over the dense features + a deep MLP over the
    per-slot embeddings (reshaped to [N, dim]) concatenated with the dense features; sigmoid(wide + deep). One
    embedding table per slot, of the slot's vocabulary size (PaddleRec shares one table; per-slot sizes as
    industrial exports have)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    dim, layer_sizes = 8, [64, 32, 16]

    class WideDeepLayer(nn.Layer):
        def __init__(self):
            super().__init__()
            self.wide_part = nn.Linear(DENSE_DIM, 1, weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.TruncatedNormal(mean=0.0, std=1.0 / math.sqrt(DENSE_DIM))))
            self.embeddings = nn.LayerList([nn.Embedding(n, dim, weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.Uniform())) for n in SLOT_SIZES])
            sizes = [dim * len(SLOT_SIZES) + DENSE_DIM] + layer_sizes + [1]
            self.mlp = nn.LayerList()
            for i in range(len(sizes) - 1):
                self.mlp.append(nn.Linear(sizes[i], sizes[i + 1], weight_attr=paddle.ParamAttr(
                    initializer=nn.initializer.Normal(std=1.0 / math.sqrt(sizes[i])))))

        def forward(self, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, dense_input):
            sparse_inputs = [C1, C2, C3, C4, C5, C6, C7, C8, C9, C10]
            wide_output = self.wide_part(dense_input)
            sparse_embs = []
            for i, s_input in enumerate(sparse_inputs):
                emb = self.embeddings[i](s_input)
                sparse_embs.append(paddle.reshape(emb, shape=[-1, dim]))
            deep = paddle.concat(x=sparse_embs + [dense_input], axis=1)
            for i, layer in enumerate(self.mlp):
                deep = layer(deep)
                if i < len(self.mlp) - 1:
                    deep = F.relu(deep)
            return F.sigmoid(paddle.add(x=wide_output, y=deep))

    paddle.seed(1)
    _save(WideDeepLayer(), out, _slot_specs())


def build_deepfm(out: Path):
    """PaddleRec models/rank/deepfm: the slots concatenated ([N, 10]) index ONE shared table (first-order dim 1 and
    second-order dim 8, padding_idx 0) of sparse_feature_number rows; dense features weighted in; FM sum-square
    minus square-sum; a DNN over the field embeddings; sigmoid(first + second + dnn)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    number, dim, fields = 100000, 8, len(SLOT_SIZES)

    class FM(nn.Layer):
        def __init__(self):
            super().__init__()
            init = nn.initializer.TruncatedNormal(mean=0.0, std=0.1 / math.sqrt(float(dim)))
            self.embedding_one = nn.Embedding(number, 1, padding_idx=0, weight_attr=paddle.ParamAttr(initializer=init))
            self.embedding = nn.Embedding(number, dim, padding_idx=0, weight_attr=paddle.ParamAttr(initializer=init))
            self.dense_w_one = paddle.create_parameter(shape=[DENSE_DIM], dtype="float32",
                                                       default_initializer=nn.initializer.Constant(1.0))
            self.dense_w = paddle.create_parameter(shape=[1, DENSE_DIM, dim], dtype="float32",
                                                   default_initializer=nn.initializer.Constant(1.0))

        def forward(self, sparse_inputs, dense_inputs):
            sparse_inputs_concat = paddle.concat(sparse_inputs, axis=1)
            sparse_emb_one = self.embedding_one(sparse_inputs_concat)
            dense_emb_one = paddle.unsqueeze(paddle.multiply(dense_inputs, self.dense_w_one), axis=2)
            y_first_order = paddle.sum(sparse_emb_one, 1) + paddle.sum(dense_emb_one, 1)
            sparse_embeddings = self.embedding(sparse_inputs_concat)
            dense_embeddings = paddle.multiply(paddle.unsqueeze(dense_inputs, axis=2), self.dense_w)
            feat_embeddings = paddle.concat([sparse_embeddings, dense_embeddings], 1)
            summed_square = paddle.square(paddle.sum(feat_embeddings, 1))
            squared_sum = paddle.sum(paddle.square(feat_embeddings), 1)
            y_second_order = 0.5 * paddle.sum(summed_square - squared_sum, 1, keepdim=True)
            return y_first_order, y_second_order, feat_embeddings

    class DNN(nn.Layer):
        def __init__(self, sizes=(64, 32, 16)):
            super().__init__()
            s = [(fields + DENSE_DIM) * dim] + list(sizes) + [1]
            self.layers = nn.LayerList([nn.Linear(s[i], s[i + 1], weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.Normal(std=1.0 / math.sqrt(s[i])))) for i in range(len(s) - 1)])

        def forward(self, feat_embeddings):
            y = paddle.reshape(feat_embeddings, [-1, (fields + DENSE_DIM) * dim])
            for i, layer in enumerate(self.layers):
                y = layer(y)
                if i < len(self.layers) - 1:
                    y = F.relu(y)
            return y

    class DeepFMLayer(nn.Layer):
        def __init__(self):
            super().__init__()
            self.fm = FM()
            self.dnn = DNN()

        def forward(self, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, dense_input):
            sparse_inputs = [C1, C2, C3, C4, C5, C6, C7, C8, C9, C10]
            y_first_order, y_second_order, feat_embeddings = self.fm(sparse_inputs, dense_input)
            y_dnn = self.dnn(feat_embeddings)
            return F.sigmoid(y_first_order + y_second_order + y_dnn)

    paddle.seed(2)
    _save(DeepFMLayer(), out, _slot_specs())


def build_din(out: Path):
    """PaddleRec models/rank/din DINLayer: history item/category sequences [N, T], target item/category [N], the
    target tiled over T [N, T], and the additive attention mask [N, T, 1] (0 on real steps, -1e9 on padding) as the
    reader feeds them; attention MLP over [h, t, h - t, h * t], scaled softmax over T, weighted sum, MLP + item bias."""
    import paddle
    import paddle.nn as nn

    item_count, cat_count, item_dim, cat_dim = 6000, 800, 16, 16

    def mlp(sizes, acts):
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if acts[i] == "sigmoid":
                layers.append(nn.Sigmoid())
        return nn.Sequential(*layers)

    class DINLayer(nn.Layer):
        def __init__(self):
            super().__init__()
            self.hist_item_emb_attr = nn.Embedding(item_count, item_dim)
            self.hist_cat_emb_attr = nn.Embedding(cat_count, cat_dim)
            self.target_item_emb_attr = nn.Embedding(item_count, item_dim)
            self.target_cat_emb_attr = nn.Embedding(cat_count, cat_dim)
            self.target_item_seq_emb_attr = nn.Embedding(item_count, item_dim)
            self.target_cat_seq_emb_attr = nn.Embedding(cat_count, cat_dim)
            self.item_b_attr = nn.Embedding(item_count, 1)
            d = item_dim + cat_dim
            self.firInDim = d
            self.attention_layer = mlp([d * 4, 80, 40, 1], ["sigmoid", "sigmoid", None])
            self.con_layer = nn.Linear(d, d)
            self.con_layer2 = mlp([d * 2, 80, 40, 1], ["sigmoid", "sigmoid", None])

        def forward(self, hist_item_seq, hist_cat_seq, target_item, target_cat, mask, target_item_seq,
                    target_cat_seq):
            hist_item_emb = self.hist_item_emb_attr(hist_item_seq)
            hist_cat_emb = self.hist_cat_emb_attr(hist_cat_seq)
            target_item_emb = self.target_item_emb_attr(target_item)
            target_cat_emb = self.target_cat_emb_attr(target_cat)
            target_item_seq_emb = self.target_item_seq_emb_attr(target_item_seq)
            target_cat_seq_emb = self.target_cat_seq_emb_attr(target_cat_seq)
            item_b = self.item_b_attr(target_item)
            hist_seq_concat = paddle.concat([hist_item_emb, hist_cat_emb], axis=2)
            target_seq_concat = paddle.concat([target_item_seq_emb, target_cat_seq_emb], axis=2)
            target_concat = paddle.concat([target_item_emb, target_cat_emb], axis=1)
            concat = paddle.concat([hist_seq_concat, target_seq_concat, hist_seq_concat - target_seq_concat,
                                    hist_seq_concat * target_seq_concat], axis=2)
            atten_fc3 = self.attention_layer(concat) + mask
            atten_fc3 = paddle.transpose(atten_fc3, perm=[0, 2, 1])
            atten_fc3 = paddle.scale(atten_fc3, scale=self.firInDim ** -0.5)
            weight = paddle.nn.functional.softmax(atten_fc3)
            output = paddle.matmul(weight, hist_seq_concat)
            output = paddle.reshape(output, shape=[0, self.firInDim])
            concat = self.con_layer(output)
            embedding_concat = paddle.concat([concat, target_concat], axis=1)
            return self.con_layer2(embedding_concat) + item_b

    S = paddle.static.InputSpec
    paddle.seed(3)
    _save(DINLayer(), out, [S([None, None], "int64", "hist_item_seq"), S([None, None], "int64", "hist_cat_seq"),
                            S([None], "int64", "target_item"), S([None], "int64", "target_cat"),
                            S([None, None, 1], "float32", "mask"), S([None, None], "int64", "target_item_seq"),
                            S([None, None], "int64", "target_cat_seq")])


def build_dssm(out: Path):
    """PaddleRec models/match/dssm DSSMLayer at inference: query and positive-doc letter-trigram bags [N, trigram_d]
    through two tanh towers, cosine similarity [N, 1]; and, as its is_infer branch returns,
    paddle.ones([slice_end, 1])."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    trigram_d, hidden, slice_end = 2000, [300, 300, 128], 8

    def tower():
        sizes, layers = [trigram_d] + hidden, []
        for i in range(len(sizes) - 1):
            layers += [nn.Linear(sizes[i], sizes[i + 1], weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.XavierNormal(fan_in=sizes[i], fan_out=sizes[i + 1]))), nn.Tanh()]
        return nn.Sequential(*layers)

    class DSSMLayer(nn.Layer):
        def __init__(self):
            super().__init__()
            self.query_layers = tower()
            self.doc_pos_layers = tower()

        def forward(self, query, doc_pos):
            query_fc = self.query_layers(query)
            doc_pos_fc = self.doc_pos_layers(doc_pos)
            R_Q_D_p = F.cosine_similarity(query_fc, doc_pos_fc, axis=1).reshape([-1, 1])
            return R_Q_D_p, paddle.ones(shape=[slice_end, 1])

    S = paddle.static.InputSpec
    paddle.seed(4)
    _save(DSSMLayer(), out, [S([None, trigram_d], "float32", "query"), S([None, trigram_d], "float32", "doc_pos")])


# ---------------------------------------------------------------- 2. PaddleVideo


def build_tsm(out: Path):
    """PaddleVideo Recognizer2D + ResNetTSM + TSMHead: [N, T, 3, H, W] -> [N*T, 3, H, W], bottleneck blocks that
    temporal_shift their input (shift_ratio 1/num_seg), adaptive avg pool, reshape [N, T, C], mean over T, fc."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    num_seg, num_classes = 8, 10

    class ConvBNLayer(nn.Layer):
        def __init__(self, cin, cout, k, stride=1, act=None):
            super().__init__()
            self._conv = nn.Conv2D(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias_attr=False)
            self._batch_norm = nn.BatchNorm2D(cout)
            self._act = act

        def forward(self, x):
            y = self._batch_norm(self._conv(x))
            return F.relu(y) if self._act == "relu" else y

    class BottleneckBlock(nn.Layer):
        def __init__(self, cin, cout, stride, shortcut):
            super().__init__()
            self.conv0 = ConvBNLayer(cin, cout, 1, act="relu")
            self.conv1 = ConvBNLayer(cout, cout, 3, stride, act="relu")
            self.conv2 = ConvBNLayer(cout, cout * 4, 1)
            self.shortcut = shortcut
            if not shortcut:
                self.short = ConvBNLayer(cin, cout * 4, 1, stride)

        def forward(self, inputs):
            shifts = F.temporal_shift(inputs, num_seg, 1.0 / num_seg)
            y = self.conv2(self.conv1(self.conv0(shifts)))
            short = inputs if self.shortcut else self.short(inputs)
            return F.relu(paddle.add(x=short, y=y))

    class ResNetTSM(nn.Layer):
        def __init__(self, depth=(2, 2, 2), widths=(16, 32, 64)):
            super().__init__()
            self.conv = ConvBNLayer(3, 16, 7, 2, act="relu")
            self.pool2D_max = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
            blocks, cin = [], 16
            for s, (n, w) in enumerate(zip(depth, widths)):
                for i in range(n):
                    blocks.append(BottleneckBlock(cin, w, 2 if i == 0 and s != 0 else 1, shortcut=i != 0))
                    cin = w * 4
            self.blocks = nn.Sequential(*blocks)
            self.out_channels = cin

        def forward(self, x):
            return self.blocks(self.pool2D_max(self.conv(x)))

    class Recognizer2D(nn.Layer):
        def __init__(self):
            super().__init__()
            self.backbone = ResNetTSM()
            self.avgpool2d = nn.AdaptiveAvgPool2D((1, 1))
            self.dropout = nn.Dropout(p=0.5)
            self.in_channels = self.backbone.out_channels
            self.fc = nn.Linear(self.in_channels, num_classes)

        def forward(self, data_batch_0):
            imgs = paddle.reshape(data_batch_0, [-1] + list(data_batch_0.shape[2:]))
            x = self.dropout(self.avgpool2d(self.backbone(imgs)))
            x = paddle.reshape(x, [-1, num_seg, x.shape[1]])
            x = paddle.mean(x, axis=1)
            x = paddle.reshape(x, shape=[-1, self.in_channels])
            return self.fc(x)

    paddle.seed(5)
    _save(Recognizer2D(), out, [paddle.static.InputSpec([None, num_seg, 3, 64, 64], "float32", "data_batch_0")])


def build_c3d(out: Path):
    """A small C3D / Slow-pathway-style net: [N, 3, T, H, W], Conv3D + BatchNorm3D + ReLU stages with MaxPool3D
    (1,2,2 then 2,2,2), a 1x1x1 bottleneck, global AdaptiveAvgPool3D, dropout, fc, softmax."""
    import paddle
    import paddle.nn as nn

    def stage(cin, cout):
        return nn.Sequential(nn.Conv3D(cin, cout, 3, padding=1, bias_attr=False), nn.BatchNorm3D(cout), nn.ReLU())

    class C3D(nn.Layer):
        def __init__(self, num_classes=7):
            super().__init__()
            self.s1 = stage(3, 16)
            self.p1 = nn.MaxPool3D((1, 2, 2), (1, 2, 2))
            self.s2 = stage(16, 32)
            self.p2 = nn.MaxPool3D(2, 2)
            self.s3 = nn.Sequential(stage(32, 64), nn.Conv3D(64, 32, 1), nn.ReLU(), stage(32, 64))
            self.pool = nn.AdaptiveAvgPool3D(1)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.s3(self.p2(self.s2(self.p1(self.s1(x)))))
            x = paddle.flatten(self.pool(x), 1)
            return paddle.nn.functional.softmax(self.fc(self.drop(x)))

    paddle.seed(6)
    _save(C3D(), out, [paddle.static.InputSpec([None, 3, 8, 56, 56], "float32", "x")])


# ---------------------------------------------------------------- 3. PaddleSpeech


def _ds2(out: Path, rnn_lengths: bool):
    """PaddleSpeech DeepSpeech2 (paddlespeech/s2t/models/ds2): Conv2dSubsampling4Pure over [N, T, F] features
    (conv 3x3/2 + ReLU twice, lengths ((len - 1) // 2 - 1) // 2), bidirectional GRU layers each followed by
    LayerNorm, a ReLU fc, the CTC head (log_softmax). rnn_lengths: the lengths passed to the GRU as sequence_length
    (as PaddleSpeech does); else padded frames zeroed with the mask paddle.arange(T') < len and no sequence_length."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    feat, odim, rnn_size, vocab = 40, 16, 48, 30

    class Conv2dSubsampling4Pure(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2D(1, odim, 3, 2), nn.ReLU(), nn.Conv2D(odim, odim, 3, 2), nn.ReLU())
            self.output_dim = ((feat - 1) // 2 - 1) // 2 * odim

        def forward(self, x, x_len):
            x = self.conv(x.unsqueeze(1))                       # [b, c, t, f]
            x = x.transpose([0, 2, 1, 3]).reshape([0, 0, self.output_dim])
            x_len = ((x_len - 1) // 2 - 1) // 2
            return x, x_len

    class CRNNEncoder(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = Conv2dSubsampling4Pure()
            i = self.conv.output_dim
            self.rnn = nn.LayerList()
            self.layernorm_list = nn.LayerList()
            for _ in range(2):
                self.rnn.append(nn.GRU(input_size=i, hidden_size=rnn_size, num_layers=1, direction="bidirect"))
                self.layernorm_list.append(nn.LayerNorm(2 * rnn_size))
                i = 2 * rnn_size
            self.fc = nn.Linear(i, 64)

        def forward(self, x, x_lens):
            x, x_lens = self.conv(x, x_lens)
            if not rnn_lengths:
                mask = paddle.arange(paddle.shape(x)[1], dtype="int64").unsqueeze(0) < x_lens.unsqueeze(1)
                mask = mask.astype(x.dtype).unsqueeze(-1)
            for i in range(len(self.rnn)):
                if rnn_lengths:
                    x, _ = self.rnn[i](x, None, x_lens)
                else:
                    x, _ = self.rnn[i](x * mask)
                x = self.layernorm_list[i](x)
            return F.relu(self.fc(x)), x_lens

    class DeepSpeech2InferModel(nn.Layer):
        def __init__(self):
            super().__init__()
            self.encoder = CRNNEncoder()
            self.ctc_lo = nn.Linear(64, vocab)

        def forward(self, audio, audio_len):
            eouts, eouts_len = self.encoder(audio, audio_len)
            return F.log_softmax(self.ctc_lo(eouts), axis=2), eouts_len

    paddle.seed(7)
    _save(DeepSpeech2InferModel(), out, [paddle.static.InputSpec([None, None, feat], "float32", "audio"),
                                         paddle.static.InputSpec([None], "int64", "audio_len")])


def build_ds2(out: Path):
    _ds2(out, rnn_lengths=True)


def build_ds2_mask(out: Path):
    _ds2(out, rnn_lengths=False)


def build_conformer(out: Path, bool_constants: bool = True):
    """PaddleSpeech ConformerEncoder (paddlespeech/s2t/modules/encoder.py) + CTC head: Conv2dSubsampling4 with
    RelPositionalEncoding (x * sqrt(d), pe slice), masks = ~make_pad_mask(lens) (arange >= len) subsampled as
    x_mask[:, :, :-2:2][:, :, :-2:2]; 2 ConformerEncoderLayers (normalize_before): macaron FFN (x0.5, swish),
    RelPositionMultiHeadedAttention (pos_bias_u/v, linear_pos, masked_fill -inf, softmax, masked_fill 0),
    ConvolutionModule (pointwise conv -> GLU -> depthwise conv k=15 -> BatchNorm -> swish -> pointwise conv, padded
    frames zeroed), FFN (x0.5), final LayerNorm; after_norm; ctc_lo + log_softmax. bool_constants=False: masks
    inverted with logical_not and broadcast before paddle.where (PaddleSpeech's masked_fill helper), so the program
    holds no bool full / full_like constants."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    idim, d, heads, ffn, kernel, vocab, max_len = 40, 64, 4, 128, 15, 50, 1000

    def masked_fill(x, mask, value):
        if bool_constants:
            return paddle.where(mask, paddle.full_like(x, value), x)
        mask = mask.broadcast_to(paddle.shape(x))              # paddlespeech/s2t/__init__.py masked_fill
        return paddle.where(mask, paddle.ones_like(x) * value, x)

    class RelPositionalEncoding(nn.Layer):
        def __init__(self):
            super().__init__()
            self.xscale = math.sqrt(d)
            pos = paddle.arange(0, max_len, dtype="float32").unsqueeze(1)
            div = paddle.exp(paddle.arange(0, d, 2, dtype="float32") * -(math.log(10000.0) / d))
            pe = paddle.zeros([max_len, d])
            pe[:, 0::2] = paddle.sin(pos * div)
            pe[:, 1::2] = paddle.cos(pos * div)
            self.register_buffer("pe", pe.unsqueeze(0))

        def forward(self, x):
            return x * self.xscale, self.pe[:, 0:paddle.shape(x)[1]]

    class Conv2dSubsampling4(nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2D(1, d, 3, 2), nn.ReLU(), nn.Conv2D(d, d, 3, 2), nn.ReLU())
            self.out = nn.Linear(d * (((idim - 1) // 2 - 1) // 2), d)
            self.pos_enc = RelPositionalEncoding()

        def forward(self, x, x_mask):
            x = self.conv(x.unsqueeze(1))
            x = self.out(x.transpose([0, 2, 1, 3]).reshape([0, 0, -1]))
            x, pos_emb = self.pos_enc(x)
            return x, pos_emb, x_mask[:, :, :-2:2][:, :, :-2:2]

    class RelPositionMultiHeadedAttention(nn.Layer):
        def __init__(self):
            super().__init__()
            self.d_k, self.h = d // heads, heads
            self.linear_q, self.linear_k = nn.Linear(d, d), nn.Linear(d, d)
            self.linear_v, self.linear_out = nn.Linear(d, d), nn.Linear(d, d)
            self.linear_pos = nn.Linear(d, d, bias_attr=False)
            xavier = nn.initializer.XavierUniform()
            self.pos_bias_u = self.create_parameter([self.h, self.d_k], default_initializer=xavier)
            self.pos_bias_v = self.create_parameter([self.h, self.d_k], default_initializer=xavier)

        def forward(self, x, pos_emb, mask):
            q = self.linear_q(x).reshape([0, -1, self.h, self.d_k])                     # (b, t, h, d_k)
            k = self.linear_k(x).reshape([0, -1, self.h, self.d_k]).transpose([0, 2, 1, 3])
            v = self.linear_v(x).reshape([0, -1, self.h, self.d_k]).transpose([0, 2, 1, 3])
            p = self.linear_pos(pos_emb).reshape([1, -1, self.h, self.d_k]).transpose([0, 2, 1, 3])
            q_u = (q + self.pos_bias_u).transpose([0, 2, 1, 3])
            q_v = (q + self.pos_bias_v).transpose([0, 2, 1, 3])
            ac = paddle.matmul(q_u, k, transpose_y=True)
            bd = paddle.matmul(q_v, p, transpose_y=True)
            scores = (ac + bd) / math.sqrt(self.d_k)
            pad = (mask.unsqueeze(1).equal(paddle.to_tensor(False)) if bool_constants      # (b, 1, 1, t)
                   else mask.unsqueeze(1).logical_not())
            attn = masked_fill(F.softmax(masked_fill(scores, pad, -float("inf")), axis=-1), pad, 0.0)
            x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([0, 0, d])
            return self.linear_out(x)

    class ConvolutionModule(nn.Layer):
        def __init__(self):
            super().__init__()
            self.pointwise_conv1 = nn.Conv1D(d, 2 * d, 1)
            self.depthwise_conv = nn.Conv1D(d, d, kernel, padding=(kernel - 1) // 2, groups=d)
            self.norm = nn.BatchNorm1D(d)
            self.pointwise_conv2 = nn.Conv1D(d, d, 1)

        def forward(self, x, mask_pad):                # mask_pad (b, 1, t) True on padding
            x = masked_fill(x.transpose([0, 2, 1]), mask_pad, 0.0)
            x = F.glu(self.pointwise_conv1(x), axis=1)
            x = F.swish(self.norm(self.depthwise_conv(x)))
            x = masked_fill(self.pointwise_conv2(x), mask_pad, 0.0)
            return x.transpose([0, 2, 1])

    class FFN(nn.Layer):
        def __init__(self):
            super().__init__()
            self.w_1, self.w_2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

        def forward(self, x):
            return self.w_2(F.swish(self.w_1(x)))

    class ConformerEncoderLayer(nn.Layer):
        def __init__(self):
            super().__init__()
            self.self_attn, self.conv_module = RelPositionMultiHeadedAttention(), ConvolutionModule()
            self.feed_forward, self.feed_forward_macaron = FFN(), FFN()
            self.norm_ff, self.norm_mha, self.norm_ff_macaron = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
            self.norm_conv, self.norm_final = nn.LayerNorm(d), nn.LayerNorm(d)

        def forward(self, x, mask, pos_emb, mask_pad):
            x = x + 0.5 * self.feed_forward_macaron(self.norm_ff_macaron(x))
            x = x + self.self_attn(self.norm_mha(x), pos_emb, mask)
            x = x + self.conv_module(self.norm_conv(x), mask_pad)
            x = x + 0.5 * self.feed_forward(self.norm_ff(x))
            return self.norm_final(x)

    class ConformerCTC(nn.Layer):
        def __init__(self):
            super().__init__()
            self.embed = Conv2dSubsampling4()
            self.encoders = nn.LayerList([ConformerEncoderLayer() for _ in range(2)])
            self.after_norm = nn.LayerNorm(d)
            self.ctc_lo = nn.Linear(d, vocab)

        def forward(self, speech, speech_lengths):
            t = paddle.shape(speech)[1]
            seq_range = paddle.arange(0, t, dtype="int64").unsqueeze(0)
            masks = (seq_range >= speech_lengths.unsqueeze(-1)).logical_not().unsqueeze(1)    # (b, 1, T)
            xs, pos_emb, masks = self.embed(speech, masks)
            mask_pad = masks.logical_not()
            for layer in self.encoders:
                xs = layer(xs, masks, pos_emb, mask_pad)
            xs = self.after_norm(xs)
            return F.log_softmax(self.ctc_lo(xs), axis=2)

    paddle.seed(8)
    _save(ConformerCTC(), out, [paddle.static.InputSpec([None, None, idim], "float32", "speech"),
                                paddle.static.InputSpec([None], "int64", "speech_lengths")])


# ---------------------------------------------------------------- 4. PaddleTS


def build_lstm_forecaster(out: Path):
    """PaddleTS RNNBlockRegressor-like: past_target [N, in_chunk, C] -> 2-layer LSTM -> last step -> fc ->
    [N, out_chunk, C]."""
    import paddle
    import paddle.nn as nn

    in_chunk, out_chunk, c, hidden = 96, 24, 7, 64

    class RNNBlock(nn.Layer):
        def __init__(self):
            super().__init__()
            self._rnn = nn.LSTM(c, hidden, num_layers=2)
            self._fc = nn.Sequential(nn.Linear(hidden, 128), nn.ReLU(), nn.Linear(128, out_chunk * c))

        def forward(self, past_target):
            out, _ = self._rnn(past_target)
            return self._fc(out[:, -1, :]).reshape([-1, out_chunk, c])

    paddle.seed(9)
    _save(RNNBlock(), out, [paddle.static.InputSpec([None, in_chunk, c], "float32", "past_target")])


def build_tcn_forecaster(out: Path):
    """PaddleTS TCNRegressor-like: past_target [N, in_chunk, C] -> [N, C, T] -> TemporalBlocks (weight-normed causal
    dilated Conv1D with right chomp, ReLU, twice; 1x1 residual where channels change), dilation 2**i -> a Conv1D to C
    channels -> the last out_chunk steps [N, out_chunk, C]."""
    import paddle
    import paddle.nn as nn
    from paddle.nn.utils import weight_norm

    in_chunk, out_chunk, c, k = 96, 24, 7, 3

    class TemporalBlock(nn.Layer):
        def __init__(self, cin, cout, dilation):
            super().__init__()
            self.pad = (k - 1) * dilation
            self.conv1 = weight_norm(nn.Conv1D(cin, cout, k, padding=self.pad, dilation=dilation))
            self.conv2 = weight_norm(nn.Conv1D(cout, cout, k, padding=self.pad, dilation=dilation))
            self.downsample = nn.Conv1D(cin, cout, 1) if cin != cout else None

        def forward(self, x):
            y = nn.functional.relu(self.conv1(x)[:, :, :-self.pad])
            y = nn.functional.relu(self.conv2(y)[:, :, :-self.pad])
            res = x if self.downsample is None else self.downsample(x)
            return nn.functional.relu(y + res)

    class TCN(nn.Layer):
        def __init__(self, channels=(32, 32, 32, 32)):
            super().__init__()
            blocks, cin = [], c
            for i, ch in enumerate(channels):
                blocks.append(TemporalBlock(cin, ch, 2 ** i))
                cin = ch
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Conv1D(cin, c, 1)

        def forward(self, past_target):
            y = self.head(self.blocks(past_target.transpose([0, 2, 1])))
            return y[:, :, -out_chunk:].transpose([0, 2, 1])

    paddle.seed(10)
    _save(TCN(), out, [paddle.static.InputSpec([None, in_chunk, c], "float32", "past_target")])


BUILDERS = {
    "wide_deep": build_wide_deep,
    "deepfm": build_deepfm,
    "din": build_din,
    "dssm": build_dssm,
    "tsm": build_tsm,
    "c3d": build_c3d,
    "ds2": build_ds2,
    "ds2_mask": build_ds2_mask,
    "conformer": build_conformer,
    "conformer_nobool": lambda out: build_conformer(out, bool_constants=False),
    "lstm_forecaster": build_lstm_forecaster,
    "tcn_forecaster": build_tcn_forecaster,
}

if __name__ == "__main__":
    BUILDERS[sys.argv[1]](Path(sys.argv[2]))
