#!/usr/bin/env bash
# Everything a fresh Debian machine (as root) needs to run and test Kiln:
# Docker (from Debian packages) installed and running, the venv with Kiln and
# its dev tools, and the offline test images. Idempotent and quick on re-runs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
SOCK=/var/run/docker.sock
DOCKERD_LOG="${KILN_DOCKERD_LOG:-/tmp/kiln-dockerd.log}"

log() { echo "[setup] $*"; }

docker_answers() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null || ! command -v docker-init >/dev/null || ! [[ -x /bin/busybox ]] || ! command -v curl >/dev/null; then
  log "installing docker.io, busybox-static, curl from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static curl >/dev/null
fi

# systemd-analyze verifies the unit; it needs ExecReload's /bin/kill (procps).
if ! command -v systemd-analyze >/dev/null || ! [[ -x /bin/kill ]]; then
  log "installing systemd and procps (for systemd-analyze verify of the unit)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd procps >/dev/null
fi

# The access and logs tests use real tools: promtool (prometheus) checks the
# metrics text, nginx (nginx-light) + openssl front Kiln with TLS, curl sends
# CORS requests. Installed without starting their services (policy-rc.d).
if ! command -v promtool >/dev/null || ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then
  log "installing prometheus (promtool), nginx-light, openssl from Debian packages"
  apt-get update -qq
  POLICY=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e "$POLICY" ]]; then printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod +x "$POLICY"; made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus nginx-light openssl >/dev/null
  if [[ $made_policy -eq 1 ]]; then rm -f "$POLICY"; fi
fi

# A real browser engine for the CORS test: a page on one origin calls Kiln on another.
if ! command -v chromium >/dev/null; then
  log "installing chromium (headless, for the CORS browser test)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# kiln.docker's image tests push to and pull from a private registry they start
# themselves on 127.0.0.1 (tests/docker/conftest.py): Debian's docker-registry,
# installed without starting its service.
if ! [[ -x /usr/bin/docker-registry ]]; then
  log "installing docker-registry (a private registry for the image push/pull tests)"
  apt-get update -qq
  POLICY=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e "$POLICY" ]]; then printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod +x "$POLICY"; made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null
  if [[ $made_policy -eq 1 ]]; then rm -f "$POLICY"; fi
fi

# The async queue's PostgreSQL store is tested against a real server the tests start
# themselves (tests/pgserver.py): only the binaries are needed, no running service.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  log "installing postgresql (server binaries for the async-queue tests)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

if ! docker_answers; then
  log "starting dockerd (log: $DOCKERD_LOG)"
  nohup dockerd >"$DOCKERD_LOG" 2>&1 &
  for _ in $(seq 1 120); do
    docker_answers && break
    sleep 0.5
  done
  if ! docker_answers; then
    log "dockerd did not answer on $SOCK within 60 s; last lines of its log:"
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
fi
log "Docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.kiln-installed"
WANT="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]]; then
  log "installing kiln and its dev tools into the venv"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[dev]"
  echo "$WANT" >"$STAMP"
fi

bash "$REPO/tests/images/build.sh"
