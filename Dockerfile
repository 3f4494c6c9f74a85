# pgvigil exporter image, installed exactly the way the README says: `pip install .`
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir . \
 && useradd --system --no-create-home --uid 10001 pgvigil

USER pgvigil
EXPOSE 9187
# The landing page answers as long as pgvigil runs; /health would turn the container unhealthy
# whenever the database is down, which is for alerts to say, not for restarts.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/', timeout=4)"]
ENTRYPOINT ["pgvigil"]
CMD ["serve", "--config", "/etc/pgvigil/pgvigil.yaml"]
