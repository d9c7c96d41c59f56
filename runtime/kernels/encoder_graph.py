"""A bundle's fused encoder graph as the kernel encoder's weights plus the rest of the graph (the head).

The fusion pass (convert/fusion) writes a transformer encoder as EmbedLayerNormalization followed, per layer, by
Attention (packed QKV weight and bias, the mask as 1-D key lengths) -> MatMul -> SkipLayerNormalization (the O
bias) -> MatMul -> BiasGelu -> MatMul -> SkipLayerNormalization (the FFN-down bias). `read_encoder` walks that chain
from the embedding's output, reads each weight from the graph's initializers (the manifest, not names, says what
the model is: the walk follows the edges), and cuts what follows the last layer (pooling, classifier) into its own
ONNX model with onnx's Extractor, so onnxruntime runs the head on our hidden states. Any other shape of graph is a
BadInputError naming the node where the walk stopped: the caller keeps onnxruntime's session for it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..buckets import BucketRunner
from ..errors import BadInputError
from .encoder import EncoderWeights, Layer

log = logging.getLogger(__name__)
HEADS = ("graphs", "static", "dynamic")      # GraphEncoder's ways to run the head on the GPU


@dataclass
class EncoderGraph:
    weights: EncoderWeights
    head: bytes                  # the ONNX model from the last layer's output (+ graph inputs) to the outputs
    head_inputs: list[str]       # its inputs: `hidden` first, then the graph inputs it reads
    hidden: str                  # the last layer's output name
    float_type: type             # the graph's activation dtype (np.float16 / np.float32)
    prefix: bytes                # the graph's inputs -> the key lengths [B] (and, with no embedding fusion, the
    prefix_inputs: list[str]     #   first layer's input), run by onnxruntime: the graph says what its mask is
    lengths: str                 # the Attention nodes' 1-D key-length input
    dims: tuple[str, str] = ("batch", "sequence")   # the names of the graph's batch and sequence dimensions


def _walk(model) -> tuple[EncoderWeights, str, dict]:
    from onnx import numpy_helper
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    attrs = lambda n: {a.name: a for a in n.attribute}   # noqa: E731

    def arr(name: str, what: str, node) -> np.ndarray:
        if name not in inits:
            raise BadInputError(f"node {node.name or node.op_type}: its {what} ({name!r}) is not a constant")
        return numpy_helper.to_array(inits[name])

    def only(name: str, op: str, after) -> object:
        users = consumers.get(name, [])
        hits = [n for n in users if n.op_type == op and n.input and n.input[0] == name]
        if len(users) == 0 or not hits:
            raise BadInputError(f"after {after.name or after.op_type}: no {op} reads {name!r} (the fused encoder "
                                "form ends here)")
        return hits[0]

    emb = [n for n in g.node if n.op_type == "EmbedLayerNormalization"]
    graph_inputs = {i.name for i in g.input}
    word = pos = typ = emb_ln = None
    eps = 1e-12
    if len(emb) == 1 and not (len(emb[0].input) > 8 and emb[0].input[8] in graph_inputs):
        e = emb[0]                       # our embedding kernel (positions 0..seq-1, as paddle2onnx's graph builds them)
        eps = attrs(e)["epsilon"].f if "epsilon" in attrs(e) else eps
        word, pos, typ = (arr(e.input[i], w, e) for i, w in ((2, "word embedding"), (3, "position embedding"),
                                                              (4, "token type embedding")))
        emb_ln = (arr(e.input[5], "LayerNorm gamma", e), arr(e.input[6], "LayerNorm beta", e))
        cur = e.output[0]
    else:                                # the graph's own embedding ops, run by onnxruntime (read_encoder's prefix)
        first = next((n for n in g.node if n.op_type == "Attention"), None)
        if first is None:
            raise BadInputError("no Attention node: not a fused encoder graph")
        e, cur = first, first.input[0]
    layers, heads, lengths = [], None, None
    while any(n.op_type == "Attention" for n in consumers.get(cur, [])):
        att = only(cur, "Attention", e)
        a = attrs(att)
        nh = a["num_heads"].i
        wqkv, bqkv = arr(att.input[1], "QKV weight", att), arr(att.input[2], "QKV bias", att)
        h = wqkv.shape[0]
        scale = a["scale"].f if "scale" in a else 1.0 / np.sqrt(h // nh)
        if abs(scale * np.sqrt(h // nh) - 1.0) > 1e-5:
            raise BadInputError(f"{att.name}: attention scale {scale} is not 1/sqrt(head size)")
        if len(att.input) < 4 or not att.input[3]:
            raise BadInputError(f"{att.name}: no mask input; the kernel encoder takes the 1-D key-length mask")
        lengths = lengths or att.input[3]
        if att.input[3] != lengths or len(att.input) > 4 and any(att.input[4:]):
            raise BadInputError(f"{att.name}: a mask other than the shared 1-D key lengths, or past / bias inputs")
        o_mm = only(att.output[0], "MatMul", att)
        wo = arr(o_mm.input[1], "O weight", o_mm)
        sk1 = only(o_mm.output[0], "SkipLayerNormalization", o_mm)
        if sk1.input[1] != cur:
            raise BadInputError(f"{sk1.name}: its skip input is not the layer's input")
        up = only(sk1.output[0], "MatMul", sk1)
        gelu = only(up.output[0], "BiasGelu", up)
        down = only(gelu.output[0], "MatMul", gelu)
        sk2 = only(down.output[0], "SkipLayerNormalization", down)
        eps = attrs(sk2)["epsilon"].f if "epsilon" in attrs(sk2) else eps
        if sk2.input[1] != sk1.output[0]:
            raise BadInputError(f"{sk2.name}: its skip input is not the attention block's output")
        zeros = np.zeros(h, wqkv.dtype)
        layers.append(Layer(wqkv, bqkv, wo, arr(sk1.input[4], "O bias", sk1) if len(sk1.input) > 4 else zeros,
                            (arr(sk1.input[2], "gamma", sk1), arr(sk1.input[3], "beta", sk1)),
                            arr(up.input[1], "FFN-up weight", up), arr(gelu.input[1], "FFN-up bias", gelu),
                            arr(down.input[1], "FFN-down weight", down),
                            arr(sk2.input[4], "FFN-down bias", sk2) if len(sk2.input) > 4 else zeros,
                            (arr(sk2.input[2], "gamma", sk2), arr(sk2.input[3], "beta", sk2))))
        heads, cur = nh, sk2.output[0]
    if not layers:
        raise BadInputError("no Attention reads the embedding's output: not a fused encoder graph")
    start = e.output[0] if word is not None else e.input[0]
    return EncoderWeights(word, pos, typ, emb_ln, layers, heads, float(eps)), cur, {"lengths": lengths,
                                                                                   "start": start}


def read_encoder(path: str | Path) -> EncoderGraph:
    import onnx
    from onnx import TensorProto, helper
    from onnx.utils import Extractor
    model = onnx.load(str(path))
    weights, hidden, info = _walk(model)
    ftype = np.float16 if weights.layers[0].wqkv.dtype == np.float16 else np.float32
    # every cut tensor typed: onnx 1.17's Extractor infers shapes itself, later ones only read value_info; the
    # inference does not know the contrib ops, so what it leaves untyped is typed here (Attention's mask_index: int32)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # noqa: BLE001  (past 2 GB onnx cannot infer in memory: the typing below still applies)
        log.debug("shape inference skipped (%s)", e)
    g = model.graph
    known = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)}
    float_type = TensorProto.FLOAT16 if ftype is np.float16 else TensorProto.FLOAT
    ids_dims = [d.dim_param for d in g.input[0].type.tensor_type.shape.dim] if g.input else []
    dims = (ids_dims[0] or "batch", ids_dims[1] or "sequence") if len(ids_dims) == 2 else ("batch", "sequence")
    for name, elem, shape in ((hidden, float_type, [*dims, weights.hidden]),
                              (info["start"], float_type, [*dims, weights.hidden]),
                              (info["lengths"], TensorProto.INT32, [dims[0]])):
        if name not in known:
            g.value_info.append(helper.make_tensor_value_info(name, elem, shape))
            known.add(name)
    inputs = [i.name for i in g.input]

    def cut(first: list[str], outputs: list[str]):
        part = Extractor(model).extract_model(first + inputs, outputs)
        used = {x for n in part.graph.node for x in n.input} | set(outputs)
        keep = [i for i in part.graph.input if i.name in first or i.name in used]
        del part.graph.input[:]
        part.graph.input.extend(keep)
        return part.SerializeToString(), [i.name for i in keep]

    head, head_inputs = cut([hidden], [o.name for o in g.output])
    if hidden not in head_inputs:
        raise BadInputError("the graph's outputs do not read the last encoder layer's output")
    prefix, prefix_inputs = cut([], [info["lengths"]] + ([] if weights.embeds else [info["start"]]))
    return EncoderGraph(weights, head, head_inputs, hidden, ftype, prefix, prefix_inputs, info["lengths"], dims)


def check_right_padding(feeds: dict) -> None:
    """An attention_mask given must be right padding (each row's ones first): 1-D key lengths say nothing else."""
    if "attention_mask" in feeds:
        mask = np.asarray(feeds["attention_mask"]) != 0
        if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < mask.sum(1)[:, None]):
            raise BadInputError("attention_mask is not right padding (each row's ones first): the kernel encoder's "
                                "key lengths need it; pad on the right, as the bundle's tokenizer does")


class GraphEncoder:
    """A fused encoder bundle model run as the kernel encoder (its twins on "cpu") + onnxruntime for the rest:
    run(feeds) -> the graph's outputs, the feeds being the model's own inputs. The key lengths (and the embeddings,
    where they are not fused) come from the graph's own ops (the prefix model); an attention_mask given must be
    right padding (a row's ones first), the form 1-D key lengths assume.

    head (GPU): "graphs", the head as one static onnxruntime session a (batch, seq) shape (a bucket of
    runtime/buckets) reading the kernel encoder's output buffer of that shape in place, in onnxruntime's CUDA graph;
    "static", the same buckets without the graph (what "graphs" falls back to where onnxruntime refuses the
    capture); "dynamic", one session for every shape with the buffer bound each call."""

    def __init__(self, path: str | Path, device: str = "gpu", head: str = "graphs"):
        from ..session import SessionOptions, create_session
        from .encoder import KernelEncoder
        self.graph = read_encoder(path)
        self.encoder = KernelEncoder(self.graph.weights, device=device)
        # the head on the GPU the kernel encoder's buffers are on (CuPy's current device), not always device 0
        device_id = self.encoder.xp.cuda.Device().id if device == "gpu" else 0
        self.head = create_session(self.graph.head, SessionOptions(device=device, device_id=device_id))
        self.prefix = create_session(self.graph.prefix, SessionOptions())
        if head not in HEADS:
            raise BadInputError(f"head must be one of {HEADS}, got {head!r}")
        self.head_mode = head
        self.head_buckets: dict[tuple[int, int, bool], object] = {}    # (batch, seq, in a CUDA graph)

    def head_bucket(self, hidden):
        """The head's static session for hidden's (batch, seq), its input bound to hidden's buffer (the kernel
        encoder keeps one a shape, so the address a CUDA graph captured stays valid)."""
        from ..buckets import static_bucket
        from ..session import SessionOptions
        batch, seq = hidden.shape[:2]
        key = (batch, seq, self.head_mode == "graphs")
        if key not in self.head_buckets:
            bound = {self.graph.hidden: (hidden.data.ptr, hidden.shape, self.graph.float_type)}
            self.head_buckets[key] = static_bucket(
                self.graph.head, SessionOptions(device="gpu", device_id=hidden.device.id), self.graph.dims, batch, seq,
                [o.name for o in self.head.get_outputs()], key[2], bound)
            if key[2] and not self.head_buckets[key].cuda_graph:
                self.head_mode = "static"
        return self.head_buckets[key]

    def run(self, feeds: dict) -> list[np.ndarray]:
        ids = np.asarray(feeds["input_ids"])
        check_right_padding(feeds)
        lens, hidden0 = self.run_prefix(feeds)
        hidden = self.encoder.forward(ids, lens, feeds.get("token_type_ids"), hidden0)   # synchronized
        return self.run_head(hidden, {n: np.asarray(feeds[n]) for n in self.graph.head_inputs[1:]})

    def run_prefix(self, feeds: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph's own key lengths [B] (and the embedded input, where the embeddings are not fused)."""
        pre = self.prefix.run(None, {n: np.asarray(feeds[n]) for n in self.graph.prefix_inputs})
        return np.asarray(pre[0]).astype(np.int64), (pre[1] if len(pre) > 1 else None)

    def run_head(self, hidden, rest: dict) -> list[np.ndarray]:
        """The head on the last layer's output (the encoder's device buffer on the GPU) -> the graph's outputs."""
        xp = self.encoder.xp
        on_gpu = xp is not np and self.head.get_providers()[0] == "CUDAExecutionProvider"
        if on_gpu and self.head_mode != "dynamic" and hidden.dtype == self.graph.float_type:
            return self.head_bucket(hidden)(rest)
        if on_gpu:
            # the head reads our device buffer (no copy through the host); its outputs (logits) come back
            if hidden.dtype != self.graph.float_type:
                hidden = hidden.astype(self.graph.float_type)
                xp.cuda.get_current_stream().synchronize()      # before onnxruntime's own stream reads it
            b = self.head.io_binding()
            b.bind_input(self.graph.hidden, "cuda", hidden.device.id, self.graph.float_type, list(hidden.shape),
                         hidden.data.ptr)
            for n, v in rest.items():
                b.bind_cpu_input(n, v)
            for o in self.head.get_outputs():
                b.bind_output(o.name, "cpu")
            self.head.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()
        hidden = np.asarray(hidden if xp is np else xp.asnumpy(hidden), self.graph.float_type)
        return self.head.run(None, {self.graph.hidden: hidden, **rest})


class KernelRunner(BucketRunner):
    """BucketRunner (its chunking, bucket padding, length splits and output cuts) with each (batch, sequence) bucket
    run by GraphEncoder instead of a static onnxruntime session: one captured CUDA graph of the kernel encoder a
    bucket, onnxruntime for the prefix and the head."""

    def __init__(self, model: str | Path, spec, pad_values: dict[str, int] | None = None, device: str = "gpu"):
        self.encoder = GraphEncoder(model, device)
        super().__init__(model, [o.name for o in self.encoder.head.get_outputs()], spec=spec, pad_values=pad_values,
                         cuda_graph=self.encoder.encoder.cuda_graph)

    def bucket(self, batch: int, seq: int):
        """The bucket's call: padded feeds -> the outputs (GraphEncoder keeps a graph a shape)."""
        return self.encoder.run

    def run_bound(self, batch: int, seq: int) -> None:
        raise BadInputError("the kernel encoder binds its buffers inside GraphEncoder: call the runner with feeds")
