"""The PyTorch backend (and IPEX, which runs through the same steps): qwen-tts's modules run step by step."""
