#!/usr/bin/env bash
# Build the gwi image for tests on a machine without Docker Hub: start dockerd if needed, make a
# Debian base with debootstrap (plus this host's CA bundle, which pip inside the build needs), put
# the local CPU torch wheel in the build context, build `gwi:test`. Idempotent: reuses what exists.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${GWI_TEST_IMAGE:-gwi:test}
BASE=gwi-base:local

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  nohup dockerd --iptables=false --ip-masq=false --bridge=none >/tmp/gwi-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/gwi-dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  root=$(mktemp -d /tmp/gwi-base.XXXXXX)
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates bookworm "$root" >/tmp/gwi-debootstrap.log
  cert=$(python3 -m pip config list 2>/dev/null | sed -n "s/^global.cert='\(.*\)'$/\1/p" | head -1)
  cert=${cert:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
  cp "$cert" "$root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$root"
fi

if ! ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps torch==2.13.0 -d docker/wheels
fi
docker build -q --network host --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" . 
echo "built $IMAGE"
