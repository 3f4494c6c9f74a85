"""exporter/packs/settings.yaml is the output of exporter/dev/settings_pack.py for the settings of
every supported major, read live (a new minor release adding a setting shows up here)."""
from __future__ import annotations

from exporter.dev.servers import SUPPORTED_MAJORS
from exporter.dev.settings_pack import PACK, live_settings, render


def test_the_settings_pack_is_the_generator_output():
    generated = render({major: live_settings(major) for major in SUPPORTED_MAJORS})
    assert PACK.read_text(encoding="utf-8") == generated, \
        "exporter/packs/settings.yaml drifted: run python -m exporter.dev.settings_pack"
