"""Container healthcheck for pgvigil: healthy while its HTTP server answers, whatever --web-config says.

A plain `GET /` over HTTP fails once the web config turns on TLS (the server drops a plaintext
request) or basic auth (401), although pgvigil is fine. So this asks over HTTP, then over TLS,
and counts any answer from pgvigil's own request threads as alive: an HTTP status (401 included),
or a TLS alert (a client certificate is required). Only a refused, silent or 5xx answer is
unhealthy. It never needs a password or a client certificate, and it verifies no certificate: it
talks to 127.0.0.1 to learn whether the process serves, not to trust it.

Usage: python healthcheck.py [PORT]   (default 9187); exit 0 healthy, 1 not.
"""
from __future__ import annotations

import http.client
import ssl
import sys

TIMEOUT = 4.0


def status_over(connection: http.client.HTTPConnection) -> int:
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def answers(port: int) -> tuple[bool, str]:
    """(alive, what was seen)."""
    try:
        status = status_over(http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT))
        return status < 500, f"HTTP {status}"
    except (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine):
        pass  # a TLS listener hangs up on plaintext: ask again over TLS
    except OSError as exc:
        return False, f"HTTP: {exc}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        status = status_over(http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=context))
        return status < 500, f"HTTPS {status}"
    except ssl.SSLError as exc:
        return True, f"TLS alert from the server: {exc.reason}"  # it handshook with us: alive
    except OSError as exc:
        # TLS 1.3 reports a required client certificate only when the server closes after the handshake.
        alive = isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected))
        return alive, f"HTTPS: {exc}"


def main(argv: list[str]) -> int:
    alive, seen = answers(int(argv[1]) if len(argv) > 1 else 9187)
    print(("healthy: " if alive else "unhealthy: ") + seen)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
