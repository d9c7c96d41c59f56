"""Fused encoder ONNX graphs built inline from EncoderWeights, no Paddle (the tests and encoder_kernels use them):
the form the fusion pass writes (EmbedLayerNormalization, then Attention with 1-D key lengths from
ReduceSum(attention_mask), MatMul, SkipLayerNormalization with the O bias, MatMul, BiasGelu, MatMul,
SkipLayerNormalization with the FFN bias), and a head: the [CLS] row (Gather) or the masked mean, then a classifier."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fused_encoder_model(w, classes: int = 3, head: str = "cls", dtype=np.float32, seed: int = 0,
                        first_row: bool = False) -> onnx.ModelProto:
    """first_row (a [CLS] head): the last layer as the first-row pass leaves it (convert/fusion/first_row.py):
    keys and values from every row, the queries, O projection, LayerNorms and FFN at row 0, unfused attention."""
    if first_row and head != "cls":
        raise ValueError("first_row needs the [CLS] head (mean pooling reads every row)")
    ft = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    inits, nodes = [], []

    def c(name, a, cast=True):
        inits.append(numpy_helper.from_array(np.asarray(a, dtype) if cast else np.asarray(a), name))
        return name

    nodes += [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
              helper.make_node("Cast", ["token_type_ids"], ["types32"], to=TensorProto.INT32),
              helper.make_node("EmbedLayerNormalization",
                               ["ids32", "types32", c("word", w.word), c("pos", w.pos), c("types", w.types),
                                c("emb_g", w.emb_ln[0]), c("emb_b", w.emb_ln[1])], ["x0", "x0_mask_index"],
                               domain="com.microsoft", epsilon=w.eps),
              helper.make_node("Cast", ["attention_mask"], ["mask32"], to=TensorProto.INT32),
              helper.make_node("ReduceSum", ["mask32", c("axes", np.array([1], np.int64), cast=False)], ["lens"],
                               keepdims=0)]
    x = "x0"
    for i, l in enumerate(w.layers):
        p = f"l{i}_"
        if first_row and i == len(w.layers) - 1:
            nodes += _row0_attention(w, l, x, p, c, ft)
            skip = p + "x_row0"
        else:
            nodes.append(helper.make_node("Attention", [x, c(p + "wqkv", l.wqkv), c(p + "bqkv", l.bqkv), "lens"],
                                          [p + "a"], domain="com.microsoft", num_heads=w.num_heads))
            skip = x
        nodes += [helper.make_node("MatMul", [p + "a", c(p + "wo", l.wo)], [p + "m"]),
                  helper.make_node("SkipLayerNormalization", [p + "m", skip, c(p + "g1", l.ln1[0]),
                                                              c(p + "b1", l.ln1[1]), c(p + "bo", l.bo)], [p + "x1"],
                                   domain="com.microsoft", epsilon=w.eps),
                  helper.make_node("MatMul", [p + "x1", c(p + "w1", l.w1)], [p + "u"]),
                  helper.make_node("BiasGelu", [p + "u", c(p + "bf1", l.b1)], [p + "gl"], domain="com.microsoft"),
                  helper.make_node("MatMul", [p + "gl", c(p + "w2", l.w2)], [p + "d"]),
                  helper.make_node("SkipLayerNormalization", [p + "d", p + "x1", c(p + "g2", l.ln2[0]),
                                                              c(p + "b2", l.ln2[1]), c(p + "bf2", l.b2)], [p + "x"],
                                   domain="com.microsoft", epsilon=w.eps)]
        x = p + "x"
    rng = np.random.default_rng(seed)
    if head == "cls":
        nodes.append(helper.make_node("Gather", [x, c("zero", np.array(0, np.int64), cast=False)], ["pooled"], axis=1))
    else:                                   # masked mean over the sequence
        nodes += [helper.make_node("Cast", ["attention_mask"], ["maskf"], to=ft),
                  helper.make_node("Unsqueeze", ["maskf", c("ax2", np.array([2], np.int64), cast=False)], ["mask3"]),
                  helper.make_node("Mul", [x, "mask3"], ["masked"]),
                  helper.make_node("ReduceSum", ["masked", c("ax1", np.array([1], np.int64), cast=False)], ["summed"],
                                   keepdims=0),
                  helper.make_node("ReduceSum", ["mask3", "ax1"], ["count"], keepdims=0),
                  helper.make_node("Div", ["summed", "count"], ["pooled"])]
    nodes += [helper.make_node("MatMul", ["pooled", c("wc", rng.normal(0, 0.2, (w.hidden, classes)))], ["lc"]),
              helper.make_node("Add", ["lc", c("bc", rng.normal(0, 0.1, classes))], ["logits16"]),
              helper.make_node("Cast", ["logits16"], ["logits"], to=TensorProto.FLOAT)]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "token_type_ids", "attention_mask")]
    out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])]
    g = helper.make_graph(nodes, "fused_encoder", ins, out, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)      # what onnxruntime 1.17+ reads, whichever onnx writes it


def _row0_attention(w, l, x: str, p: str, c, ft) -> list:
    """The last layer's attention at row 0, as plain ops: X[:, :1]·Wq against every row's keys and values, the
    padded keys masked by -10000 from attention_mask -> p + "a" [B, 1, H]; p + "x_row0" the residual."""
    h, nh = w.hidden, w.num_heads
    d = h // nh
    q, k, v = (l.wqkv[:, j * h:(j + 1) * h] for j in range(3))
    bq, bk, bv = (l.bqkv[j * h:(j + 1) * h] for j in range(3))
    i64 = lambda name, a: c(name, np.array(a, np.int64), cast=False)   # noqa: E731
    heads = i64(p + "heads_shape", [0, 0, nh, d])
    n = [helper.make_node("Slice", [x, i64(p + "s0", [0]), i64(p + "s1", [1]), i64(p + "ax1", [1])], [p + "x_row0"])]
    for name, src, wt, bt, perm in (("q", p + "x_row0", q, bq, [0, 2, 1, 3]), ("k", x, k, bk, [0, 2, 3, 1]),
                                    ("v", x, v, bv, [0, 2, 1, 3])):
        n += [helper.make_node("MatMul", [src, c(p + "w" + name, wt)], [p + name + "_mm"]),
              helper.make_node("Add", [p + name + "_mm", c(p + "b" + name, bt)], [p + name + "_b"]),
              helper.make_node("Reshape", [p + name + "_b", heads], [p + name + "_r"]),
              helper.make_node("Transpose", [p + name + "_r"], [p + name + "_t"], perm=perm)]
    n += [helper.make_node("MatMul", [p + "q_t", p + "k_t"], [p + "qk"]),
          helper.make_node("Mul", [p + "qk", c(p + "scale", np.array(1 / np.sqrt(d)))], [p + "sc"]),
          helper.make_node("Cast", ["attention_mask"], [p + "mf"], to=ft),
          helper.make_node("Sub", [c(p + "one", np.array(1.0)), p + "mf"], [p + "pad"]),
          helper.make_node("Mul", [p + "pad", c(p + "neg", np.array(-10000.0))], [p + "bias2"]),
          helper.make_node("Unsqueeze", [p + "bias2", i64(p + "ax12", [1, 2])], [p + "bias"]),
          helper.make_node("Add", [p + "sc", p + "bias"], [p + "sm_in"]),
          helper.make_node("Softmax", [p + "sm_in"], [p + "probs"], axis=-1),
          helper.make_node("MatMul", [p + "probs", p + "v_t"], [p + "pv"]),
          helper.make_node("Transpose", [p + "pv"], [p + "pv_t"], perm=[0, 2, 1, 3]),
          helper.make_node("Reshape", [p + "pv_t", i64(p + "out_shape", [0, 0, h])], [p + "a"])]
    return n


def padded_feeds(batch: int, seq: int, vocab: int, seed: int) -> dict:
    """Right-padded rows: row 0 full, the others 1..seq-1 tokens, padding id 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (batch, seq)).astype(np.int64)
    for r in range(1, batch):
        ids[r, int(rng.integers(1, seq)):] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": (ids != 0).astype(np.int64)}
