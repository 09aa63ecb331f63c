# The dxkpi image: one image for every dxkpi process (migrate, worker, beat, exporter, run).
#   docker build -t dxkpi .    then    docker run --rm dxkpi --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY tasks ./tasks
COPY connectors ./connectors
# dxkpi/ links to the three folders above: they install as dxkpi.collector, dxkpi.tasks and
# dxkpi.connectors, the image's only top-level package.
COPY dxkpi ./dxkpi
RUN pip install . && rm -rf /build

# An unprivileged user whose home is the data directory: named volumes mounted there (beat's
# schedule file) start out owned by it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/dxkpi --create-home dxkpi
USER dxkpi
WORKDIR /var/lib/dxkpi
ENV DXKPI_DATA_DIR=/var/lib/dxkpi

EXPOSE 9810
ENTRYPOINT ["dxkpi"]
CMD ["--help"]
