#!/usr/bin/env bash
# The whole test suite: formatting, lints, the core-dependency rule, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/painlessmesh ]; then
  echo "warning: ../shared (transcripts, firmware corpus) is missing; tests that replay it will fail" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Public docs build without broken links (rustdoc's lints as errors).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
scripts/check-core-deps.sh
cargo test --workspace --locked
