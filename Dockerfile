# Sluicegate: one image for every role (processor, api, worker); docker-compose.yml picks the
# command. Configuration comes only from SLUICEGATE_* environment variables
# (sluicegate/settings.py).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (no .git, virtualenvs or local state in the image). The
# sources are built in /src and removed, so nothing in the working directory can shadow
# the installed `sluicegate` package.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sluicegate ./sluicegate
COPY ingest ./ingest
COPY processors ./processors
COPY state ./state
COPY sdk ./sdk
RUN pip install . && rm -rf /src

# The example app `sluicegate worker examples/hello.py:sg` runs (from /app).
WORKDIR /app
COPY examples ./examples

# Run unprivileged; /data holds RocksDB state (processor tables, the API's run view) and is
# mounted as a volume by docker-compose.yml.
RUN useradd --create-home --uid 10001 sluicegate \
    && mkdir -p /data \
    && chown sluicegate:sluicegate /data
USER sluicegate
ENV SLUICEGATE_DATA_DIR=/data

EXPOSE 8288
CMD ["sluicegate", "--help"]
