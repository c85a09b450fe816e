#!/usr/bin/env bash
# Installs what the build and tests need on a fresh Debian machine with rustup's stable
# toolchain. Safe to run twice.
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
# Headless Chromium for the dashboard's browser tests (crates/meshfleet-gateway/tests/dashboard.rs).
command -v chromium >/dev/null || need+=(chromium chromium-driver)
# The MQTT bridge's tests start a real broker.
{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# A target with no std at all, so scripts/check-core-deps.sh proves the no_std crates build
# without it (it falls back to the host, with a note, where the target cannot be installed).
rustup target add thumbv7em-none-eabihf >/dev/null 2>&1 || true
cd "$(dirname "$0")/.."
cargo fetch --locked
