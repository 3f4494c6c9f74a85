"""Where every alert's `runbook_url` points: the shipped docs/runbooks.md, or a team's own copy.

The generators link each alert to its section as `<base>#<alertname in lower case>`, with the
shipped base (`catalog.RUNBOOK_BASE`, docs/runbooks.md in the repository). Teams that keep their
runbooks in a wiki give `pgvigil bundle --runbook-base URL`; `rebase()` moves every link of the
generated files (rules, SLO rules and the promtool tests that expect them) to that base in one
place, so no generator has to carry the base along. Their pages need one section per alert, with
the anchors docs/runbooks.md uses.
"""
from __future__ import annotations

import re

from exporter.bundle.catalog import RUNBOOK_BASE
from exporter.bundle.rules import BundleError

_URL = re.compile(r"^(https?://[^\s#]+|[^\s#:]+)$")  # an http(s) URL or a relative path, without a fragment


def check_base(base: str) -> str:
    """`base` when it can carry `#<alert>` anchors, else a BundleError saying what is expected."""
    if not _URL.match(base):
        raise BundleError(f"--runbook-base {base!r}: expected an http(s) URL or a relative path without '#' "
                          "or spaces, e.g. https://wiki.example.com/postgres/runbooks")
    return base


def rebase(text: str, base: str) -> str:
    """A generated file's text with its runbook links under `base` instead of the shipped one."""
    return text.replace(f"{RUNBOOK_BASE}#", f"{base}#")
