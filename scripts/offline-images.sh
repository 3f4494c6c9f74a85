#!/bin/sh
# Builds the compose stack's images from Debian packages, for machines that cannot pull from Docker
# Hub (docs/compose.md): as root, with docker and debootstrap installed. Cached: a second run
# builds only what changed. `scripts/offline-images.sh list` shows them, `remove` deletes them.
set -eu
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then set -- build; fi
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m exporter.dev.offline_images "$@"
