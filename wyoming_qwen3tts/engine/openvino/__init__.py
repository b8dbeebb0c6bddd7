"""The OpenVINO backend: Qwen3-TTS exported to OpenVINO IR and run by its runtime."""
