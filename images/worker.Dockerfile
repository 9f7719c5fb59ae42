# The CPU worker image: everything `lathe worker` needs (torch CPU, ONNX Runtime, OpenVINO, NNCF).
# Build from the repository root:  docker build -f images/worker.Dockerfile -t lathe-worker .
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir -r requirements.lock && pip install --no-cache-dir --no-deps .
USER 65532:65532
ENV HOME=/tmp
ENTRYPOINT ["lathe"]
CMD ["worker", "--workdir", "/work"]
