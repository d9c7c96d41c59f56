"""Causal-LM bundles on onnxruntime: the decoder session and a text-generation pipeline over the decode loop."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import BadInputError, BundleError
from .generation import CacheDecoder, GenerationConfig, Generator, generate
from .manifest import load_bundle
from .session import SessionOptions, create_session

log = logging.getLogger(__name__)


class OrtDecoder(CacheDecoder):
    """The generic paddle2onnx export as a Decoder (left-padded batches, host KV cache); calling it runs the graph
    once with the export's contract: `model(input_ids, attention_mask, position_ids, past) -> (logits, present)`."""

    def __init__(self, model_path: str | Path, llm: dict, session: SessionOptions = SessionOptions()):
        self.session = create_session(model_path, session)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["input_ids", "attention_mask", "position_ids", "past_key_values"]:
            raise BundleError(f"decoder inputs are {names}, not the KV-cache contract this runtime drives")
        super().__init__(self.__call__, llm["num_layers"], llm["kv_heads"], llm["head_dim"], llm["vocab_size"],
                         np.float32, llm["max_context"])
        self.max_context = llm["max_context"]

    def __call__(self, input_ids, attention_mask, position_ids, past):
        logits, present = self.session.run(["logits", "present_key_values"], {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "past_key_values": np.ascontiguousarray(past, dtype=self.cache_dtype)})
        return logits, present


def default_graph(llm: dict, precision: str, session: SessionOptions, compiled_step: bool = True,
                  fused: dict | None = None) -> str:
    """The bundle's default graph for the session's device at `precision` (manifest llm.default_graph). On the CPU
    a fused default runs as "kernels" -- the fused decoder's weights through the compiled CPU step, faster than
    onnxruntime's fused graph (benchmarks/results/llm-cpu/avx512-step) -- where this host builds that step
    (kernels/cpu.py: a C compiler with OpenMP) and compiled_step allows it (False where the caller needs the
    onnxruntime graph: the server's in-flight batching takes its cache slots, the profiler reads its session). A
    decoder the step does not read (int4; fused: manifest.extra.fused, whose options say so) runs the fused graph."""
    g = (llm.get("default_graph") or {}).get("gpu" if session.wants_cuda else "cpu", {}).get(precision, "generic")
    if g == "fused" and not session.wants_cuda and compiled_step:
        from .kernels.cpu import available, reads
        options = ((fused or {}).get(precision) or {}).get("options")
        return "kernels" if (options is None or reads(options)) and available() else g
    return g


def bundle_stop_ids(llm: dict, tokenizer) -> tuple[int, ...]:
    """The bundle's stop tokens (`llm.stop_ids`, written by convert-llm from the tokenizer's end-of-sequence and
    end-of-turn tokens); bundles without it: the tokenizer's eos."""
    ids = llm.get("stop_ids")
    if ids is None:
        log.info("bundle has no llm.stop_ids (converted before they were recorded): stopping on eos only")
        ids = [tokenizer.eos_token_id]
    return tuple(sorted({int(i) for i in ids}))


def check_prompts(prompts) -> list:
    """A prompt (str) or a batch of them (each a str, or with chat a conversation: a sequence of str turns), as a
    list; anything else is one BadInputError naming what was given."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(
            isinstance(p, str) or (isinstance(p, (list, tuple)) and all(isinstance(t, str) for t in p))
            for p in prompts):
        return list(prompts)
    what = "an empty batch" if isinstance(prompts, (list, tuple)) else f"{type(prompts).__name__} {prompts!r:.60}"
    raise BadInputError(f"prompts must be a text or a non-empty list of texts, got {what}")


class TextGenerator:
    """Bundle-driven generation: tokenizer (with chat template) + decoder + the decode loop."""

    def __init__(self, bundle_dir: str | Path, precision: str = "fp32", session: SessionOptions = SessionOptions(),
                 graph: str = "generic", max_length: int | None = None, compiled_step: bool = True):
        """graph: "generic" (the paddle2onnx export, host KV cache), "fused" (the fused decoder, on the device
        with --device gpu), "kernels" (the fused decoder's weights run by our own kernels, runtime/kernels/
        engine.py: CUDA on the GPU; on the CPU the compiled step, kernels/cpu_step.c, where the host's C compiler
        builds it, else the onnxruntime fused graph) or "auto" (the bundle's default graph for the device and
        precision: llm.default_graph, written by convert-llm, generic where it names none; on the CPU its fused
        decoder runs as "kernels" where the compiled step builds and compiled_step allows it: default_graph); all
        run the same decode loop (runtime.generation)."""
        from paddle2ort.tokenization.bpe import BPETokenizer

        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        if m.task != "text-generation" or "llm" not in m.extra:
            raise BundleError(f"bundle {bundle_dir} is not a text-generation bundle (task={m.task!r})")
        self.llm = m.extra["llm"]
        self.tokenizer = BPETokenizer.load(self.bundle.path / "tokenizer")
        if graph == "auto":
            graph = default_graph(self.llm, precision, session, compiled_step, m.extra.get("fused"))
        self.graph = graph
        if graph == "fused":
            from .fused import FusedDecoder
            path, spec = fused_model(self.bundle, precision)
            self.model = FusedDecoder(path, spec, session, max_length=max_length)
        elif graph == "kernels":    # the fused decoder's weights run by our kernels: CUDA, or the compiled CPU step
            from .kernels.engine import open_decoder
            path, spec = fused_model(self.bundle, precision)
            gpu = session.wants_cuda            # CPU: the compiled step where it builds, else the fused graph
            self.model = open_decoder(path, spec, engine="kernels" if gpu else "auto", device="gpu" if gpu else "cpu",
                                      max_length=max_length, session=session)
        elif graph == "generic":
            self.model = OrtDecoder(self.bundle.model_path(precision, verify=True), self.llm, session)
        else:
            raise BadInputError(f"graph must be 'generic', 'fused', 'kernels' or 'auto', got {graph!r}")
        self.default_stop_ids = bundle_stop_ids(self.llm, self.tokenizer)
        adapter = m.extra.get("adapter") or {}
        if adapter:
            what = (f"LoRA r={adapter.get('rank')} alpha={adapter.get('alpha')}, merged into the weights"
                    if adapter.get("kind") == "lora" else
                    f"PTuning prefix of {adapter.get('num_prefix_tokens')} tokens, prepended to every row's cache")
            log.info("bundle adapter %s: %s", adapter.get("dir"), what)
        if adapter.get("kind") == "prefix":          # PTuning prefix: cache rows every generation starts with
            from .prefix import load_prefix
            if not isinstance(self.model, CacheDecoder):
                raise BadInputError("this bundle's PTuning prefix runs on the generic graph only; use --graph generic")
            self.model.set_prefix(load_prefix(self.bundle.checked_path(adapter["file"], adapter["file_sha256"]),
                                              self.llm))

    @property
    def max_context(self) -> int:
        return self.model.max_tokens()

    def generate_token_ids(self, ids: Sequence[Sequence[int]], cfg: GenerationConfig) -> list[list[int]]:
        return generate(self.model, ids, cfg, self.tokenizer.pad_token_id, self.max_context, self.tokenizer.decode)

    def stop_ids(self, cfg: GenerationConfig) -> GenerationConfig:
        """cfg with the bundle's stop tokens when it names none."""
        from dataclasses import replace
        if cfg.stop_token_ids:
            return cfg
        return replace(cfg, stop_token_ids=self.default_stop_ids)

    def generator(self, cfg: GenerationConfig) -> Generator:
        """A step-API Generator over this bundle's decoder (stop tokens from the bundle unless cfg names some)."""
        return Generator(self.model, self.stop_ids(cfg), self.tokenizer.pad_token_id, self.tokenizer.decode,
                         self.max_context)

    def prompt_ids(self, prompt: str | Sequence[str], chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids of a prompt; with chat, through the chat template, where `prompt` may be a conversation (turns
        from the user's first: user, assistant, ..., user)."""
        turns = [prompt] if isinstance(prompt, str) else list(prompt)
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise BadInputError("empty prompt: give some text to continue (or a question with --chat)")
        if not chat:
            if len(turns) > 1:
                raise BadInputError("a conversation (several turns) goes through the chat template: pass --chat")
            return self.tokenizer.encode(turns[0])
        if len(turns) % 2 == 0:
            raise BadInputError(f"a conversation of {len(turns)} turns ends with the assistant's; it must end with "
                                "the user's (user, assistant, ..., user)")
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True))

    def generate_ids(self, prompts: Sequence[str], cfg: GenerationConfig, chat: bool = False) -> list[list[int]]:
        prompts = check_prompts(prompts)
        if not isinstance(cfg, GenerationConfig):
            raise BadInputError(f"cfg must be a GenerationConfig, got {type(cfg).__name__} (e.g. "
                                "GenerationConfig(max_new_tokens=32))")
        cfg = self.stop_ids(cfg)
        return self.generate_token_ids([self.prompt_ids(p, chat) for p in prompts], cfg)

    def __call__(self, prompts: Sequence[str] | str, cfg: GenerationConfig = GenerationConfig(),
                 chat: bool = False) -> list[str]:
        outs = [cfg.cut(self.tokenizer.decode(g)) for g in self.generate_ids(prompts, cfg, chat)]   # checks them
        return outs

    def stream(self, prompt: str, cfg: GenerationConfig = GenerationConfig(), chat: bool = False) -> Iterator[str]:
        """Text deltas for one prompt as tokens are produced (stop tokens are not printed; the text stops before
        a stop string)."""
        from paddle2ort.tokenization.bpe import StreamDecoder
        if cfg.num_beams > 1:
            raise BadInputError("beam search cannot stream: the best beam is known only at the end")
        gen = self.generator(cfg)
        gen.append_tokens([self.prompt_ids(prompt, chat)])
        dec, text, sent = StreamDecoder(self.tokenizer), "", 0
        for new in gen.stream():
            text += dec.push(new[0][1])
            cut = cfg.cut(text)
            hold = max((len(s) - 1 for s in cfg.stop_strings), default=0)    # a stop string may still be forming
            end = len(cut) if len(cut) < len(text) else max(len(cut) - hold, sent)
            if end > sent:
                yield cut[sent:end]
                sent = end
        cut = cfg.cut(text)
        if len(cut) > sent:
            yield cut[sent:]


def fused_model(bundle, precision: str) -> tuple[Path, dict]:
    """Path (sha256-checked) and geometry of the bundle's fused decoder at `precision`."""
    fused = bundle.manifest.extra.get("fused") or {}
    if precision not in fused:
        raise BundleError(f"bundle {bundle.path} has no fused {precision!r} decoder (it has: "
                          f"{', '.join(fused) or 'none'}); convert with `paddle2ort convert-llm --fused {precision}`")
    e = fused[precision]
    return bundle.checked_path(e["file"], e["sha256"]), e["options"]["spec"]


# JSONL jobs live in .jobs (checked up front, resumable); re-exported here for existing callers.
from .jobs import read_jsonl_prompts, run_jsonl_job  # noqa: E402,F401
