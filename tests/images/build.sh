#!/usr/bin/env bash
# Build Kiln's test images offline with `docker import` (no registry needed):
#   kiln-test/busybox:latest  busybox-static and its applets (stdio functions)
#   kiln-test/python:latest   Python 3.11 from Debian packages + busybox sh, with
#                             tests/images/functions/* and fdk/python/fdk.py in /fn
#   kiln-test/fn-python, kiln-test/fn-node  the Fn project's real FDKs (build-fn.sh)
# An image whose inputs did not change is not rebuilt (label kiln.inputs); --force rebuilds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${KILN_IMAGE_CACHE:-/var/cache/kiln-images}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

PY_PACKAGES=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g
             libexpat1 libssl3 libffi8 libgcc-s1 libbz2-1.0 liblzma5 libtinfo6 libncursesw6
             libreadline8 libsqlite3-0 libuuid1 libcrypt1 libnsl2 libtirpc3 libdb5.3 mime-support media-types)

log() { echo "[images] $*"; }

busybox_bin() {
  local bb
  for bb in /bin/busybox /usr/bin/busybox; do
    if [[ -x "$bb" ]] && ! ldd "$bb" >/dev/null 2>&1; then echo "$bb"; return; fi
  done
  log "installing busybox-static"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
  echo /bin/busybox
}

current_label() {
  docker image inspect --format '{{ index .Config.Labels "kiln.inputs" }}' "$1" 2>/dev/null || true
}

add_base() {  # $1 = rootfs dir, $2 = busybox binary, $3.. = applets (all if none)
  local root="$1" bb="$2"; shift 2
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  local applets=("$@")
  if [[ ${#applets[@]} -eq 0 ]]; then mapfile -t applets < <("$bb" --list); fi
  for a in "${applets[@]}"; do
    [[ "$a" == busybox ]] || [[ -e "$root/bin/$a" ]] || ln -s busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
}

import_image() {  # $1 = rootfs dir, $2 = image, $3 = inputs hash, $4 = CMD json
  tar -C "$1" -c . | docker import \
    --change "LABEL kiln.inputs=$3" --change "CMD $4" --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
    - "$2" >/dev/null
}

build_busybox() {
  local image=kiln-test/busybox:latest bb hash
  bb="$(busybox_bin)"
  hash="$(cat "$bb" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
  if [[ $FORCE -eq 0 && "$(current_label $image)" == "$hash" ]]; then log "$image up to date"; return; fi
  local root; root="$(mktemp -d)"
  add_base "$root" "$bb"
  import_image "$root" "$image" "$hash" '["/bin/sh"]'
  rm -rf "$root"
  log "built $image"
}

build_python() {
  local image=kiln-test/python:latest bb hash fn_files=()
  bb="$(busybox_bin)"
  if [[ -d "$REPO/tests/images/functions" ]]; then
    mapfile -t fn_files < <(find "$REPO/tests/images/functions" -maxdepth 1 -type f | sort)
  fi
  [[ -f "$REPO/fdk/python/fdk.py" ]] && fn_files+=("$REPO/fdk/python/fdk.py")
  hash="$( (cat "$bb" "${BASH_SOURCE[0]}"; [[ ${#fn_files[@]} -eq 0 ]] || cat "${fn_files[@]}") | sha256sum | cut -c1-16)"
  if [[ $FORCE -eq 0 && "$(current_label $image)" == "$hash" ]]; then log "$image up to date"; return; fi
  mkdir -p "$CACHE/debs"
  local missing=()
  for p in "${PY_PACKAGES[@]}"; do
    compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "downloading ${missing[*]}"
    if ! (cd "$CACHE/debs" && apt-get download -qq "${missing[@]}" >/dev/null 2>&1); then
      apt-get update -qq >/dev/null
      (cd "$CACHE/debs" && for p in "${missing[@]}"; do apt-get download -qq "$p" >/dev/null 2>&1 || log "  (no package $p, skipped)"; done)
    fi
  fi
  local root; root="$(mktemp -d)"
  for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$root"; done
  # Debian's merged /usr: /bin and /lib point into /usr
  for d in lib lib64; do
    if [[ -d "$root/usr/$d" && ! -e "$root/$d" ]]; then ln -s "usr/$d" "$root/$d"; fi
  done
  ln -sf python3.11 "$root/usr/bin/python3"
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" "$root/usr/share/info"
  add_base "$root" "$bb" sh ls cat sleep ln echo rm mkdir env true false
  mkdir -p "$root/fn"
  [[ ${#fn_files[@]} -eq 0 ]] || cp "${fn_files[@]}" "$root/fn/"
  import_image "$root" "$image" "$hash" '["python3"]'
  rm -rf "$root"
  log "built $image"
}

verify() {
  local hard=(--rm --read-only --network none --cap-drop ALL --security-opt no-new-privileges --init --tmpfs /tmp)
  docker run "${hard[@]}" kiln-test/busybox:latest sh -c 'echo ok' | grep -qx ok
  docker run "${hard[@]}" kiln-test/python:latest python3 -c 'import json, socket, asyncio, http.server; print("ok")' | grep -qx ok
  log "verified both images (hardened run)"
}

build_busybox
build_python
verify
bash "$REPO/tests/images/build-fn.sh" "$@"
