"""The engines behind the server: transformers' continuous batching (the CPU twin) and, on GPUs, vLLM."""
