# CPU image of wyoming-qwen3tts. Models are not baked in: they live in the volume /data.
#   docker build -t wyoming-qwen3tts .
#   docker run -p 10200:10200 -v /path/to/models:/data wyoming-qwen3tts --model /data/Qwen3-TTS-12Hz-0.6B-CustomVoice
# Arguments after the image name are the server's flags (script/run --help); QWEN3TTS_* variables work too.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY script/ ./script/
COPY wyoming_qwen3tts/ ./wyoming_qwen3tts/

# script/setup installs torch from the PyTorch CPU index (TORCH_INDEX_URL), falling back to the default
# index where that cannot be reached; TORCH_SPEC may also name a wheel file (e.g. on a build volume).
# It also builds our C++ operators (engine/native.py) into QWEN3TTS_KERNEL_DIR with g++, which is removed
# again: the image keeps the built libraries, not the compiler.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"
ENV QWEN3TTS_KERNEL_DIR=/app/kernels
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && TORCH_SPEC="${TORCH_SPEC}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" PYTHON=python3 script/setup \
    && .venv/bin/python -m compileall -q wyoming_qwen3tts \
    && apt-get purge -y --auto-remove g++ \
    && rm -rf /var/lib/apt/lists/*

# The server runs as an unprivileged user that owns only /data (models, downloads, OpenVINO exports).
RUN groupadd --system --gid 1000 wyoming \
    && useradd --system --uid 1000 --gid wyoming --home-dir /data --no-create-home --shell /usr/sbin/nologin wyoming \
    && mkdir -p /data \
    && chown wyoming:wyoming /data
VOLUME /data
USER wyoming

# Read by the server and by the health check (which asks on loopback).
ENV QWEN3TTS_URI=tcp://0.0.0.0:10200 \
    QWEN3TTS_DATA_DIR=/data \
    HF_HOME=/data/.cache/huggingface
# 10200: Wyoming; 8880: the OpenAI-compatible API when --http-uri tcp://0.0.0.0:8880 is given.
EXPOSE 10200 8880

# Loading a model (or downloading it to /data on first start) takes minutes: the start period covers it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "wyoming_qwen3tts.health", "--timeout", "2"]

ENTRYPOINT ["/app/.venv/bin/python", "-m", "wyoming_qwen3tts"]
CMD ["--zeroconf"]
