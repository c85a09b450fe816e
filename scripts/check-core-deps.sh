#!/usr/bin/env bash
# The sans-IO core crates must not depend on an async runtime, sockets or I/O services
# (DEVELOPERS.md, STYLE.md). `cargo tree` lists every normal dependency, transitively.
set -euo pipefail
cd "$(dirname "$0")/.."
core=(meshfleet-time meshfleet-wire meshfleet-mesh)
for c in meshfleet-ota meshfleet-monitor meshfleet-agent meshfleet-rollout meshfleet-channel; do
  [ -d "crates/$c" ] && core+=("$c")
done
forbidden='^(tokio|mio|socket2|axum|hyper|rumqttc|async-std|smol|reqwest|rusqlite)$'
status=0
for c in "${core[@]}"; do
  deps=$(cargo tree -p "$c" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  bad=$(echo "$deps" | grep -E "$forbidden" || true)
  if [ -n "$bad" ]; then
    echo "core crate $c depends on: $bad" >&2
    status=1
  else
    echo "ok: $c has no runtime/socket dependencies ($(echo "$deps" | wc -l) crates)"
  fi
done
# std crates of the core (ota, agent, channel) cannot be checked by a no_std build: no file,
# socket, thread or clock API may appear in their source. File IO lives at the edge
# (meshfleet-store-fs, the CLI); time comes in as `now`.
io_api='std::(fs|io|path|net|thread|time|process)::|Instant::now|SystemTime'
io_ok=1
for c in "${core[@]}"; do
  hits=$(grep -rEn "$io_api" "crates/$c/src" | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
  if [ -n "$hits" ]; then
    echo "core crate $c uses an OS API:" >&2
    echo "$hits" >&2
    status=1
    io_ok=0
  fi
done
[ "$io_ok" = 1 ] && echo "ok: no file, socket, thread or clock API in ${core[*]}"
# no_std crates: they must say so, and build on their own, where cargo does not unify
# in the `std` features that other workspace members enable on serde/serde_json.
nostd=(meshfleet-time meshfleet-wire meshfleet-mesh)
for c in meshfleet-monitor meshfleet-rollout; do
  [ -d "crates/$c" ] && nostd+=("$c")
done
for c in "${nostd[@]}"; do
  grep -q '^#!\[no_std\]' "crates/$c/src/lib.rs" || { echo "$c lost #![no_std]" >&2; status=1; }
done
cargo build --quiet --locked "${nostd[@]/#/-p}" || { echo "no_std + alloc build failed" >&2; status=1; }
echo "ok: ${nostd[*]} build as no_std + alloc (serde/serde_json without std)"
# no_std crates with a `std` feature (on by default: packing and key files in the firmware
# crate, the in-memory store in the OTA crate): with it off, no dependency may turn std on,
# and they must build for a target that has no std at all when one is installed
# (`rustup target add thumbv7em-none-eabihf`), else for the host (our code still cannot
# name std: `extern crate std` is only under the feature). Needs Rust >= 1.81
# (`core::error::Error`).
nostd_feat=(meshfleet-firmware meshfleet-ota)
for c in "${nostd_feat[@]}"; do
  grep -q '^#!\[no_std\]' "crates/$c/src/lib.rs" || { echo "$c lost #![no_std]" >&2; status=1; }
  grep -q '^#\[cfg(feature = "std")\]$' "crates/$c/src/lib.rs" || { echo "$c: extern crate std not behind the std feature" >&2; status=1; }
done
std_on=$(cargo tree --locked -e features,normal --prefix none --no-default-features \
  "${nostd_feat[@]/#/-p}" -f '{p} {f}' | grep -E ' ([^ ]*,)?std(,|$)' | sort -u || true)
if [ -n "$std_on" ]; then
  echo "with --no-default-features, a dependency of ${nostd_feat[*]} still enables std:" >&2
  echo "$std_on" >&2
  status=1
else
  echo "ok: ${nostd_feat[*]} without their std feature enable no std feature in any dependency"
fi
nostd_target=thumbv7em-none-eabihf
if rustup target list --installed 2>/dev/null | grep -qx "$nostd_target"; then
  target_args=(--target "$nostd_target")
else
  echo "note: $nostd_target not installed; building for the host" >&2
  target_args=()
fi
if cargo build --quiet --locked --no-default-features "${target_args[@]}" "${nostd_feat[@]/#/-p}"; then
  echo "ok: ${nostd_feat[*]} build as no_std + alloc without their std feature ${target_args[*]}"
else
  echo "no_std build of ${nostd_feat[*]} failed" >&2
  status=1
fi
exit $status
