#!/usr/bin/env bash
# The sans-IO core crates must not depend on an async runtime, sockets or I/O services
# (DEVELOPERS.md, STYLE.md). `cargo tree` lists every normal dependency, transitively.
set -euo pipefail
cd "$(dirname "$0")/.."
core=(meshfleet-wire meshfleet-mesh)
[ -d crates/meshfleet-ota ] && core+=(meshfleet-ota)
[ -d crates/meshfleet-monitor ] && core+=(meshfleet-monitor)
forbidden='^(tokio|mio|socket2|axum|hyper|rumqttc|async-std|smol|reqwest)$'
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
# no_std crates: they must say so, and build on their own, where cargo does not unify
# in the `std` features that other workspace members enable on serde/serde_json.
for c in meshfleet-wire meshfleet-mesh meshfleet-monitor; do
  grep -q '^#!\[no_std\]' "crates/$c/src/lib.rs" || { echo "$c lost #![no_std]" >&2; status=1; }
done
cargo build --quiet --locked -p meshfleet-wire -p meshfleet-mesh -p meshfleet-monitor || { echo "no_std + alloc build failed" >&2; status=1; }
echo "ok: meshfleet-wire, meshfleet-mesh and meshfleet-monitor build as no_std + alloc (serde_json without std)"
exit $status
