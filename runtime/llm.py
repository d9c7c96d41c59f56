"""Causal-LM bundles on onnxruntime: the decoder session and a text-generation pipeline over the decode loop."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import BadInputError, BundleError
from .generation import GenerationConfig, generate, stream_text
from .manifest import load_bundle
from .session import SessionOptions, create_session

log = logging.getLogger(__name__)


class OrtDecoder:
    """`model(input_ids, attention_mask, position_ids, past) -> (logits, present)` over an exported decoder."""

    def __init__(self, model_path: str | Path, llm: dict, session: SessionOptions = SessionOptions()):
        self.session = create_session(model_path, session)
        self.num_layers, self.kv_heads, self.head_dim = llm["num_layers"], llm["kv_heads"], llm["head_dim"]
        self.vocab_size, self.max_context = llm["vocab_size"], llm["max_context"]
        self.cache_dtype = np.float32
        names = [i.name for i in self.session.get_inputs()]
        if names != ["input_ids", "attention_mask", "position_ids", "past_key_values"]:
            raise BundleError(f"decoder inputs are {names}, not the KV-cache contract this runtime drives")

    def __call__(self, input_ids, attention_mask, position_ids, past):
        logits, present = self.session.run(["logits", "present_key_values"], {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "past_key_values": np.ascontiguousarray(past, dtype=self.cache_dtype)})
        return logits, present


class TextGenerator:
    """Bundle-driven generation: tokenizer (with chat template) + decoder + the decode loop."""

    def __init__(self, bundle_dir: str | Path, precision: str = "fp32", session: SessionOptions = SessionOptions(),
                 graph: str = "generic", max_length: int | None = None):
        """graph: "generic" (the paddle2onnx export, host loop) or "fused" (the fused decoder, on-device loop)."""
        from paddle2ort.tokenization.bpe import BPETokenizer

        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        if m.task != "text-generation" or "llm" not in m.extra:
            raise BundleError(f"bundle {bundle_dir} is not a text-generation bundle (task={m.task!r})")
        self.llm = m.extra["llm"]
        self.tokenizer = BPETokenizer.load(self.bundle.path / "tokenizer")
        self.graph = graph
        if graph == "fused":
            from .fused import FusedDecoder
            path, spec = fused_model(self.bundle, precision)
            self.model = FusedDecoder(path, spec, device=session.device, device_id=session.device_id,
                                      max_length=max_length, threads=session.intra_op_threads)
        elif graph == "generic":
            self.model = OrtDecoder(self.bundle.model_path(precision, verify=True), self.llm, session)
        else:
            raise BadInputError(f"graph must be 'generic' or 'fused', got {graph!r}")

    def generate_token_ids(self, ids: Sequence[Sequence[int]], cfg: GenerationConfig) -> list[list[int]]:
        if self.graph == "fused":
            from . import fused
            return fused.generate(self.model, ids, cfg, self.tokenizer.pad_token_id)
        return generate(self.model, ids, cfg, self.tokenizer.pad_token_id, self.model.max_context,
                        self.tokenizer.decode)

    def stop_ids(self, cfg: GenerationConfig) -> GenerationConfig:
        from dataclasses import replace
        if cfg.stop_token_ids:
            return cfg
        return replace(cfg, stop_token_ids=tuple(sorted({self.tokenizer.eos_token_id, *self.llm.get("stop_ids", [])})))

    def prompt_ids(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadInputError("empty prompt: give some text to continue (or a question with --chat)")
        if chat:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            prompt = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        return self.tokenizer.encode(prompt)

    def generate_ids(self, prompts: Sequence[str], cfg: GenerationConfig, chat: bool = False) -> list[list[int]]:
        cfg = self.stop_ids(cfg)
        return self.generate_token_ids([self.prompt_ids(p, chat) for p in prompts], cfg)

    def __call__(self, prompts: Sequence[str] | str, cfg: GenerationConfig = GenerationConfig(),
                 chat: bool = False) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        outs = [self._cut(self.tokenizer.decode(g), cfg) for g in self.generate_ids(prompts, cfg, chat)]
        return outs

    @staticmethod
    def _cut(text: str, cfg: GenerationConfig) -> str:
        for s in cfg.stop_strings:
            if s in text:
                text = text[:text.index(s)]
        return text

    def stream(self, prompt: str, cfg: GenerationConfig = GenerationConfig(), chat: bool = False) -> Iterator[str]:
        cfg = self.stop_ids(cfg)
        if self.graph == "fused":
            yield from self._stream_fused(self.prompt_ids(prompt, chat), cfg)
            return
        yield from stream_text(self.model, self.tokenizer, self.prompt_ids(prompt, chat), cfg, self.model.max_context)

    def _stream_fused(self, ids: list[int], cfg: GenerationConfig) -> Iterator[str]:
        from paddle2ort.tokenization.bpe import StreamDecoder

        from .fused import FusedGenerator
        gen = FusedGenerator(self.model, [ids], cfg, self.tokenizer.pad_token_id, check_every=1)
        dec = StreamDecoder(self.tokenizer)
        for new in gen.stream():
            delta = dec.push(new[0][1])
            if delta:
                yield delta


def fused_model(bundle, precision: str) -> tuple[Path, dict]:
    """Path (sha256-checked) and geometry of the bundle's fused decoder at `precision`."""
    fused = bundle.manifest.extra.get("fused") or {}
    if precision not in fused:
        raise BundleError(f"bundle {bundle.path} has no fused {precision!r} decoder (it has: "
                          f"{', '.join(fused) or 'none'}); convert with `paddle2ort convert-llm --fused {precision}`")
    e = fused[precision]
    return bundle.checked_path(e["file"], e["sha256"]), e["options"]["spec"]


def read_jsonl_prompts(path: Path) -> list[str]:
    """PaddleNLP predictor format: one JSON object a line with "src" (or "prompt"); errors name the line."""
    import json

    from .textio import read_utf8_lines
    prompts = []
    for no, line in enumerate(read_utf8_lines(path, 'one JSON object a line, e.g. {"src": "your prompt"}'), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{no} is not valid JSON ({e.msg}); one object a line, e.g. "
                                '{"src": "your prompt"}') from e
        text = obj.get("src", obj.get("prompt")) if isinstance(obj, dict) else None
        if isinstance(text, list):
            text = text[-1] if text else None
        if not isinstance(text, str):
            raise BadInputError(f"{path}:{no} has no string field \"src\" (or \"prompt\")")
        if not text.strip():
            raise BadInputError(f"{path}:{no} has an empty prompt; remove the line or give it text")
        prompts.append(text)
    if not prompts:
        raise BadInputError(f"{path} has no prompts")
    return prompts


def run_jsonl_job(gen: TextGenerator, data_file: Path, output_file: Path, cfg: GenerationConfig,
                  batch_size: int = 8, src_length: int | None = None, chat: bool = False) -> int:
    """The predictor-style batch job: prompts in, {"src", "output"} lines out (written atomically)."""
    import json

    from tqdm.auto import tqdm
    if batch_size < 1:
        raise BadInputError(f"batch_size must be >= 1, got {batch_size}")
    prompts = read_jsonl_prompts(data_file)
    cfg = gen.stop_ids(cfg)
    tmp = Path(output_file).with_name(Path(output_file).name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for s in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=None):
                chunk = prompts[s:s + batch_size]
                ids = [gen.prompt_ids(p, chat) for p in chunk]
                if src_length:
                    ids = [i[-src_length:] for i in ids]          # keep the end: what the model continues from
                outs = gen.generate_token_ids(ids, cfg)
                for p, o in zip(chunk, outs):
                    f.write(json.dumps({"src": p, "output": gen._cut(gen.tokenizer.decode(o), cfg)},
                                       ensure_ascii=False) + "\n")
        tmp.replace(output_file)
    finally:
        tmp.unlink(missing_ok=True)
    return len(prompts)
