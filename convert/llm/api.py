"""PaddleNLP causal LM (save_pretrained dir) -> validated KV-cache decoder bundle.

Stages: (worker) wrap the model with explicit cache inputs/outputs under its family's patches, record a greedy
prefill + decode-step scenario of that wrapper, jit.save it -> the generic converter (paddle2onnx, gate against
Paddle Inference on the recorded steps, precisions) -> bundle with the tokenizer and the decoder's geometry.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.files import read_json_object
from paddle2ort.runtime.progress import busy

from ..api import (MAX_OPSET, MIN_OPSET, ConvertConfig, ConvertResult, check_name, check_same_source, check_thresholds,
                   convert)
from ..bundle import check_destination, check_outside_inputs
from ..export import model_bytes
from ..paddle_proc import make_workdir, run_worker, sigterm_as_interrupt
from ..precision import Int4Options, Int8Options
from ..validate import LLM_THRESHOLDS, Thresholds
from .wrapper import OUTPUT_NAMES

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ")
LLM_PRECISIONS = ("fp32", "fp16", "int8", "int4")
DEFAULT_GRAPHS = ("generic", "fused", "auto")
# The CPU default graph per precision, decided by measurement: the fused decoder decodes faster than the generic
# graph on the CPU at fp32 and int8 (int8 weights, float32 compute) — benchmarks/results/llm-cpu/ (bench-llm).
CPU_FUSED = {"fp32": None, "int8": "float32"}      # precision -> compute dtype of its CPU fused graph
MIN_BLOCK = 16                                     # MatMulNBits: block size a power of two >= 16


@dataclass(frozen=True)
class LLMConvertConfig:
    source: Path                                   # PaddleNLP model dir: config.json + model_state.pdparams
    output: Path
    tokenizer: Path                                # tokenizer.json + tokenizer_config.json
    precisions: tuple[str, ...] = ("fp32",)        # fp32, fp16, int8 (weight-only), int4 (weight-only)
    opset: int = 17
    block_size: int = 32                           # int8/int4 MatMulNBits block
    validate: bool = True
    overwrite: bool = False
    name: str | None = None
    prompts: tuple[str, ...] = DEFAULT_PROMPTS     # validation scenario: batch of left-padded prompts
    decode_steps: int = 3                          # greedy steps recorded after the prefill
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: dict(LLM_THRESHOLDS))
    fused: tuple[str, ...] = ()                    # also build the fused decoder at these precisions (LLaMA family)
    fused_head_dtype: str | None = None            # LM head + logits: None = float32 in the fp16 graph, the graph
    #                                                dtype in int8/int4; "float32" / "float16" force it
    lora: Path | None = None                       # PaddleNLP LoRA adapter dir, merged before the export (adapters.py)
    prefix: Path | None = None                     # PaddleNLP prefix-tuning dir: its cache rows ship in the bundle
    fused_compute_dtype: str | None = None         # int8/int4 fused graphs: None = float16 (GPU), "float32" (CPU)
    default_graph: str = "generic"                 # the CPU graph the bundle serves: "generic", "fused" (the CPU
    #                                                fused graph of each of fp32/int8 requested, built and gated),
    #                                                "auto" (fused where the family fits it; the CLI's default)

    def __post_init__(self):
        object.__setattr__(self, "source", Path(self.source))
        for key in ("lora", "prefix"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, Path(getattr(self, key)))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "tokenizer", Path(self.tokenizer))
        from .fused import FUSED_PRECISIONS
        bad = [p for p in self.precisions if p not in LLM_PRECISIONS]
        if bad or not self.precisions:
            raise BadInputError(f"unknown precision(s) {bad or '(none)'}; choose from {', '.join(LLM_PRECISIONS)}")
        bad = [p for p in self.fused if p not in FUSED_PRECISIONS]
        if bad:
            raise BadInputError(f"fused precision(s) {bad} unknown; choose from {FUSED_PRECISIONS}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise BadInputError(f"opset {self.opset} is out of range; paddle2onnx exports opsets "
                                f"{MIN_OPSET}..{MAX_OPSET}")
        b = self.block_size
        if isinstance(b, bool) or not isinstance(b, int) or b < MIN_BLOCK or b & (b - 1):
            raise BadInputError(f"block size {b} is not supported: MatMulNBits needs a power of two >= {MIN_BLOCK} "
                                "(e.g. 32, 64, 128)")
        if isinstance(self.decode_steps, bool) or not isinstance(self.decode_steps, int) or self.decode_steps < 1:
            raise BadInputError("decode_steps must be >= 1 (validation covers prefill and decode steps)")
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise BadInputError("validation prompts must be non-empty texts")
        if self.fused_head_dtype not in (None, "float32", "float16"):
            raise BadInputError(f"fused head dtype must be float32 or float16, got {self.fused_head_dtype!r}")
        if self.fused_compute_dtype not in (None, "float32", "float16"):
            raise BadInputError(f"fused compute dtype must be float32 or float16, got {self.fused_compute_dtype!r}")
        # an option with no graph to act on would be ignored without a word
        if self.fused_compute_dtype is not None and not {"int8", "int4"} & set(self.fused):
            raise BadInputError("--fused-compute-dtype sets the compute dtype of the --fused int8/int4 graphs, and "
                                "none is requested: add --fused int8 (or int4), or leave the option out (the CPU "
                                "default graph computes in float32 either way)")
        if self.fused_head_dtype is not None and not {"fp16", "int8", "int4"} & set(self.fused):
            raise BadInputError("--fused-head-dtype sets the LM head of the --fused fp16/int8/int4 graphs, and none is "
                                "requested: add --fused fp16 (or int8, int4), or leave the option out")
        if self.default_graph not in DEFAULT_GRAPHS:
            raise BadInputError(f"default graph must be one of {', '.join(DEFAULT_GRAPHS)}, got {self.default_graph!r}")
        check_name(self.name)                   # up front, as ConvertConfig does
        check_thresholds(self.thresholds)

    def inputs(self) -> tuple[tuple[str, Path | None], ...]:
        """The folders the user gave, each with what it is (for messages): -o is never one of them nor inside."""
        return (("the source model folder", self.source), ("the --tokenizer folder", self.tokenizer),
                ("the --lora adapter folder", self.lora), ("the --prefix adapter folder", self.prefix))

    def user_paths(self) -> tuple[Path, ...]:
        """Everything the user gave as input: never inside what --overwrite replaces."""
        return tuple(p for _, p in self.inputs() if p is not None)


def check_source(path: Path) -> dict:
    """The PaddleNLP model directory: config.json (a JSON object naming the architecture) and weights."""
    if not path.is_dir():
        raise BadInputError(f"{path} is not a directory; pass a PaddleNLP model directory (model.save_pretrained)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise BadInputError(f"{path} is not a PaddleNLP model directory (no config.json); save the model with "
                            "model.save_pretrained(DIR)")
    cfg = read_json_object(cfg_path, "model config", "it is truncated or damaged: re-save the model with "
                           "model.save_pretrained(DIR)")
    if not cfg.get("architectures") and not cfg.get("model_type"):
        raise BadInputError(f"{cfg_path} names no architecture (no \"architectures\" or \"model_type\"); "
                            "re-save the model with model.save_pretrained(DIR)")
    if not any(path.glob("*.pdparams")) and not any(path.glob("*.safetensors")):
        raise BadInputError(f"{path} has config.json but no weights (*.pdparams / *.safetensors)")
    empty = [w.name for w in (*path.glob("*.pdparams"), *path.glob("*.safetensors")) if w.stat().st_size == 0]
    if empty:
        raise BadInputError(f"weight file(s) {', '.join(empty)} in {path} are empty (0 bytes); re-save the model")
    return cfg


def source_fingerprint(path: Path) -> dict:
    """What identifies the PaddleNLP source model: its config and the sha256 of its weight files."""
    from paddle2ort.runtime.manifest import sha256_file
    weights = sorted(list(path.glob("*.pdparams")) + list(path.glob("*.safetensors")))
    return {"dir": path.name, "config": check_source(path), "sha256": {w.name: sha256_file(w) for w in weights}}


def check_llm_source(manifest, source: Path) -> None:
    """`validate` of a text-generation bundle: SOURCE is the checkpoint it was converted from (sha256 of the weights
    the manifest records), and the bundle holds no adapter (the source alone is not what was exported)."""
    adapter = manifest.extra.get("adapter")
    if adapter:
        kind = adapter.get("kind", "an adapter") if isinstance(adapter, dict) else "an adapter"
        raise BadInputError(f"bundle {manifest.name!r} was converted with an adapter applied ({kind}): `validate` "
                            "exports the source alone; run convert-llm again with the same --lora/--prefix "
                            "(--overwrite) to re-check it")
    if not (source.is_dir() and (source / "config.json").is_file()):
        raise BadInputError(f"--source {source} is not a PaddleNLP model directory (config.json and weights), which "
                            f"text-generation bundle {manifest.name!r} was converted from: pass that directory (the "
                            "one convert-llm read)")
    try:
        fingerprint = source_fingerprint(source)
    except BadInputError as e:
        raise BadInputError(f"--source {source} is not the PaddleNLP model text-generation bundle {manifest.name!r} "
                            f"was converted from ({e})") from None
    check_same_source(manifest.extra.get("paddle_source") or {}, fingerprint["sha256"], source)


def reexport(manifest, source: Path, samples_npz: Path, work: Path) -> Path:
    """The checkpoint exported with a KV cache again, as convert-llm's worker did (the gate then runs Paddle's
    static program on the bundle's recorded steps); -> the static model's directory."""
    import numpy as np
    with np.load(samples_npz) as d:     # any in-vocabulary prompt: the worker's own steps are not the gate's
        prompt = [int(d["0/input_ids"][0, -1])]
    pad = int((manifest.tokenizer or {}).get("pad_token_id") or 0)
    with busy("export with a KV cache (Paddle worker)"):
        run_worker("export_llm", {"model_dir": str(source), "out_prefix": str(work / "static" / "inference"),
                                  "samples_npz": str(work / "worker-steps.npz"), "prompts": [prompt],
                                  "decode_steps": 0, "pad_id": pad}, work)
    return work / "static"


def regate_fused(bundle, samples: list[dict], refs: list[list], thresholds: dict, device: str = "cpu",
                 only: set[str] | None = None) -> dict:
    """The bundle's fused decoders judged on the recorded steps against Paddle's logits `refs` (the static
    program's first output), each whatever another did: precision -> report, or the error it failed with (a refused
    gate, a crash, samples it cannot be judged on)."""
    from ..errors import BadInputError, ConversionError, ValidationError
    from ..validate import DEFAULT_THRESHOLDS
    from .fused import DecoderSpec, gate
    m = bundle.manifest
    steps = [{**s, "ref_logits": r[0]} for s, r in zip(samples, refs)]
    pad = int((m.tokenizer or {}).get("pad_token_id") or 0)
    out = {}
    for prec, entry in m.extra["fused"].items():
        if only is not None and prec not in only:
            continue
        spec = DecoderSpec(**entry["options"]["spec"])
        try:
            out[prec] = gate(prec, bundle.path / entry["file"], spec, steps, pad,
                             thresholds.get(prec, DEFAULT_THRESHOLDS[prec]), device)
        except (ValidationError, ConversionError, BadInputError) as e:
            out[prec] = e
    return out


def convert_llm(config: LLMConvertConfig) -> ConvertResult:
    """Every input is checked before the Paddle export; SIGTERM unwinds like Ctrl-C (the worker dies with us)."""
    with sigterm_as_interrupt():
        return _convert_llm(config)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_family(cfg: dict, config: LLMConvertConfig) -> str:
    """The export family from config.json, before any worker starts (exit 2 naming the supported ones)."""
    from .families import FUSED_FORM, UnsupportedFamily, family_name
    try:
        family = family_name(cfg)
    except UnsupportedFamily as e:
        raise BadInputError(f"{config.source / 'config.json'}: {e}") from e
    explicit = config.fused or config.default_graph == "fused"
    if explicit and FUSED_FORM.get(family) is None:
        raise BadInputError(f"the fused decoder does not cover the {family} family; leave out --fused "
                            "(the generic graph exports it)")
    scaled = [k for k in ("rope_scaling", "rope_scaling_type", "rope_freq_factors") if cfg.get(k)]
    if explicit and scaled:
        raise BadInputError(f"config.json has {scaled[0]}: the fused decoder computes plain rotary only; leave out "
                            "--fused (the generic graph exports scaled rotary)")
    return family


def fused_plan(config: LLMConvertConfig, family: str, cfg: dict) -> tuple[dict[str, str | None], list[str]]:
    """-> ({precision: compute dtype (None: the precision's own) of each fused graph to build}, [precisions whose
    CPU default is the fused graph]). Checked before any worker starts."""
    from .families import FUSED_FORM
    plan = {p: (config.fused_compute_dtype if p in ("int8", "int4") else None) for p in config.fused}
    fits = FUSED_FORM.get(family) is not None and not any(
        cfg.get(k) for k in ("rope_scaling", "rope_scaling_type", "rope_freq_factors"))
    if config.default_graph == "generic" or not fits:
        if config.default_graph == "auto":
            log.info("the %s family has no fused form here: the generic graph is the CPU default", family)
        return plan, []
    cpu = [p for p in config.precisions if p in CPU_FUSED]
    for p in cpu:
        if p in plan and plan[p] != CPU_FUSED[p]:
            raise BadInputError(f"--fused {p} builds the float16-compute (GPU) {p} graph, but the CPU default graph "
                                f"is the float32-compute {p} graph under the same name: add --fused-compute-dtype "
                                "float32, or pass --default-graph generic to keep the GPU one")
        plan[p] = CPU_FUSED[p]
    return plan, cpu


def check_vocab(tok, cfg: dict, config: LLMConvertConfig) -> None:
    """Every tokenizer id must index the model's embedding (a larger model vocabulary is padding, allowed)."""
    n = cfg.get("vocab_size")
    if isinstance(n, int) and tok.vocab_size > n:
        raise BadInputError(f"tokenizer {config.tokenizer} has {tok.vocab_size} tokens but the model "
                            f"{config.source} has a vocabulary of {n}: they are not the same model's; pass the "
                            "model's own tokenizer")


def check_tokenizer_dir(path: Path) -> None:
    """--tokenizer: a directory with both files (BPETokenizer.load's own message speaks of a bundle)."""
    if not path.is_dir():
        raise BadInputError(f"--tokenizer {path} is not a directory; give the directory holding "
                            f"{' and '.join(TOKENIZER_FILES)}")
    missing = [n for n in TOKENIZER_FILES if not (path / n).is_file()]
    if missing:
        raise BadInputError(f"--tokenizer {path} has no {' and no '.join(missing)}; give the model's tokenizer "
                            f"directory (both {' and '.join(TOKENIZER_FILES)}, e.g. from `paddle2ort import-gguf` "
                            "or `paddle2ort zoo build`)")


def _convert_llm(config: LLMConvertConfig) -> ConvertResult:
    from paddle2ort.tokenization.bpe import BPETokenizer

    from .source_checks import check_chat_template, check_config_fields, check_weights
    cfg = check_source(config.source)
    family = check_family(cfg, config)
    check_config_fields(cfg, config.source / "config.json", family)
    plan, cpu_fused = fused_plan(config, family, cfg)
    from .adapters import check_adapter, finish_adapter, prepare_adapter
    adapter = check_adapter(config.lora, config.prefix, config.source, cfg, family,
                            bool(config.fused) or config.default_graph == "fused")
    if config.prefix is not None and plan:
        log.info("--prefix: the generic graph is the default (the fused decoder takes no prefix cache)")
        plan, cpu_fused = {}, []
    check_outside_inputs(config.output, config.inputs(), command="convert-llm")
    check_destination(config.output, config.overwrite, config.user_paths())
    check_tokenizer_dir(config.tokenizer)
    tok = BPETokenizer.load(config.tokenizer)
    check_vocab(tok, cfg, config)
    check_chat_template(tok, config.tokenizer)
    check_weights(config.source, cfg)
    log.info("%s: the %s family", config.source, family)
    prompts = [tok.encode(p) for p in config.prompts]
    work = make_workdir("llm")
    try:
        applied = prepare_adapter(adapter, config.source, work, prompts) if adapter else None
        model_dir = applied.model_dir if applied else config.source
        log.info("exporting %s with an explicit KV cache (Paddle worker)", config.source)
        with busy("export with a KV cache (Paddle worker)"):
            info = run_worker("export_llm", {
                "model_dir": str(model_dir), "out_prefix": str(work / "static" / "inference"),
                "samples_npz": str(work / "steps.npz"), "prompts": prompts, "decode_steps": config.decode_steps,
                **({"adapter": applied.export_args} if applied else {}),
                "pad_id": tok.pad_token_id, **({"state_npz": str(work / "state.npz")} if plan else {})}, work)
        log.info("%s (%s): %d layers, %d KV heads x %d; Paddle greedy on the validation prompts: %s",
                 info["architecture"], info["family"], info["num_layers"], info["kv_heads"], info["head_dim"],
                 [tok.decode(g) for g in info["generated"]])
        llm = {k: info[k] for k in ("family", "architecture", "num_layers", "kv_heads", "head_dim", "vocab_size",
                                    "hidden_size", "max_context")}
        llm["cache_layout"] = "[time, layer, k|v, batch, kv_head, head_dim]; present holds the new positions only"
        llm["stop_ids"] = stop_token_ids(tok, config.source)
        extra_files = {f"tokenizer/{n}": config.tokenizer / n for n in TOKENIZER_FILES}
        extra = {"llm": llm, "paddle_source": source_fingerprint(config.source)}
        if applied:
            extra["adapter"], files = finish_adapter(applied, config.thresholds["fp32"], config.validate)
            extra_files.update(files)
        if plan:
            extra["fused"] = build_fused(config, work, tok.pad_token_id, plan, info)
            extra_files["fused"] = work / "fused"
        if cpu_fused:
            llm["default_graph"] = {"cpu": {p: "fused" for p in cpu_fused}}
        return convert(ConvertConfig(
            source=work / "static", output=config.output, precisions=config.precisions, opset=config.opset,
            validate=config.validate, overwrite=config.overwrite, inputs_npz=work / "steps.npz",
            inputs_recorded=True,
            # the encoder fusion pass (convert/fusion/) finds nothing in a KV-cache decoder: it spent 63 s of a
            # 223 s SmolLM2-135M conversion learning that
            fuse=False,
            output_names=OUTPUT_NAMES, thresholds=config.thresholds,
            int8=Int8Options(weight_only=True, block_size=config.block_size),
            int4=Int4Options(block_size=config.block_size),
            name=config.name or config.source.name, task="text-generation",
            extra_files=extra_files,
            tokenizer={"kind": "bpe", "files": "tokenizer/tokenizer.json, tokenizer/tokenizer_config.json",
                       "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
            extra=extra,
        ), sources=config.user_paths())
    finally:
        shutil.rmtree(work, ignore_errors=True)


# end-of-sequence / end-of-turn tokens of the common chat formats (ChatML, Llama 2/3, Gemma, Phi, GPT-2)
END_TOKENS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>",
              "<|end|>", "<eos>")


def stop_token_ids(tok, source: Path) -> list[int]:
    """The ids generation stops on (the manifest's llm.stop_ids): the tokenizer's eos, its special tokens that end
    a sequence or a turn, and the model's generation_config.json eos_token_id (an id or a list)."""
    ids = {tok.eos_token_id}
    for t in END_TOKENS:
        i = tok.hf.token_to_id(t)
        if i is not None and i in tok.special_ids:
            ids.add(i)
    gen_cfg = source / "generation_config.json"
    if gen_cfg.is_file():
        try:
            eos = json.loads(gen_cfg.read_text(encoding="utf-8")).get("eos_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            eos = None
            log.warning("%s is not a JSON object: its eos_token_id is not used as a stop token", gen_cfg)
        for i in (eos if isinstance(eos, list) else [eos]):
            if isinstance(i, int) and 0 <= i < tok.vocab_size:
                ids.add(i)
    return sorted(ids)


def build_fused(config: LLMConvertConfig, work: Path, pad_id: int, plan: dict[str, str | None] | None = None,
                export_info: dict | None = None) -> dict:
    """Fused decoder files under work/fused, each gated against Paddle's logits on the recorded scenario.
    plan: precision -> compute dtype (default: config.fused at their own dtypes); the weights come from the export
    worker when it saved them (export_info has the config), else from a state_llm worker.
    -> manifest entries {precision: {file, sha256, size_bytes, options, validation}}."""
    import numpy as np

    from paddle2ort.runtime.manifest import sha256_file

    from ..validate import DEFAULT_THRESHOLDS, summary
    from .fused import DecoderSpec, build_variant, gate, load_steps

    plan = {p: None for p in config.fused} if plan is None else plan
    info = export_info if export_info and "config" in export_info and (work / "state.npz").is_file() else None
    if info is None:
        with busy("weights for the fused decoder (Paddle worker)"):
            info = run_worker("state_llm", {"model_dir": str(config.source), "out_npz": str(work / "state.npz")},
                              work)
    state = dict(np.load(work / "state.npz"))
    spec = DecoderSpec.from_config(info["config"], family=info["family"])
    steps = load_steps(work / "steps.npz")
    out, entries = work / "fused", {}
    for prec, compute in plan.items():
        dst = out / f"decoder.{prec}.onnx"
        log.info("fused decoder %s (GroupQueryAttention, SkipSimplifiedLayerNormalization%s)", prec,
                 ", MatMulNBits" if prec in ("int8", "int4") else "")
        head = config.fused_head_dtype or ("float32" if prec == "fp16" else None)
        opts = build_variant(spec, state, prec, dst, block_size=config.block_size, compute_dtype=compute,
                             head_dtype=head if prec != "fp32" and compute != "float32" else None)
        thr = config.thresholds.get(prec, DEFAULT_THRESHOLDS.get(prec))
        report = gate(prec, dst, spec, steps, pad_id, thr) if config.validate else None
        if report:
            s = summary(report)
            log.info("fused %s passed: max_rel_diff=%.3g cosine=%.6f", prec, s["max_rel_diff"], s["min_cosine"])
        entries[prec] = {"file": f"fused/{dst.name}", "sha256": sha256_file(dst), "size_bytes": model_bytes(dst),
                         "options": opts, "validation": summary(report) if report else None}
    (work / "state.npz").unlink()
    return entries
