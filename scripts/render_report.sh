#!/usr/bin/env bash
# Regenerate RUN_DIR/report.html and screenshot it with headless Chromium.
#
#   scripts/render_report.sh RUN_DIR [OUT.png]
#
# OUT.png defaults to RUN_DIR/report.png; WINDOW_SIZE=W,H overrides the 1200,3000 page size.
# Chromium is installed from Debian (apt-get) when it is missing and this runs as root;
# otherwise the script says what to install and stops.
# PREDICTIONS=FOLDER adds that folder's NAME_overlay.jpg files (e.g. the demo's OUT/predictions).
set -euo pipefail

usage() { echo "usage: $0 RUN_DIR [OUT.png]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
[[ -d "$1" ]] || { echo "error: $1 is not a folder" >&2; exit 2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_dir="$(cd "$1" && pwd)"
out="${2:-$run_dir/report.png}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
python="$repo/.venv/bin/python"
[[ -x "$python" ]] || { echo "error: $python not found; create the venv first" >&2; exit 1; }

chromium="$(command -v chromium || true)"
if [[ -z "$chromium" ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "chromium not found: installing Debian's chromium" >&2
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
        chromium="$(command -v chromium)"
    else
        echo "error: chromium not found; install it, e.g. 'sudo apt-get install -y chromium'" >&2
        exit 1
    fi
fi

predictions="${PREDICTIONS:-}"
uri="$("$python" -c '
import sys
from pathlib import Path
from unetseg.engine.report import write_report
run, predictions = Path(sys.argv[1]), sys.argv[2]
extra = {"predictions": Path(predictions)} if predictions else None
report = write_report(run, extra)
print(report.as_uri())
' "$run_dir" "$predictions")"

echo "report: $run_dir/report.html"

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --screenshot="$out" --window-size="${WINDOW_SIZE:-1200,3000}" \
    "$uri" 2>"$profile/chromium.log" \
    || { cat "$profile/chromium.log" >&2; echo "error: chromium failed" >&2; exit 1; }
[[ -s "$out" ]] || { cat "$profile/chromium.log" >&2; echo "error: no screenshot" >&2; exit 1; }
echo "screenshot: $out"
