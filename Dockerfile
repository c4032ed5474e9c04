# One image for the services (processor, projector, ingress, alerts, notifier, web, simulated
# rigs); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
COPY rig ./rig
COPY curricula ./curricula
RUN pip install ".[services,rig]" && useradd --system --home /data shaping && mkdir -p /data/web \
    && chown -R shaping /data
USER shaping
ENV SHAPING_DATA_DIR=/data
ENTRYPOINT ["shaping"]
CMD ["--help"]
