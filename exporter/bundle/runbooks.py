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

# An http(s) URL or a relative path, without a fragment, of URL characters (RFC 3986) but the quote: rebase()
# writes the base into the generated YAML and JSON as it is, where these stay plain text (no quote or backslash
# to escape, and a relative path does not start with a YAML indicator such as ' * { [ - |).
_CHARS = r"A-Za-z0-9\-._~/?@!$&()*+,;=%"
_URL = re.compile(rf"https?://[{_CHARS}:\[\]]+|[A-Za-z0-9._~/][{_CHARS}]*")


def check_base(base: str) -> str:
    """`base` when it can carry `#<alert>` anchors, else a BundleError saying what is expected."""
    if not _URL.fullmatch(base):  # match() with $ would let a trailing newline through
        raise BundleError(f"--runbook-base {base!r}: expected an http(s) URL or a relative path without '#' "
                          "or spaces, e.g. https://wiki.example.com/postgres/runbooks (URL characters only: "
                          "no quotes or backslashes, and a relative path starts with a letter, digit, '.' or '/')")
    return base


def rebase(text: str, base: str) -> str:
    """A generated file's text with its runbook links under `base` instead of the shipped one."""
    return text.replace(f"{RUNBOOK_BASE}#", f"{base}#")
