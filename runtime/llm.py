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

    def __init__(self, bundle_dir: str | Path, precision: str = "fp32", session: SessionOptions = SessionOptions()):
        from paddle2ort.tokenization.bpe import BPETokenizer

        self.bundle = load_bundle(bundle_dir, verify=True)
        m = self.bundle.manifest
        if m.task != "text-generation" or "llm" not in m.extra:
            raise BundleError(f"bundle {bundle_dir} is not a text-generation bundle (task={m.task!r})")
        self.llm = m.extra["llm"]
        self.tokenizer = BPETokenizer.load(self.bundle.path / "tokenizer")
        self.model = OrtDecoder(self.bundle.model_path(precision), self.llm, session)

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
        ids = [self.prompt_ids(p, chat) for p in prompts]
        return generate(self.model, ids, cfg, self.tokenizer.pad_token_id, self.model.max_context,
                        self.tokenizer.decode)

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
        yield from stream_text(self.model, self.tokenizer, self.prompt_ids(prompt, chat), cfg, self.model.max_context)
