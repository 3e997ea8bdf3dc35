#!/usr/bin/env bash
# Build images with the Fn project's real FDKs, offline with `docker import`:
#   kiln-test/fn-python:latest  kiln-test/python plus `fdk` from PyPI (and iso8601, httptools)
#                               in /python, tests/images/fdk-python/func.py in /function;
#                               runs `/python/bin/fdk /function/func.py HANDLER` (CMD = HANDLER)
#   kiln-test/fn-node:latest    the host's node binary and its shared libraries, busybox sh,
#                               `@fnproject/fdk` from the npm registry and
#                               tests/images/fdk-node/*.js in /function; runs `node FILE.js`
# The packages are fetched once into $KILN_IMAGE_CACHE (pip download / npm install) and
# reused; an image whose inputs did not change is not rebuilt (label kiln.inputs).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/tests/images"
CACHE="${KILN_IMAGE_CACHE:-/var/cache/kiln-images}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

FDK_PYTHON=(fdk==0.1.128 iso8601==0.1.12 httptools==0.9.0)
FDK_NODE="@fnproject/fdk@0.0.76"

log() { echo "[images] $*"; }

current_label() {
  docker image inspect --format '{{ index .Config.Labels "kiln.inputs" }}' "$1" 2>/dev/null || true
}

python_for_pip() {
  if [[ -x "$REPO/.venv/bin/python" ]]; then echo "$REPO/.venv/bin/python"; else echo python3; fi
}

build_fn_python() {
  local image=kiln-test/fn-python:latest base=kiln-test/python:latest hash base_id
  base_id="$(docker image inspect --format '{{.Id}}' "$base")"
  hash="$( (echo "$base_id ${FDK_PYTHON[*]}"; cat "${BASH_SOURCE[0]}" "$HERE"/fdk-python/*) | sha256sum | cut -c1-16)"
  if [[ $FORCE -eq 0 && "$(current_label $image)" == "$hash" ]]; then log "$image up to date"; return; fi
  local py wheels="$CACHE/wheels"
  py="$(python_for_pip)"
  # Binary wheels for the image's Python (3.11, glibc x86_64), whatever the host's Python is.
  local target=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
                --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  mkdir -p "$wheels"
  # --no-deps: fdk lists its test and build tools (pytest, Cython, ...) as requirements;
  # it needs only iso8601 and httptools at run time.
  if ! "$py" -m pip download -q --disable-pip-version-check --no-deps --no-index \
        --find-links "$wheels" -d "$wheels" "${target[@]}" "${FDK_PYTHON[@]}" >/dev/null 2>&1; then
    log "downloading ${FDK_PYTHON[*]} from PyPI"
    "$py" -m pip download -q --disable-pip-version-check --no-deps -d "$wheels" "${target[@]}" "${FDK_PYTHON[@]}"
  fi
  local root cid; root="$(mktemp -d)"
  cid="$(docker create --label kiln.build=fn "$base" true)"
  docker export "$cid" | tar -C "$root" -x
  docker rm "$cid" >/dev/null
  "$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --find-links "$wheels" \
    --no-compile --target "$root/python" "${target[@]}" "${FDK_PYTHON[@]}"
  rm -rf "$root/python/bin" "$root/python/fdk/tests"
  mkdir -p "$root/python/bin" "$root/function"
  # The console script pip would write, with the image's interpreter.
  printf '#!/usr/bin/python3\nimport sys\nfrom fdk.scripts.fdk import main\nsys.exit(main())\n' \
    > "$root/python/bin/fdk"
  chmod 755 "$root/python/bin/fdk"
  cp "$HERE"/fdk-python/* "$root/function/"
  tar -C "$root" -c . | docker import \
    --change "LABEL kiln.inputs=$hash" \
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
    --change "ENV PYTHONPATH=/function:/python" \
    --change "WORKDIR /function" \
    --change 'ENTRYPOINT ["/python/bin/fdk", "/function/func.py"]' \
    --change 'CMD ["handler"]' \
    - "$image" >/dev/null
  rm -rf "$root"
  log "built $image"
}

busybox_bin() {
  local bb
  for bb in /bin/busybox /usr/bin/busybox; do
    if [[ -x "$bb" ]] && ! ldd "$bb" >/dev/null 2>&1; then echo "$bb"; return; fi
  done
  echo "busybox-static is missing (scripts/setup.sh installs it)" >&2
  return 1
}

build_fn_node() {
  local image=kiln-test/fn-node:latest node bb hash
  node="$(command -v node || true)"
  if [[ -z "$node" ]]; then
    echo "node is not installed: kiln-test/fn-node needs the host's node binary" >&2
    return 1
  fi
  node="$(readlink -f "$node")"
  bb="$(busybox_bin)"
  hash="$( (echo "$("$node" --version) $(stat -c %s "$node") $FDK_NODE"; cat "$bb" "${BASH_SOURCE[0]}" "$HERE"/fdk-node/*) | sha256sum | cut -c1-16)"
  if [[ $FORCE -eq 0 && "$(current_label $image)" == "$hash" ]]; then log "$image up to date"; return; fi
  local modules="$CACHE/npm-fdk" want="${FDK_NODE##*@}"
  if [[ "$(cat "$modules/node_modules/@fnproject/fdk/package.json" 2>/dev/null | grep -o "\"version\": *\"$want\"" || true)" == "" ]]; then
    log "installing $FDK_NODE from the npm registry"
    rm -rf "$modules"; mkdir -p "$modules"
    echo '{"private": true}' > "$modules/package.json"
    (cd "$modules" && npm install --silent --no-audit --no-fund --omit=dev "$FDK_NODE" >/dev/null)
  fi
  local root; root="$(mktemp -d)"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/usr/bin" "$root/function"
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  for a in sh ls cat sleep echo env true false; do ln -s busybox "$root/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  cp "$node" "$root/usr/bin/node"
  # The node binary's shared libraries (and the dynamic loader), at the same paths.
  local lib
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$node" | grep -o '/[^ ]*' | sort -u)
  cp "$HERE"/fdk-node/*.js "$root/function/"
  cp -r "$modules/node_modules" "$root/function/node_modules"
  tar -C "$root" -c . | docker import \
    --change "LABEL kiln.inputs=$hash" \
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
    --change "WORKDIR /function" \
    --change 'ENTRYPOINT ["node"]' \
    --change 'CMD ["func.js"]' \
    - "$image" >/dev/null
  rm -rf "$root"
  log "built $image"
}

verify() {
  local hard=(--rm --read-only --network none --cap-drop ALL --security-opt no-new-privileges --init --tmpfs /tmp)
  docker run "${hard[@]}" --entrypoint python3 kiln-test/fn-python:latest \
    -c 'import fdk, httptools, iso8601; print("ok")' | grep -qx ok
  docker run "${hard[@]}" kiln-test/fn-node:latest \
    -e 'require("@fnproject/fdk"); console.log("ok")' | grep -qx ok
  log "verified the FDK images (hardened run)"
}

build_fn_python
build_fn_node
verify
