#!/usr/bin/env bash
# Runs the API benchmarks (reads, writes, rebuild) one after the other and prints their result
# blocks. Each script starts and stops its own servers in a temp dir (loopback only). Usage:
#   bench/run_all.sh            # from anywhere; uses the repo's .venv
#   PYTHON=/path/to/python bench/run_all.sh
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 2; }
status=0
for bench in reads writes rebuild; do
    echo "### bench/${bench}.py"
    "$PYTHON" "bench/${bench}.py" || { echo "### bench/${bench}.py failed ($?)" >&2; status=1; }
done
exit "$status"
