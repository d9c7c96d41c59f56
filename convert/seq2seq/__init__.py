"""Encoder-decoder (T5, BART) export: an encoder graph run once (it also writes every decoder layer's
cross-attention K/V) and a decoder-step graph with a self-attention KV cache, bundled together and gated against
Paddle on a recorded generation. `from paddle2ort.convert.seq2seq.api import convert_seq2seq`."""
