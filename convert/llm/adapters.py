"""Adapters for convert-llm, in PaddleNLP's own layouts (paddlenlp.peft, as its LLM predictor's --lora_path and
--prefix_path take them):

- LoRA (`lora_config.json` + `lora_model_state.pdparams`, keys `<module>.lora_A` [in, r] / `<module>.lora_B`
  [r, out], scaling lora_alpha / r, or lora_alpha / sqrt(r) with rslora): merged into the base weights before the
  export, W + A @ B * scaling, as LoRALinear's merge_weights does; full weights it carries (trainable_modules)
  replace the base's.
- PTuning v2 prefix (`prefix_config.json` + `prefix_model_state.pdparams`, optionally the predictor's
  `pre_caches.npy`): the prefix encoder's output, in the pre_caches layout [layer, k|v, kv_head, prefix, head_dim],
  ships in the bundle; the decode loop starts every row's cache with it (runtime.prefix).

Parent side (no Paddle): the adapter files are read (NumPy-only unpickling) and checked against the base model
before any worker starts; the merge is NumPy. Worker side (`export_hook`, run by the export_llm worker on the model
it exports, so no extra Paddle process): PaddleNLP's LoRAModel / PrefixModelForCausalLM wrapping the base are the
references the merged model and the exported prefix rows are checked against (`finish_adapter` gates them).
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.files import read_json_object
from paddle2ort.runtime.prefix import PRE_CACHES_LAYOUT

log = logging.getLogger(__name__)

LORA_CONFIG, LORA_WEIGHTS = "lora_config.json", "lora_model_state.pdparams"
PREFIX_CONFIG, PREFIX_WEIGHTS, PRE_CACHES = "prefix_config.json", "prefix_model_state.pdparams", "pre_caches.npy"
BUNDLE_PREFIX = "prefix/pre_caches.npy"
# Families whose PaddleNLP class takes a prefix as LLaMA's cache ([batch, prefix, kv_head, head_dim] per layer,
# paddlenlp.peft.prefix.utils.llama_postprocess_past_key_value)
PREFIX_FAMILIES = ("llama", "mistral", "qwen2")
STATE_MAP_KEY = "StructuredToParameterName@@"          # paddle.save's name table, not a weight


# ----------------------------------------------------------------------------- reading paddle.save files, no Paddle
# paddle.save writes a pickle of NumPy arrays; a pickle may name any callable, so only NumPy's array reconstruction
# is let through (pickle.Unpickler.find_class is the one hook the standard library gives for that).
_NUMPY_GLOBALS = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                  ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of a NumPy array")


class _Shape:
    """Stands in for an array while only shapes are read: its data bytes are dropped as they are unpickled."""

    def __init__(self, *_):
        self.shape, self.dtype = (), None

    def __setstate__(self, state):
        self.shape, self.dtype = tuple(int(n) for n in state[1]), state[2]


class _ShapesOnly(_NumpyOnly):
    def find_class(self, module, name):
        if name == "_reconstruct":
            super().find_class(module, name)                 # still only NumPy's
            return _Shape
        return super().find_class(module, name)


def _unpickle(path: Path, shapes_only: bool = False) -> dict:
    try:
        with open(path, "rb") as f:
            d = (_ShapesOnly if shapes_only else _NumpyOnly)(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
        raise BadInputError(f"{path} is not a state dict written by paddle.save ({e}); it is damaged or not a "
                            "PaddleNLP weight file: re-save it with save_pretrained") from e
    if not isinstance(d, dict):
        raise BadInputError(f"{path} holds a {type(d).__name__}, not a state dict; re-save it with save_pretrained")
    return {k: v for k, v in d.items() if k != STATE_MAP_KEY}


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.pdparams"))


def weight_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every saved weight of a model directory, without loading the data."""
    shapes = {}
    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="numpy") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        else:
            shapes.update({k: v.shape for k, v in _unpickle(path, shapes_only=True).items()
                           if isinstance(v, _Shape)})
    return shapes


def _as_float32(a: np.ndarray, bf16: bool) -> np.ndarray:
    """float32 copy; uint16 arrays of a bfloat16 checkpoint are bfloat16 bit patterns (paddle.save's form)."""
    if bf16 and a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a, np.float32) if np.issubdtype(a.dtype, np.floating) else a


def load_weights(model_dir: Path, bf16: bool = False) -> dict[str, np.ndarray]:
    state = {}
    for path in weight_files(model_dir):
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file
            state.update(load_file(str(path)))
        else:
            state.update({k: v for k, v in _unpickle(path).items() if isinstance(v, np.ndarray)})
    return {k: _as_float32(v, bf16) for k, v in state.items()}


def _read_json(path: Path, what: str, fix: str) -> dict:
    if not path.is_file():
        raise BadInputError(f"{path.parent} is not a {what} directory (no {path.name}); {fix}")
    return read_json_object(path, f"{what} config", fix)


def _weights_file(path: Path, name: str, fix: str) -> Path:
    f = path / name
    if not f.is_file():
        shards = sorted(p.name for p in path.glob(name.replace(".pdparams", ".tp*.pdparams")))
        if shards:
            raise BadInputError(f"{path} holds tensor-parallel shards ({', '.join(shards)}), not one {name}; "
                                "save the adapter with save_pretrained(DIR, merge_tensor_parallel=True)")
        raise BadInputError(f"{path} has no {name}; {fix}")
    if f.stat().st_size == 0:
        raise BadInputError(f"{f} is empty (0 bytes); {fix}")
    return f


# ----------------------------------------------------------------------------- LoRA
LORA_FIX = "save the adapter with paddlenlp.peft.LoRAModel.save_pretrained(DIR)"


@dataclass(frozen=True)
class LoraAdapter:
    path: Path
    rank: int
    alpha: float
    scaling: float
    rslora: bool
    target_modules: tuple[str, ...]
    modules: tuple[str, ...]          # base modules the adapter changes (`<module>.weight` += A @ B * scaling)
    replaced: tuple[str, ...]         # full weights it carries (trainable_modules), replacing the base's

    def manifest(self) -> dict:
        return {"kind": "lora", "dir": self.path.name, "rank": self.rank, "alpha": self.alpha,
                "scaling": self.scaling, "rslora": self.rslora, "target_modules": list(self.target_modules),
                "merged_modules": len(self.modules), "replaced_weights": list(self.replaced),
                "sha256": adapter_sha256(self.path, (LORA_CONFIG, LORA_WEIGHTS))}


def lora_scaling(alpha: float, r: int, rslora: bool) -> float:
    """LoRALinear's: alpha / r, or alpha / sqrt(r) with rslora."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def _target_patterns(cfg: dict, path: Path) -> tuple[str, ...]:
    t = cfg.get("target_modules")
    pats = (t,) if isinstance(t, str) else tuple(t) if isinstance(t, list) else None
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise BadInputError(f"{path / LORA_CONFIG}: target_modules must name the modules LoRA applies to (a regex "
                            f"or a list of them), got {t!r}; {LORA_FIX}")
    for p in pats:
        try:
            re.compile(p)
        except re.error as e:
            raise BadInputError(f"{path / LORA_CONFIG}: target_modules {p!r} is not a regular expression ({e})") from e
    return pats


def check_lora(path: Path, source: Path) -> LoraAdapter:
    """The LoRA directory against the base model (names and shapes only): exit 2 naming what does not fit."""
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"--lora {path} is not a directory; pass the directory LoRAModel.save_pretrained wrote")
    cfg = _read_json(path / LORA_CONFIG, "PaddleNLP LoRA", LORA_FIX)
    r, alpha = cfg.get("r"), cfg.get("lora_alpha", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise BadInputError(f"{path / LORA_CONFIG}: r must be a positive integer (the LoRA rank), got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise BadInputError(f"{path / LORA_CONFIG}: lora_alpha must be a number, got {alpha!r}")
    for key, why in (("pissa", "PiSSA rewrites the base weights at its first forward"),
                     ("enable_lora_list", "merged-projection LoRA (enable_lora_list) splits A/B per head"),
                     ("do_qat", "quantization-aware LoRA carries quantizer scales")):
        if cfg.get(key):
            raise BadInputError(f"{path / LORA_CONFIG}: {key} is set: {why}, which this merge does not cover; merge "
                                "it in PaddleNLP (LoRAModel ... .restore_original_model() after eval()) and convert "
                                "the merged model without --lora")
    pats = _target_patterns(cfg, path)
    rslora = bool(cfg.get("rslora", False))
    weights = _unpickle(_weights_file(path, LORA_WEIGHTS, LORA_FIX), shapes_only=True)
    base = weight_shapes(source)
    lora = {k: v.shape for k, v in weights.items() if isinstance(v, _Shape)}
    mods: dict[str, dict[str, tuple]] = {}
    replaced = []
    for k, shape in lora.items():
        mod, _, part = k.rpartition(".")
        if part in ("lora_A", "lora_B"):
            mods.setdefault(mod, {})[part] = shape
        elif k not in base:
            raise BadInputError(f"{path / LORA_WEIGHTS} carries weight {k!r}, which the base model {source} does "
                                "not have: the adapter was trained on another model; pass its own base")
        elif base[k] != shape:
            raise BadInputError(f"{path / LORA_WEIGHTS}: {k} is {list(shape)} but the base's is {list(base[k])}: "
                                "the adapter was trained on another model; pass its own base")
        else:
            replaced.append(k)
    if not mods:
        raise BadInputError(f"{path / LORA_WEIGHTS} holds no LoRA weights (no `<module>.lora_A` / `.lora_B` keys); "
                            f"{LORA_FIX}")
    linear = {k[:-len(".weight")] for k, s in base.items() if k.endswith(".weight") and len(s) == 2}
    targeted = {m for m in linear if any(re.fullmatch(p, m) for p in pats)}
    if not targeted:
        example = sorted(linear)[:3]
        raise BadInputError(f"target_modules {list(pats)} of {path / LORA_CONFIG} match no module of the base "
                            f"{source} (its modules are named like {example}): the target module is absent, the "
                            "adapter is for another architecture; pass its own base")
    for m, parts in sorted(mods.items()):
        if set(parts) != {"lora_A", "lora_B"}:
            have, miss = next(iter(parts)), ({"lora_A", "lora_B"} - set(parts)).pop()
            raise BadInputError(f"{path / LORA_WEIGHTS} has {m}.{have} but not {m}.{miss} (missing key); the file "
                                f"is incomplete: {LORA_FIX}")
        if m + ".weight" not in base:
            raise BadInputError(f"{path / LORA_WEIGHTS} adapts {m}, a module the base {source} does not have "
                                "(target module absent): the adapter is for another model; pass its own base")
        (a_in, a_r), (b_r, b_out), (w_in, w_out) = parts["lora_A"], parts["lora_B"], base[m + ".weight"]
        if a_r != r or b_r != r:
            raise BadInputError(f"rank mismatch: {path / LORA_CONFIG} says r={r} but {m}.lora_A is "
                                f"{[a_in, a_r]} and {m}.lora_B {[b_r, b_out]}: the config and the weights are "
                                f"from different adapters; {LORA_FIX}")
        if (a_in, b_out) != (w_in, w_out):
            raise BadInputError(f"{m}: the adapter is for a [{a_in}, {b_out}] layer but the base's {m}.weight is "
                                f"{[w_in, w_out]}: wrong base model; pass the model the adapter was trained on")
    missing = sorted(targeted - set(mods))
    if missing:
        raise BadInputError(f"{path / LORA_WEIGHTS} lacks LoRA weights for {len(missing)} module(s) its "
                            f"target_modules name in this base (missing keys, first: {missing[0]}.lora_A): the "
                            "adapter is incomplete or for another model")
    stray = sorted(set(mods) - targeted)
    if stray:
        raise BadInputError(f"{path / LORA_WEIGHTS} has LoRA weights for {stray[0]}, which target_modules "
                            f"{list(pats)} do not name: the config and the weights are from different adapters")
    import numpy as np
    bad = [k for k, v in _unpickle(_weights_file(path, LORA_WEIGHTS, LORA_FIX)).items()
           if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:                               # merged, they would fail the gate on NaN inputs, naming a temp file
        raise BadInputError(f"{path / LORA_WEIGHTS}: {bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''} "
                            "hold NaN or Inf values: the adapter's training diverged or the file is damaged; use a "
                            "finite checkpoint")
    if alpha == 0:
        log.warning("%s: lora_alpha is 0, so the merged adapter changes nothing (scaling 0)", path / LORA_CONFIG)
    return LoraAdapter(path, r, float(alpha), lora_scaling(alpha, r, rslora), rslora, pats, tuple(sorted(mods)),
                       tuple(sorted(replaced)))


def merge_lora(adapter: LoraAdapter, source: Path, dest: Path) -> Path:
    """A model directory at dest: the base's config (and generation config) with W + A @ B * scaling for each
    adapted module, in float32 (model.safetensors). Computed here in NumPy, not by PaddleNLP: the gate compares
    it with PaddleNLP's LoRAModel."""
    from safetensors.numpy import save_file
    cfg = json.loads((source / "config.json").read_text(encoding="utf-8"))
    bf16 = str(cfg.get("dtype") or "") == "bfloat16"
    state = load_weights(source, bf16)
    lora = {k: _as_float32(v, bf16) for k, v in _unpickle(adapter.path / LORA_WEIGHTS).items()
            if isinstance(v, np.ndarray)}
    for m in adapter.modules:
        w = state[m + ".weight"]
        state[m + ".weight"] = (w.astype(np.float64)
                                + (lora[m + ".lora_A"].astype(np.float64) @ lora[m + ".lora_B"].astype(np.float64))
                                * adapter.scaling).astype(np.float32)
    for k in adapter.replaced:
        state[k] = lora[k]
    dest.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(dest / "model.safetensors"),
              metadata={"format": "np"})
    log.info("LoRA r=%d alpha=%g (scaling %g) merged into %d modules%s", adapter.rank, adapter.alpha,
             adapter.scaling, len(adapter.modules),
             f", {len(adapter.replaced)} full weights replaced" if adapter.replaced else "")
    return dest


# ----------------------------------------------------------------------------- PTuning v2 prefix
PREFIX_FIX = "save the adapter with paddlenlp.peft.PrefixModelForCausalLM.save_pretrained(DIR)"


@dataclass(frozen=True)
class PrefixAdapter:
    path: Path
    num_prefix_tokens: int
    projection: bool
    layers: int
    kv_heads: int
    head_dim: int

    @property
    def pre_caches_shape(self) -> tuple[int, ...]:
        return (self.layers, 2, self.kv_heads, self.num_prefix_tokens, self.head_dim)

    def manifest(self, sha: str) -> dict:
        names = (PREFIX_CONFIG, PREFIX_WEIGHTS) + ((PRE_CACHES,) if (self.path / PRE_CACHES).is_file() else ())
        return {"kind": "prefix", "dir": self.path.name, "num_prefix_tokens": self.num_prefix_tokens,
                "prefix_projection": self.projection, "file": BUNDLE_PREFIX, "file_sha256": sha,
                "layout": PRE_CACHES_LAYOUT, "positions": "real tokens count from 0; prefix rows take none",
                "sha256": adapter_sha256(self.path, names)}


def check_prefix(path: Path, cfg: dict, family: str, fused: bool) -> PrefixAdapter:
    """The prefix directory against the base's config.json: exit 2 naming what does not fit."""
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"--prefix {path} is not a directory; pass the directory "
                            "PrefixModelForCausalLM.save_pretrained wrote")
    if family not in PREFIX_FAMILIES:
        raise BadInputError(f"--prefix covers the {', '.join(PREFIX_FAMILIES)} families (PaddleNLP's LLaMA cache "
                            f"layout); this model is {family}")
    if fused:
        raise BadInputError("the fused decoder does not take a prefix cache (its attention numbers positions by "
                            "cache slot); leave out --fused with --prefix")
    pc = _read_json(path / PREFIX_CONFIG, "PaddleNLP prefix-tuning", PREFIX_FIX)
    where = path / PREFIX_CONFIG
    n = pc.get("num_prefix_tokens")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadInputError(f"{where}: num_prefix_tokens must be a positive integer, got {n!r}; {PREFIX_FIX}")
    if (pc.get("tensor_parallel_degree") or -1) > 1:
        raise BadInputError(f"{where}: tensor_parallel_degree {pc['tensor_parallel_degree']}: save the adapter with "
                            "save_pretrained(DIR, merge_tensor_parallel=True)")
    layers, heads, hidden = cfg.get("num_hidden_layers"), cfg.get("num_attention_heads"), cfg.get("hidden_size")
    kvh = cfg.get("num_key_value_heads") or heads
    for key, want in (("num_hidden_layers", layers), ("num_attention_heads", heads), ("hidden_size", hidden)):
        if pc.get(key) != want:
            raise BadInputError(f"{where}: {key}={pc.get(key)!r} but the base model has {want}: the prefix was "
                                "trained on another model; pass its own base")
    prefix_heads = pc.get("multi_query_group_num") or pc.get("num_attention_heads")
    if prefix_heads != kvh:
        raise BadInputError(f"{where}: the prefix has {prefix_heads} K/V heads but the base has {kvh} "
                            "(num_key_value_heads): create the PrefixConfig with multi_query_group_num="
                            f"{kvh} for this model, or pass the prefix's own base")
    d = hidden // heads
    width = 2 * layers * kvh * d
    proj = bool(pc.get("prefix_projection"))
    ph = pc.get("prefix_projection_hidden_size")
    want = ({"0.weight": (n, kvh * d), "1.weight": (kvh * d, ph), "1.bias": (ph,), "3.weight": (ph, width),
             "3.bias": (width,)} if proj else {"0.weight": (n, width)})
    got = {k: v.shape for k, v in _unpickle(_weights_file(path, PREFIX_WEIGHTS, PREFIX_FIX), True).items()
           if isinstance(v, _Shape)}
    if set(got) != set(want):
        raise BadInputError(f"{path / PREFIX_WEIGHTS} holds {sorted(got)} but a prefix encoder with "
                            f"prefix_projection={proj} has {sorted(want)} (missing keys): the config and the weights "
                            f"are from different adapters; {PREFIX_FIX}")
    for k, s in want.items():
        if got[k] != s:
            raise BadInputError(f"{path / PREFIX_WEIGHTS}: {k} is {list(got[k])} but {where} and the base imply "
                                f"{list(s)} ({n} prefix tokens x 2 x {layers} layers x {kvh} K/V heads x {d}): "
                                "the weights are for another model or another prefix length")
    adapter = PrefixAdapter(path, n, proj, layers, kvh, d)
    if (path / PRE_CACHES).is_file():
        try:
            arr = np.load(path / PRE_CACHES, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise BadInputError(f"{path / PRE_CACHES} is not a NumPy array file ({e}); {PREFIX_FIX}") from e
        if tuple(arr.shape) != adapter.pre_caches_shape:
            raise BadInputError(f"{path / PRE_CACHES} is {list(arr.shape)} but the prefix config and the base imply "
                                f"{list(adapter.pre_caches_shape)} ({PRE_CACHES_LAYOUT}); {PREFIX_FIX}")
    return adapter


def adapter_sha256(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    from paddle2ort.runtime.manifest import sha256_file
    return {n: sha256_file(path / n) for n in names}


# ----------------------------------------------------------------------------- convert-llm's adapter stages
@dataclass(frozen=True)
class AppliedAdapter:
    adapter: LoraAdapter | PrefixAdapter
    model_dir: Path                   # what the export loads: the base, or the merged model (LoRA)
    export_args: dict                 # the export_llm worker's `adapter` argument (export_hook runs it)

    @property
    def prefix_npy(self) -> Path | None:
        return Path(self.export_args["out_npy"]) if "out_npy" in self.export_args else None


def check_adapter(lora: Path | None, prefix: Path | None, source: Path, cfg: dict, family: str,
                  fused: bool) -> LoraAdapter | PrefixAdapter | None:
    """convert-llm's adapter input, checked before any worker starts (exit 2 naming the problem and the fix)."""
    if lora is not None and prefix is not None:
        raise BadInputError("pass --lora or --prefix, not both (one adapter a bundle)")
    if lora is not None:
        return check_lora(lora, source)
    if prefix is not None:
        return check_prefix(prefix, cfg, family, fused)
    return None


def prepare_adapter(adapter: LoraAdapter | PrefixAdapter, source: Path, work: Path,
                    prompts: list[list[int]]) -> AppliedAdapter:
    """Before the export worker: the LoRA merged into work/merged (the export loads it); the arguments with which
    the export worker checks against PaddleNLP's adapter model (export_hook)."""
    args = {"adapter_dir": str(adapter.path), "base_dir": str(source), "prompts": prompts,
            "out_npz": str(work / "adapter_check.npz")}
    if isinstance(adapter, LoraAdapter):
        return AppliedAdapter(adapter, merge_lora(adapter, source, work / "merged"), {"kind": "lora", **args})
    (work / "prefix").mkdir()
    return AppliedAdapter(adapter, source, {"kind": "prefix", "out_npy": str(work / "prefix" / PRE_CACHES), **args})


def finish_adapter(applied: AppliedAdapter, thr, validate: bool) -> tuple[dict, dict]:
    """After the export worker, before the bundle is written: the adapter gate (LoRA: the merged model against
    PaddleNLP's LoRAModel; prefix: the wrapper given the cache rows against PrefixModelForCausalLM), pooled over
    the validation prompts at the fp32 gate's bounds. -> (manifest extra.adapter, bundle files)."""
    from paddle2ort.runtime.manifest import sha256_file
    a, work_npz = applied.adapter, Path(applied.export_args["out_npz"])
    if isinstance(a, LoraAdapter):
        entry, files = a.manifest(), {}
    else:
        npy = applied.prefix_npy
        if (a.path / PRE_CACHES).is_file():
            pre, given = np.load(npy), np.load(a.path / PRE_CACHES, allow_pickle=False).astype(np.float32)
            if not np.allclose(given, pre, rtol=1e-3, atol=1e-3 * max(float(np.abs(pre).max()), 1e-6)):
                raise BadInputError(f"{a.path / PRE_CACHES} differs from what {PREFIX_WEIGHTS} computes (max "
                                    f"difference {float(np.abs(given - pre).max()):.3g}): they are from different "
                                    f"trainings; {PREFIX_FIX}")
        entry, files = a.manifest(sha256_file(npy)), {BUNDLE_PREFIX: npy}
    entry["validation"] = adapter_gate(entry["kind"], read_pairs(work_npz), thr) if validate else None
    return entry, files


def adapter_gate(kind: str, pairs: list[tuple[np.ndarray, np.ndarray]], thr) -> dict:
    """Logits of our form (merged weights / exported prefix rows) against PaddleNLP's adapter applied, pooled over
    every validation prompt; ValidationError (exit 3) on failure. -> the manifest's summary."""
    from ..validate import compare_pooled, judge, summary
    m = compare_pooled([r for r, _ in pairs], [g for _, g in pairs], class_axis=True, tie_margin=thr.tie_margin)
    report = judge(f"adapter-{kind}", [{"output": "logits", "shape": list(pairs[0][0].shape), "metrics": m}], thr,
                   len(pairs), reference=f"PaddleNLP {'LoRAModel' if kind == 'lora' else 'PrefixModelForCausalLM'}")
    s = summary(report)
    log.info("%s adapter check passed against PaddleNLP: max_rel_diff=%.3g cosine=%.6f", kind, s["max_rel_diff"],
             s["min_cosine"])
    return s


def read_pairs(npz: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(npz) as z:
        n = len([k for k in z.files if k.startswith("ref/")])
        return [(z[f"ref/{i}"], z[f"got/{i}"]) for i in range(n)]


# ----------------------------------------------------------------------------- worker side (Paddle)
def lora_model(model, adapter_dir: str):
    """PaddleNLP's LoRAModel over `model`, unmerged (its forward adds x @ A @ B * scaling), float32."""
    from paddlenlp.peft import LoRAConfig, LoRAModel
    cfg = LoRAConfig.from_pretrained(adapter_dir)
    cfg.merge_weights, cfg.dtype = False, "float32"
    lm = LoRAModel.from_pretrained(model, adapter_dir, lora_config=cfg)
    lm.eval()
    return lm


def prefix_model(model, adapter_dir: str):
    """PaddleNLP's PrefixModelForCausalLM over `model` with LLaMA's cache layout."""
    from paddlenlp.peft import PrefixModelForCausalLM
    from paddlenlp.peft.prefix.utils import llama_postprocess_past_key_value
    pm = PrefixModelForCausalLM.from_pretrained(model, adapter_dir,
                                                postprocess_past_key_value=llama_postprocess_past_key_value)
    pm.eval()
    return pm


def _logits(out) -> np.ndarray:
    return (out[0] if isinstance(out, (tuple, list)) else out).astype("float32").numpy()


def pre_caches_of(pm) -> np.ndarray:
    """The prefix encoder's output in pre_caches.npy's layout, as PrefixModelForCausalLM.save_pretrained
    computes it: [prefix, 2, layer, head, dim] -> [layer, 2, head, prefix, dim]."""
    import paddle
    c = pm.prefix_config
    with paddle.no_grad():
        kv = pm.prefix_encoder(pm.prefix_tokens.unsqueeze(0).expand([1, -1]))
        kv = kv.reshape([c.num_prefix_tokens, 2, c.num_hidden_layers, pm.num_heads, pm.head_dim])
        return paddle.transpose(kv, perm=[2, 1, 3, 0, 4]).astype("float32").numpy()


def export_hook(args: dict | None, model, fam) -> tuple[np.ndarray | None, dict]:
    """Run by the export_llm worker on the model it exports (None: no adapter). LoRA (`model` is the merged one):
    PaddleNLP's LoRAModel over the base and the merged model, full forward on each prompt. Prefix (`model` is the
    base): pre_caches from PaddleNLP's PrefixModelForCausalLM, then its logits and the export wrapper's given them
    as cache rows (mask 1, real tokens numbered from 0). Writes the pairs (and pre_caches); -> (prefix cache rows for
    the recorded scenario or None, info)."""
    if not args:
        return None, {}
    import paddle

    from paddle2ort.runtime.prefix import to_cache_rows

    from .eager import load_llm
    from .wrapper import make_wrapper
    out, rows = {}, None
    with paddle.no_grad():
        if args["kind"] == "lora":
            base, _, _ = load_llm(args["base_dir"])
            lm = lora_model(base, args["adapter_dir"])
            for i, ids in enumerate(args["prompts"]):
                x = paddle.to_tensor([ids])
                out[f"ref/{i}"] = _logits(lm(input_ids=x, return_dict=False))
                out[f"got/{i}"] = _logits(model(x, return_dict=False))
            info = {"lora_layers": sum(type(m).__name__ == "LoRALinear" for m in lm.model.sublayers())}
        else:
            pm = prefix_model(model, args["adapter_dir"])
            pre = pre_caches_of(pm)
            np.save(args["out_npy"], pre)
            rows = to_cache_rows(pre)
            for i, ids in enumerate(args["prompts"]):
                out[f"ref/{i}"] = _logits(pm(input_ids=paddle.to_tensor([ids]),
                                             attention_mask=paddle.ones([1, len(ids)], "int64"), return_dict=False))
            with fam.patches(model):
                wrapper = make_wrapper(model, fam)
                wrapper.eval()
                for i, ids in enumerate(args["prompts"]):
                    logits, _ = wrapper(paddle.to_tensor([ids]), paddle.ones([1, len(rows) + len(ids)], "int64"),
                                        paddle.arange(len(ids), dtype="int64").unsqueeze(0), paddle.to_tensor(rows))
                    out[f"got/{i}"] = logits.numpy()
            info = {"prefix_shape": list(pre.shape)}
    np.savez(args["out_npz"], **out)
    return rows, info
