# CPU image of wyoming-qwen3tts. Models are not baked in: mount them at /data.
#   docker build -t wyoming-qwen3tts .
#   docker run -p 10200:10200 -v /path/to/models:/data wyoming-qwen3tts --model /data/Qwen3-TTS-12Hz-0.6B-CustomVoice
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY script/ ./script/
COPY wyoming_qwen3tts/ ./wyoming_qwen3tts/

# CPU wheel of torch from the PyTorch index; the rest as script/setup does it.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
RUN python -m venv .venv \
    && .venv/bin/pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
    && script/setup

EXPOSE 10200
VOLUME /data
ENTRYPOINT ["/app/.venv/bin/python", "-m", "wyoming_qwen3tts", "--uri", "tcp://0.0.0.0:10200", "--data-dir", "/data"]
CMD ["--zeroconf"]
