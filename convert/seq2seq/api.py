"""PaddleNLP encoder-decoder or prefix LM (save_pretrained dir) -> validated text2text bundle.

Stages: family from config.json (before any worker) -> (worker) the family's encoder and decoder-step wrappers,
a greedy generation of the wrappers recorded through the runtime's decode loop, Paddle's own generate() on the
same sources, jit.save of both -> the generic converter twice (paddle2onnx, the gate against Paddle Inference on
the recorded calls, precisions): the encoder into a nested bundle `encoder/`, the decoder into the bundle itself.

Cross-attention K/V are computed once: the encoder graph outputs every decoder layer's K/V of the source, and the
decoder step takes them as an input (never recomputed per step).
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.progress import busy
from paddle2ort.runtime.seq2seq import ENCODER_DIR, TASK

from ..api import MAX_OPSET, MIN_OPSET, ConvertConfig, ConvertResult, check_thresholds, convert
from ..bundle import check_destination, check_outside_inputs
from ..llm.api import TOKENIZER_FILES, check_source, source_fingerprint
from ..paddle_proc import make_workdir, run_worker, sigterm_as_interrupt
from ..precision import Int8Options
from ..validate import LLM_THRESHOLDS, Thresholds
from .wrapper import DECODER_OUTPUTS, ENCODER_OUTPUTS

log = logging.getLogger(__name__)

DEFAULT_SOURCES = ("translate English to German: The house is wonderful.", "summarize: the cat sat on the mat")
SEQ2SEQ_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Seq2SeqConvertConfig:
    source: Path                                   # PaddleNLP model dir: config.json + model_state.pdparams
    output: Path
    tokenizer: Path                                # tokenizer.json + tokenizer_config.json
    precisions: tuple[str, ...] = ("fp32",)        # fp32, fp16, int8 (weight-only)
    opset: int = 17
    validate: bool = True
    overwrite: bool = False
    name: str | None = None
    sources: tuple[str, ...] = DEFAULT_SOURCES     # validation scenario: a batch of sources
    decode_steps: int = 4                          # greedy decoder steps recorded after the first
    thresholds: dict[str, Thresholds] = field(default_factory=lambda: dict(LLM_THRESHOLDS))

    def __post_init__(self):
        for k in ("source", "output", "tokenizer"):
            object.__setattr__(self, k, Path(getattr(self, k)))
        bad = [p for p in self.precisions if p not in SEQ2SEQ_PRECISIONS]
        if bad or not self.precisions:
            raise BadInputError(f"unknown precision(s) {bad or '(none)'} for an encoder-decoder; choose from "
                                f"{', '.join(SEQ2SEQ_PRECISIONS)}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise BadInputError(f"opset {self.opset} is out of range; paddle2onnx exports opsets "
                                f"{MIN_OPSET}..{MAX_OPSET}")
        if isinstance(self.decode_steps, bool) or not isinstance(self.decode_steps, int) or self.decode_steps < 1:
            raise BadInputError("decode_steps must be >= 1 (validation covers the first step and later ones)")
        if not self.sources or not all(isinstance(s, str) and s.strip() for s in self.sources):
            raise BadInputError("validation sources must be non-empty texts")
        check_thresholds(self.thresholds)


def check_family(cfg: dict, config: Seq2SeqConvertConfig) -> str:
    from .families import UnsupportedFamily, family_name
    try:
        return family_name(cfg)
    except UnsupportedFamily as e:
        raise BadInputError(f"{config.source / 'config.json'}: {e}") from e


def convert_seq2seq(config: Seq2SeqConvertConfig) -> ConvertResult:
    """Every input is checked before the Paddle export; SIGTERM unwinds like Ctrl-C (the worker dies with us)."""
    with sigterm_as_interrupt():
        return _convert_seq2seq(config)


def _convert_seq2seq(config: Seq2SeqConvertConfig) -> ConvertResult:
    from paddle2ort.tokenization.bpe import BPETokenizer

    from ..llm.api import check_vocab
    cfg = check_source(config.source)
    family = check_family(cfg, config)
    from .families import FAMILIES
    check_outside_inputs(config.output, [("the source model folder", config.source),
                                         ("the --tokenizer folder", config.tokenizer)], command="convert-seq2seq")
    check_destination(config.output, config.overwrite, (config.source, config.tokenizer))
    tok = BPETokenizer.load(config.tokenizer)
    check_vocab(tok, cfg, config)
    eos = cfg.get("eos_token_id", tok.eos_token_id)
    end = cfg.get(FAMILIES[family].source_end, eos)            # sources end as in training (ChatGLM v1: [gMASK])
    sources = [tok.encode(s) + [end] for s in config.sources]
    log.info("%s: the %s family (%s)", config.source, family, FAMILIES[family].kind)
    work = make_workdir("seq2seq")
    try:
        if FAMILIES[family].kind == "prefix-lm":
            return _convert_prefix_lm(config, family, sources, work, eos)
        with busy("export the encoder and the decoder step (Paddle worker)"):
            info = run_worker("export_seq2seq", {
                "model_dir": str(config.source), "sources": sources, "decode_steps": config.decode_steps,
                "encoder_prefix": str(work / "encoder" / "inference"),
                "decoder_prefix": str(work / "decoder" / "inference"),
                "encoder_npz": str(work / "encoder.npz"), "decoder_npz": str(work / "decoder.npz")}, work)
        _check_agree(info, family, config.source)
        common = _common(config)
        with busy("encoder: paddle2onnx + gate"):
            convert(ConvertConfig(source=work / "encoder", output=work / "encoder_bundle",
                                  inputs_npz=work / "encoder.npz", output_names=ENCODER_OUTPUTS,
                                  name=f"{config.name or config.source.name}-encoder", task="text2text-encoder",
                                  **common))
        geo = info["geometry"]
        seq2seq = {**geo, "family": family, "architecture": info["architecture"], "encoder": ENCODER_DIR,
                   "cross_attention": "K/V computed once by the encoder graph (cross_key_values), a decoder input",
                   "cache_layout": "self: [time, layer, k|v, batch, head, head_dim], present = new positions; "
                                   "cross: [layer, k|v, batch, head, source, head_dim]"}
        extra_files = {f"tokenizer/{n}": config.tokenizer / n for n in TOKENIZER_FILES}
        extra_files[ENCODER_DIR] = work / "encoder_bundle"
        return convert(ConvertConfig(
            source=work / "decoder", output=config.output, inputs_npz=work / "decoder.npz",
            output_names=DECODER_OUTPUTS, name=config.name or config.source.name, task=TASK,
            extra_files=extra_files, tokenizer=_tokenizer_section(eos, geo["pad_id"]),
            extra={"seq2seq": seq2seq, "paddle_source": source_fingerprint(config.source)}, overwrite=config.overwrite,
            **common), sources=(config.source, config.tokenizer))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _common(config: Seq2SeqConvertConfig) -> dict:
    return dict(precisions=config.precisions, opset=config.opset, validate=config.validate, inputs_recorded=True,
                thresholds=config.thresholds, fuse=False, int8=Int8Options(weight_only=True))


def _tokenizer_section(eos: int, pad: int) -> dict:
    return {"kind": "bpe", "files": "tokenizer/tokenizer.json, tokenizer/tokenizer_config.json",
            "eos_token_id": eos, "pad_token_id": pad}


def _check_agree(info: dict, family: str, source: Path) -> None:
    """The export wrappers' greedy tokens equal Paddle's generate() row by row, up to near-ties (a row may leave
    it only where the two tokens' logits are within eager.TIE_EPS: tie_gaps)."""
    from .eager import TIE_EPS
    gaps = info.get("tie_gaps") or [None if g == r else float("inf")
                                    for g, r in zip(info["generated"], info["paddle_generated"])]
    ties = [i for i, g in enumerate(gaps) if g is not None and g <= TIE_EPS]
    agree = len(info["generated"]) == len(info["paddle_generated"]) and all(g is None or g <= TIE_EPS for g in gaps)
    log.info("%s (%s): the export wrappers' greedy tokens %s Paddle's generate() on the validation sources%s",
             info["architecture"], family, "equal" if agree else "DIFFER FROM",
             f" (rows {ties} part at a near-tie)" if ties else "")
    if not agree:
        raise BadInputError(f"the {family} export wrappers do not reproduce Paddle's generate() on {source} (ours "
                            f"{info['generated']}, Paddle {info['paddle_generated']}); this model's configuration "
                            "is outside what the adapter covers")


def _convert_prefix_lm(config: Seq2SeqConvertConfig, family: str, sources: list, work: Path,
                       eos: int) -> ConvertResult:
    """A prefix LM (UNIMO-text): one step graph (unimo.py), the runtime writes the prefix-LM mask."""
    from .unimo import OUTPUTS
    with busy("export the prefix-LM step (Paddle worker)"):
        info = run_worker("export_prefix_lm", {
            "model_dir": str(config.source), "sources": sources, "decode_steps": config.decode_steps,
            "prefix": str(work / "step" / "inference"), "samples_npz": str(work / "step.npz")}, work)
    _check_agree(info, family, config.source)
    geo = info["geometry"]
    prefix_lm = {**geo, "family": family, "architecture": info["architecture"],
                 "attention": "bidirectional over the source, causal over the target (the runtime's mask)",
                 "cache_layout": "[time, layer, k|v, batch, head, head_dim]; present holds the new positions only"}
    return convert(ConvertConfig(
        source=work / "step", output=config.output, inputs_npz=work / "step.npz", output_names=OUTPUTS,
        name=config.name or config.source.name, task=TASK,
        extra_files={f"tokenizer/{n}": config.tokenizer / n for n in TOKENIZER_FILES},
        tokenizer=_tokenizer_section(eos, geo["pad_id"]),
        extra={"prefix_lm": prefix_lm, "paddle_source": source_fingerprint(config.source)}, overwrite=config.overwrite,
        **_common(config)), sources=(config.source, config.tokenizer))
