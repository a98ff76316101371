# The extraction API (no model inside: it talks to vLLM or a hosted API over HTTP).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY backends ./backends
COPY training ./training
COPY loadtest ./loadtest
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "extraction-service[serve]" && rm -rf /wheels
USER app
WORKDIR /home/app
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
# uvicorn drains in-flight requests for up to 30 s on SIGTERM (timeout_graceful_shutdown)
CMD ["extraction", "serve", "--host", "0.0.0.0", "--port", "8080"]
