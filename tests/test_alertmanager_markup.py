"""What a hostile tenant puts in a name reaches Slack as text, never as Slack markup.

Alert descriptions carry names the monitored cluster's tenants choose (databases, schemas, tables:
`{datname}`, `{relname}`, ...). Slack reads `<!channel>`, `<!here>` and `<https://...|label>` in a
message as a mention of everyone and as a link with any label, so a table named
`<https://evil.example/login|Runbook>` would turn a bloat alert into a phishing link. The shipped
Slack receiver escapes `&`, `<` and `>` as Slack asks; a real Alertmanager renders it here and sends it
to a local endpoint standing in for Slack's webhook.
"""
from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml

from exporter.bundle.alertmanager import production_config
from exporter.dev import stack

needs_alertmanager = pytest.mark.skipif(not any(map(shutil.which, stack.ALERTMANAGER_BINARIES)),
                                        reason="Alertmanager is not installed (scripts/test.sh installs it)")

HOSTILE = "<!channel> <https://evil.example/login|Runbook> a&b"


def slack_only_config(receiver: str, slack_url: str) -> dict:
    """The shipped `receiver` with only its Slack config, posting to `slack_url`, sent at once."""
    shipped = next(r for r in production_config()["receivers"] if r["name"] == receiver)
    return {"global": {"slack_api_url": slack_url},
            "route": {"receiver": receiver, "group_by": ["alertname"], "group_wait": "0s"},
            "receivers": [{"name": receiver, "slack_configs": shipped["slack_configs"]}]}


@needs_alertmanager
@pytest.mark.parametrize("receiver", ["database-warning", "database-critical"])
def test_tenant_names_reach_slack_as_text(tmp_path: Path, receiver: str) -> None:
    with stack.WebhookReceiver() as slack:
        config = tmp_path / "alertmanager.yml"
        config.write_text(yaml.safe_dump(slack_only_config(receiver, slack.url)))
        manager = stack.start_alertmanager(config, tmp_path / "am")
        try:
            manager.wait_ready()
            alert = {"labels": {"alertname": "PostgresTableBloat", "severity": "warning", "target": "primary",
                                "relname": HOSTILE},
                     "annotations": {"summary": "A table is bloated",
                                     "description": f"Table public.{HOSTILE} in database app on primary is bloated.",
                                     "runbook_url": "https://example.com/runbooks#postgrestablebloat"}}
            request = urllib.request.Request(f"{manager.url}/api/v2/alerts", data=json.dumps([alert]).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(request, timeout=10).close()
            note = slack.wait_for(lambda body: bool(body.get("attachments")), timeout=30)
            assert note is not None, manager.log()
        finally:
            manager.stop()
    text = note["attachments"][0]["text"]
    assert "Table public.&lt;!channel&gt; &lt;https://evil.example/login|Runbook&gt; a&amp;b in database app" in text
    assert "<!" not in text and "<https://evil" not in text
    # the runbook link the generator wrote stays a link Slack shows as it is
    assert "Runbook: https://example.com/runbooks#postgrestablebloat" in text
