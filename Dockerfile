# The otel-celery-exporter image: the wheel scripts/check-dist builds (python -m build
# puts it in dist/), on a slim Python, run as a non-root user. Build and push it with
# your own tools, then point charts/otel-celery-exporter's image.repository at it:
#
#   python -m build --wheel && docker build -t REGISTRY/otel-celery-exporter:0.1.0 .
#
# Nothing in this repository's CI builds it (no container engine there); tests check that
# it runs what the chart runs, as the user the chart expects.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY dist/otel_celery_metrics-*.whl /tmp/
RUN wheel="$(ls /tmp/otel_celery_metrics-*.whl)" \
 && pip install "${wheel}[exporter,otlp,otlp-grpc]" \
 && rm -f /tmp/otel_celery_metrics-*.whl

# Numeric, so Kubernetes' runAsNonRoot can check it (the chart's runAsUser is the same).
USER 10001:10001
EXPOSE 9808
ENTRYPOINT ["otel-celery-exporter"]
