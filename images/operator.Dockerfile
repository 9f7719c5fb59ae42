# The operator image: kopf + the kubernetes client + Lathe's API and controller (no torch needed
# at run time, but the package metadata pulls the worker's dependencies; a slimmer split is future work).
# Build from the repository root:  docker build -f images/operator.Dockerfile -t lathe-operator .
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir kopf==1.45.2 kubernetes==37.0.2 pyyaml==6.0.4 prometheus-client==0.26.0 \
      pydantic==2.14.4 "tritonclient[http]==2.73.0" numpy==1.26.4 protobuf==6.33.6 \
 && pip install --no-cache-dir --no-deps .
USER 65532:65532
ENTRYPOINT ["lathe"]
CMD ["operator"]
