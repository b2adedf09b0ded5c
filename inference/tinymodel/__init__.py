"""A deterministic tiny Llama for tests and the demo: random weights, a real tokenizer."""
