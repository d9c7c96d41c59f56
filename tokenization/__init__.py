"""paddle2ort.tokenization: fast tokenizers behind one interface, parity-checked across backends."""
