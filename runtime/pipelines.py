"""Task pipelines over a bundle: tokenization -> onnxruntime -> labels. Reads everything from the manifest."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import BadInputError, BundleError
from .numeric import softmax
from .manifest import load_bundle
from .selection import default_precision
from .buckets import BucketRunner, BucketSpec, batch_buckets
from .session import CUDA, Runner, SessionOptions

log = logging.getLogger(__name__)


NOT_A_CLASSIFIER_FIX = {
    "text-generation": "run it with `paddle2ort generate` (or `serve`), or give a text-classification bundle",
    "text2text-generation": "run it with `paddle2ort generate` (or `serve`), or give a text-classification bundle",
    "text-classification": "its manifest names no labels: convert it again with --labels",
    None: "give a text-classification bundle (a classifier converted without --task: convert it again with "
          "--task text-classification --labels ...)",
}


def scales_activations_per_batch(options: dict) -> bool:
    """Whether a model's options record onnxruntime's dynamic quantization (convert/precision.py: weight_type):
    its DynamicQuantizeLinear takes one activation scale over the whole batch, padding included, so a row's
    logits move with its batch-mates (up to a quarter of the logits' scale on the MiniLM sentiment bundle)."""
    return isinstance(options, dict) and "weight_type" in options


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    label_id: int


def cpu_encoder_session(opts: SessionOptions) -> SessionOptions:
    """On the CPU, unless the caller set `intra_op_spinning`: no intra-op spinning and no load-time
    SkipLayerNormFusion — 1.3x (FP32) to 2x (INT8) faster on a shared 2-core host (benchmarks/results/encoder/
    cpu-run3.json), 7-12% slower on an idle one (cpu-run5.json): the bounded loss is taken for the large gain.
    intra_op_spinning=True gives onnxruntime's defaults."""
    if opts.device != "cpu" or opts.providers or opts.intra_op_spinning is not None:
        return opts
    return replace(opts, intra_op_spinning=False,
                   disabled_optimizers=tuple(dict.fromkeys((*opts.disabled_optimizers, "SkipLayerNormFusion"))))


class TextClassifier:
    """Bundle-driven text classification: length-sorted batches to cut padding, truncation, manifest labels.

    Empty or whitespace-only texts are classified as what the model says for an empty sequence ([CLS][SEP]);
    texts longer than max_seq_length tokens are truncated (documented behaviour, no error).
    """

    def __init__(self, bundle_dir: str | Path, precision: str | None = None, session: SessionOptions = SessionOptions(),
                 tokenizer_backend: str = "hf", max_seq_length: int | None = None, batch_size: int = 32,
                 encoder: str = "onnxruntime", rows_alone: bool = False):
        """encoder="kernels" (GPU, experimental): the bundle's fused FP16 encoder runs on our kernels
        (runtime/kernels/encoder_graph.KernelRunner) in the same shape buckets, onnxruntime runs the head.
        rows_alone: a dynamically quantized model (batch_dependent: one activation scale a batch) runs each text
        alone, so its answer is the text's alone, at about half its batched throughput (INT8 alone is then about
        FP32's speed in batches). Off by default: a batch job's answers then depend (within quantization noise) on
        the texts batched together; the server never batches one client's texts with another's for such models."""
        from paddle2ort.tokenization import load_tokenizer

        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        if m.task != "text-classification" or not m.labels:
            raise BundleError(f"bundle {bundle_dir} is not a text classifier (task={m.task!r}, labels={m.labels}): "
                              f"{NOT_A_CLASSIFIER_FIX.get(m.task, NOT_A_CLASSIFIER_FIX[None])}")
        from paddle2ort.tokenization.base import FEEDS
        if not {i.name for i in m.inputs} <= set(FEEDS):
            raise BundleError(f"bundle {bundle_dir}'s model takes {[i.name for i in m.inputs]}, not token ids: a text "
                              f"classifier's inputs are among {list(FEEDS)} (what its tokenizer gives)")
        for name, v in (("batch_size", batch_size), ("max_seq_length", max_seq_length)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise BadInputError(f"{name} must be an integer >= 1, got {v!r}")
        if encoder not in ("onnxruntime", "kernels"):
            raise BadInputError(f"encoder must be 'onnxruntime' or 'kernels', got {encoder!r}")
        if encoder == "kernels" and not session.wants_cuda:
            raise BadInputError(f"encoder='kernels' runs on a CUDA GPU (this session asks for {session.device}): use "
                                "SessionOptions(device='gpu') on a GPU host, or the default encoder='onnxruntime'")
        self.labels = m.labels
        self.tokenizer = load_tokenizer(self.bundle.path, backend=tokenizer_backend)
        self.max_seq_length = max_seq_length or self.tokenizer.cfg.max_seq_length
        self.batch_size = batch_size
        self.precision = precision or default_precision(self.bundle, session.device)   # None: the released one
        entry = m.models.get(self.precision)
        self.batch_dependent = entry is not None and scales_activations_per_batch(entry.options)
        self.rows_alone = bool(rows_alone) and self.batch_dependent
        if self.rows_alone:
            log.debug("%s model %s: each text runs alone (its activations are quantized per batch)",
                      self.precision, entry.file)
        if encoder == "kernels" and self.precision != "fp16":
            raise BadInputError(f"encoder='kernels' runs the bundle's FP16 graph (the one fused for the GPU), not "
                                f"{self.precision!r}: pass precision='fp16' or leave it to the GPU default")
        session = cpu_encoder_session(session)
        # the whole model's session: the device check (and the fallback to CPU) before anything else; on the GPU
        # the buckets build their own, so it is dropped there and the weights are not held twice
        self.session = self.bundle.open_session(self.precision, session)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.provider = self.session.get_providers()[0]
        self.output_name = m.outputs[0].name
        spec = BucketSpec.for_max_length(self.max_seq_length, batch_buckets(batch_size))
        if encoder == "kernels" and self.provider != CUDA:
            raise BadInputError(f"encoder='kernels' runs on a CUDA GPU (this session runs on {self.provider}): use "
                                "SessionOptions(device='gpu') on a GPU host, or the default encoder='onnxruntime'")
        if self.provider == CUDA:
            self.session = None
        if encoder == "kernels":
            from .kernels.encoder_graph import KernelRunner
            self.runner = KernelRunner(self.bundle.model_path(self.precision), spec,
                                       pad_values={"input_ids": self.tokenizer.pad_id})
        elif self.provider == CUDA:     # static shape buckets, IO binding, a CUDA graph each
            self.runner = BucketRunner(self.bundle.model_path(self.precision), [self.output_name],
                                       self.bundle.session_options(self.precision, session), spec,
                                       pad_values={"input_ids": self.tokenizer.pad_id})
        else:
            self.runner = Runner(self.session, [self.output_name], session.device_id)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.batch_encode(texts, max_length=self.max_seq_length)
        return {n: enc[n] for n in self.input_names}

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return self.runner(feeds)[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are plain RuntimeErrors (InvalidArgument, ...)
            length = max((a.shape[-1] for a in feeds.values() if a.ndim == 2), default=0)
            converted = self.tokenizer.cfg.max_seq_length
            past_table = "out of range" in str(e) or "must be within" in str(e)      # a Gather's index check
            if length > converted and past_table:
                raise BadInputError(f"the model cannot take {length} tokens (max_seq_length={self.max_seq_length}; "
                                    f"the bundle was converted for {converted}): its position table ends before "
                                    "that; lower max_seq_length") from e
            raise

    def batches(self, texts: list[str]):
        """Yield (indices, texts) in batches of batch_size sorted by token count: each batch pads to its longest
        row (sorting by characters left a third of the dev split's positions padding: benchmarks/results/encoder).
        A dynamically quantized model (rows_alone) gets one text a batch: its answer is then the text's alone."""
        ids = self.tokenizer.batch_encode(list(texts), max_length=self.max_seq_length, return_numpy=False)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        step = 1 if self.rows_alone else self.batch_size
        for s in range(0, len(order), step):
            idx = order[s:s + step]
            yield idx, [texts[i] for i in idx]

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), np.float32)
        for idx, chunk in self.batches(texts):
            got = self.logits(self.encode(chunk))
            if got.ndim != 2 or got.shape[-1] != len(self.labels):
                raise BundleError(f"bundle {self.bundle.path}'s {self.precision} model gives logits of shape "
                                  f"{list(got.shape)} for {len(chunk)} text(s), but its manifest names "
                                  f"{len(self.labels)} labels ({', '.join(self.labels)}): the labels do not match "
                                  "the model; re-convert with the model's --labels")
            out[idx] = got
        return out

    def __call__(self, texts: list[str] | str) -> list[Prediction]:
        if isinstance(texts, str):
            texts = [texts]
        probs = softmax(self.predict_logits(list(texts))).astype(np.float32)
        ids = probs.argmax(-1)
        return [Prediction(self.labels[i], float(p[i]), int(i)) for i, p in zip(ids, probs)]
