"""The optional alert group of the application-level examples (`pgvigil bundle --with-examples`).

The example rules watch metrics that only the example configs in `examples/` produce, so they
are off by default. They are written by hand, not generated from the thresholds file: the
bundle copies them as they are (comments included) next to the generated rules, with their
promtool tests pointed at the copy, so `promtool test rules` in `alerts/tests/` covers both.
The examples live in a clone of the repository, not in the installed package.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from exporter.bundle.rules import BundleError, dump_yaml
from exporter.files import CONFIG_LIMIT, UnreadableFile, read_limited

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "examples" / "alerts" / "app-rules.yml"
EXAMPLE_FILES = {
    "rules": Path("alerts/pgvigil-examples-rules.yml"),
    "tests": Path("alerts/tests/pgvigil-examples-rules.test.yml"),
}
HEADER = ("# Copied by `pgvigil bundle --with-examples` from examples/alerts/{name}; "
          "edit that file, not this one.\n")
RULES_NOTE = ("# Load it next to pgvigil-rules.yml and pgvigil-alerts.yml "
              "when you run the example configs in examples/.\n")
TESTS_NOTE = "# Run in this directory: promtool test rules {name}\n"


def render_example_files(rules_path: Path = EXAMPLE_RULES) -> dict[Path, str]:
    """Relative path -> text of the example rules and their promtool tests (`<rules>.test.yml`)."""
    rules_path = Path(rules_path)
    tests_path = rules_path.with_name(rules_path.stem + ".test.yml")
    rules_text = _read(rules_path)
    _check_groups(rules_path, rules_text)
    tests = _load(tests_path, _read(tests_path))
    if not isinstance(tests, dict) or not isinstance(tests.get("tests"), list):
        raise BundleError(f"{tests_path}: expected a promtool test file with a `tests:` list")
    # The copy sits in alerts/tests/, its rules one directory up under their new name.
    tests["rule_files"] = [f"../{EXAMPLE_FILES['rules'].name}"]
    return {
        EXAMPLE_FILES["rules"]: HEADER.format(name=rules_path.name) + RULES_NOTE + rules_text,
        EXAMPLE_FILES["tests"]: (HEADER.format(name=tests_path.name)
                                 + TESTS_NOTE.format(name=EXAMPLE_FILES["tests"].name) + dump_yaml(tests)),
    }


def _read(path: Path) -> str:
    try:
        return read_limited(path, CONFIG_LIMIT, "example rules").decode("utf-8")
    except UnreadableFile as exc:
        if exc.missing:
            raise BundleError(f"--with-examples needs {path}: the example rules come with a clone of the "
                              "pgvigil repository, not with the installed package") from None
        raise BundleError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _load(path: Path, text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: invalid YAML: {exc}") from None


def _check_groups(path: Path, text: str) -> None:
    document = _load(path, text)
    groups = document.get("groups") if isinstance(document, dict) else None
    if not isinstance(groups, list) or not groups:
        raise BundleError(f"{path}: expected a Prometheus rule file with a `groups:` list")
