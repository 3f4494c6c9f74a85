"""The stack's default Alertmanager receiver: prints every webhook notification as log lines.

`docker compose logs -f alert-log` shows what would have gone to PagerDuty, Slack and email;
point alerts/alertmanager.yml's receivers at the real channels when you have their secrets.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        for alert in body.get("alerts", []):
            labels, notes = alert.get("labels", {}), alert.get("annotations", {})
            print(f"{self.path.strip('/')}: [{alert.get('status')}] {labels.get('alertname')} "
                  f"severity={labels.get('severity')} target={labels.get('target')}: {notes.get('summary')}",
                  flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self):  # noqa: N802 (the healthcheck)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    HTTPServer(("0.0.0.0", port), Handler).serve_forever()
