# voxline server image: `docker build -t voxline . && docker run -p 8080:8080 -v voxline-data:/data voxline`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    VOXLINE_DATA_DIR=/data

# libgomp: OpenMP runtime used by CTranslate2 (Whisper) and onnxruntime (Silero, Piper)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY runtime ./runtime
COPY pipelines ./pipelines
COPY telephony ./telephony
COPY config ./config
RUN pip install . && useradd --system --home /data voxline && mkdir -p /data && chown voxline /data

USER voxline
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health')"
CMD ["voxline", "serve", "--host", "0.0.0.0", "--port", "8080"]
