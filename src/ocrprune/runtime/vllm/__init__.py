"""The `vllm` engine: the `hf` engine's pruned prompt embeddings, decoded by vLLM."""
