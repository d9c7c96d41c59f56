"""paddle2ort.benchmarks: accuracy/latency runs and peer comparisons (JSON + Markdown + plots)."""
