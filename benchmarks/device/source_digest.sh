#!/usr/bin/env bash
# One sha256 over the project's sources (Python, CUDA, shell under convert/ runtime/ tokenization/ benchmarks/ tests/
# cli/, paths sorted): a device run records it (its copy of .git can lag the tree it ran); run it on a checkout to
# name the commit a run's source-digest.txt belongs to.
set -euo pipefail
cd "$(dirname "$0")/../.."
find convert runtime tokenization benchmarks tests cli -type f \( -name '*.py' -o -name '*.cu' -o -name '*.sh' \) \
  -not -path '*/__pycache__/*' 2>/dev/null | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
