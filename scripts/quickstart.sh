#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, start `kiln daemon` with
# config.example.toml, invoke the sample `echo` function, print its answer, stop.
#   --keep   leave the daemon running afterwards
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
bash "$REPO/scripts/setup.sh"
cd "$REPO"
LOG="${KILN_LOG:-/tmp/kiln-quickstart.log}"
URL=http://127.0.0.1:8080

echo "[quickstart] starting kiln daemon --config config.example.toml (log: $LOG)"
.venv/bin/kiln daemon --config config.example.toml >"$LOG" 2>&1 &
PID=$!
cleanup() {
  if [[ $KEEP -eq 0 ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"
    wait "$PID" || true
  fi
}
trap cleanup EXIT

for _ in $(seq 1 60); do
  curl -sf "$URL/healthz" >/dev/null 2>&1 && break
  if ! kill -0 "$PID" 2>/dev/null; then echo "kiln daemon exited:"; cat "$LOG"; exit 1; fi
  sleep 0.5
done
curl -sf "$URL/healthz" >/dev/null || { echo "kiln daemon did not come up:"; cat "$LOG"; exit 1; }

echo "[quickstart] POST $URL/invoke/echo"
curl -s -i -X POST --data 'hello from kiln' "$URL/invoke/echo"
echo
echo "[quickstart] POST $URL/invoke/hot-echo twice (a hot function: the 2nd call reuses the container)"
curl -s -X POST --data 'hot hello' -D - "$URL/invoke/hot-echo" | grep -iE '^(HTTP|kiln-)'
curl -s -X POST --data 'hot hello' -D - "$URL/invoke/hot-echo" | grep -iE '^(HTTP|kiln-)'
echo "[quickstart] kiln ls (over the control socket)"
.venv/bin/kiln ls

if [[ $KEEP -eq 0 ]]; then
  kill -TERM "$PID"
  wait "$PID" || true
  trap - EXIT
  left="$(docker ps -aq --filter label=kiln.daemon=default)"
  if [[ -n "$left" ]]; then echo "containers left behind: $left" >&2; exit 1; fi
  echo "[quickstart] daemon stopped; no containers left behind"
else
  trap - EXIT
  echo "[quickstart] daemon still running (pid $PID); stop it with: kill $PID"
fi
