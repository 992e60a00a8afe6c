# healthmon: one image for `healthmon serve | ingest | api | migrate | ...`.
# Built by deploy/compose.yaml (context: the project root); see docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency ships manylinux wheels (psycopg[binary], orjson, argon2-cffi,
# pydantic-core): no compiler in the image.
WORKDIR /src
COPY pyproject.toml ./
COPY healthmon/ healthmon/
COPY ingest/ ingest/
COPY alerts/ alerts/
COPY api/ api/
COPY simulators/ simulators/
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/healthmon --create-home healthmon \
    && install -d -o healthmon -g healthmon /var/lib/healthmon/spool

USER healthmon
WORKDIR /var/lib/healthmon
ENV HEALTHMON_API_HOST=0.0.0.0 \
    HEALTHMON_API_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["healthmon"]
CMD ["serve"]
