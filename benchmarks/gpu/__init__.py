"""GPU generation runs on a lent NVIDIA machine, one module per program:

- `common`       model configs, fused variants, special ids, seeded prompts, token agreement, device info
- `check`        acceptance checks: GPU greedy vs the CPU golden rows, fused variants, beams, OOM, GPT-2
- `peer`         the peer benchmark: ours vs onnxruntime-genai vs HF transformers, one timing loop
- `roofline`     bytes a decode step reads and the % of the copy-bandwidth roofline (pure functions)
- `genai_config` onnxruntime-genai's config patched with CUDA graphs on (its best configuration)
- `report`       results JSON -> Markdown, written atomically (pure functions)

    python -m paddle2ort.benchmarks.gpu check --bundle B --gguf F --golden G --out DIR
    python -m paddle2ort.benchmarks.gpu bench --config qwen2.5-0.5b --tokenizer DIR --out DIR

Everything imports on a CPU-only host (CUDA, torch and onnxruntime-genai are imported inside the functions that
need them), so the pure parts are tested on the committed results (`tests/test_gpu_bench.py`).
"""
