# pgvigil exporter image, installed exactly the way the README says: `pip install .`, with every
# Python package pinned by deploy/pgvigil/constraints.txt (a rebuild installs what was tested).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

WORKDIR /src
COPY deploy/pgvigil/constraints.txt deploy/pgvigil/healthcheck.py /usr/local/share/pgvigil/
ENV PIP_CONSTRAINT=/usr/local/share/pgvigil/constraints.txt
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir . \
 && useradd --system --no-create-home --uid 10001 pgvigil

USER pgvigil
EXPOSE 9187
# Alive while pgvigil's HTTP server answers, in plain HTTP, TLS or basic-auth mode (--web-config):
# any answer counts, a 401 or a TLS alert included. /health would turn the container unhealthy
# whenever the database is down, which is for alerts to say, not for restarts.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "/usr/local/share/pgvigil/healthcheck.py", "9187"]
ENTRYPOINT ["pgvigil"]
CMD ["serve", "--config", "/etc/pgvigil/pgvigil.yaml"]
