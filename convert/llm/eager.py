"""Paddle-side LLM helpers (worker and zoo only): load a PaddleNLP causal LM, its eager greedy reference, and the
export wrapper run eagerly behind the runtime's decoder contract."""
from __future__ import annotations

import contextlib
import json
import os
import re

import numpy as np

from .families import FAMILIES, Family, family_name


class CheckpointMismatch(KeyError):
    """The weights do not fill the model config.json describes (the workers' exit 2, as an unsupported family)."""

    def __str__(self):
        return self.args[0]


# checkpoint keys a family's `prepare` reads itself (PaddleNLP's class reports them as unexpected)
CONSUMED = {"qwen2": re.compile(r"\.self_attn\.[qkv]_proj\.bias$")}


@contextlib.contextmanager
def _loading_report(report: dict):
    """PaddleNLP's from_pretrained logs the weights it could not place and goes on: with low_cpu_mem_usage a missing
    weight stays an empty tensor, a weight of another shape replaces the parameter, an unexpected one is dropped.
    Its own lists (and the shapes config.json gives each parameter) are kept in `report` for check_loaded."""
    from paddlenlp.transformers.model_utils import PretrainedModel
    original = PretrainedModel.__dict__["_load_pretrained_model"]

    def load(cls, *args, **kwargs):
        model = kwargs["model"] if "model" in kwargs else args[0]
        report["expected"] = {n: tuple(t.shape) for n, t in model.state_dict().items()}
        out = original.__func__(cls, *args, **kwargs)
        report["unexpected"] = list(out[2])
        return out
    PretrainedModel._load_pretrained_model = classmethod(load)
    try:
        yield
    finally:
        PretrainedModel._load_pretrained_model = original


def check_loaded(model, fam: Family, model_dir: str, report: dict) -> None:
    """Every parameter filled from the checkpoint at the shape config.json gives it, and no weight left over."""
    state = model.state_dict()
    empty = [n for n, t in state.items() if not t._is_initialized()]
    expected = report.get("expected", {})
    reshaped = [f"{n} {list(t.shape)} (config.json: {list(expected[n])})" for n, t in state.items()
                if n in expected and tuple(t.shape) != expected[n]]
    consumed = CONSUMED.get(fam.name)
    unused = sorted(k for k in report.get("unexpected", ()) if consumed is None or not consumed.search(k))
    fix = ("the config and the weights are not the same model's; put the model's own config.json beside its "
           "weights (or re-save the model with model.save_pretrained(DIR))")
    for what, names in (("it lacks", empty), ("these have another shape", reshaped),
                        ("it holds weights the model has no place for", unused)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise CheckpointMismatch(f"the checkpoint in {model_dir} does not fit the model its config.json "
                                     f"describes: {what} {shown}; {fix}")


def load_llm(model_dir: str):
    """-> (model in eval mode, its Family, architecture name). KeyError names an unsupported architecture or a
    checkpoint that does not fill the model its config.json describes."""
    import paddle
    import paddlenlp.transformers as T

    paddle.set_device("cpu")
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    fam = FAMILIES[family_name(cfg)]
    arch = (cfg.get("architectures") or [fam.model_class])[0]
    # low_cpu_mem_usage: the weights are created from the checkpoint, not randomly initialized first and then
    # overwritten (SmolLM2-135M: 6.5 s -> 1.5 s a load); the same parameters and buffers, checked equal for every family
    report: dict = {}
    with _loading_report(report):
        model = getattr(T, fam.model_class).from_pretrained(model_dir, dtype="float32", low_cpu_mem_usage=True)
    check_loaded(model, fam, model_dir, report)
    if fam.prepare is not None:
        fam.prepare(model, model_dir)
    model.eval()
    return model, fam, arch


REMAP_RTOL = 1e-4        # max |logits difference| / max |logits| between a family's class and its remapped form


def load_export_model(model_dir: str):
    """load_llm, then a family exported through another class of the same math (Family.remap) is remapped and
    checked: its logits on a fixed random sequence must equal the original class's. -> (model, family, arch)."""
    import paddle
    model, fam, arch = load_llm(model_dir)
    if fam.remap is None:
        return model, fam, arch
    out, name = fam.remap(model)
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, model.config.vocab_size, (1, 12)))
    with paddle.no_grad():
        a, b = (m(ids, return_dict=False) for m in (model, out))
    a, b = (x[0] if isinstance(x, (tuple, list)) else x for x in (a, b))
    diff = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12)
    if not diff <= REMAP_RTOL:
        raise RuntimeError(f"{arch} remapped onto the {name} family differs from PaddleNLP's class: max relative "
                           f"logit difference {diff:.3g} > {REMAP_RTOL}")
    return out, FAMILIES[name], arch


def raw_state(model_dir: str) -> dict[str, np.ndarray]:
    """The saved weights by name (safetensors or pdparams), including those the PaddleNLP class does not hold."""
    import glob
    state = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        from safetensors.numpy import load_file
        state.update(load_file(path))
    for path in sorted(glob.glob(os.path.join(model_dir, "*.pdparams"))):
        import paddle
        state.update({k: np.asarray(v) for k, v in paddle.load(path, return_numpy=True).items()})
    return state


def greedy(model, ids: list[int], n: int, stop_ids=()) -> list[int]:
    """Paddle dygraph greedy decoding with full recompute each step (no cache, no padding): the plainest reference."""
    import paddle
    seq = list(ids)
    with paddle.no_grad():
        for _ in range(n):
            logits = model(paddle.to_tensor([seq]), return_dict=False)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            seq.append(int(logits[0, -1].argmax()))
            if seq[-1] in stop_ids:
                break
    return seq[len(ids):]


class EagerDecoder:
    """The export wrapper run eagerly, as `model(input_ids, attention_mask, position_ids, past) -> (logits,
    present)`; `record` (a list) receives every call's inputs."""

    cache_dtype = np.float32

    def __init__(self, wrapper, config, fam: Family, record: list | None = None):
        from .wrapper import INPUT_NAMES
        self.wrapper, self.record, self.names = wrapper, record, INPUT_NAMES
        self.vocab_size, self.num_layers = config.vocab_size, config.num_hidden_layers
        self.kv_heads, self.head_dim = fam.kv_heads(config), fam.head_dim(config)

    def __call__(self, *arrays):
        import paddle
        with paddle.no_grad():
            logits, present = self.wrapper(*(paddle.to_tensor(np.ascontiguousarray(a)) for a in arrays))
        if self.record is not None:       # the inputs, and Paddle's logits as the fused decoder's reference
            self.record.append({**dict(zip(self.names, (np.array(a) for a in arrays))), "ref_logits": logits.numpy()})
        return logits.numpy(), present.numpy()
