#!/usr/bin/env bash
# CPU and memory of `meshfleet demo` at --speed 1 (docs/benchmarks.md, "meshfleet demo").
# usage: scripts/bench-demo.sh NODES SECONDS [WARMUP_SECONDS]
# Starts the release binary, samples its CPU time (utime+stime from /proc) and RSS after the
# warm-up (mesh formation) and at the end, and prints CPU seconds per virtual second over the
# window between them, from the demo's own progress lines (virtual time, lag).
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:?nodes}; secs=${2:?seconds}; warm=${3:-60}
bin=target/release/meshfleet
out=$(mktemp)
"$bin" demo --nodes "$nodes" --speed 1 --http 127.0.0.1:0 --json >"$out" 2>/dev/null &
pid=$!
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{print ($14+$15)/t}' /proc/$pid/stat; }
rss() { awk '/^VmRSS/{print $2}' /proc/$pid/status; }
hwm() { awk '/^VmHWM/{print $2}' /proc/$pid/status; }
sleep "$warm"
c0=$(cpu); r0=$(rss); t0=$(date +%s.%N)
sleep $((secs - warm))
c1=$(cpu); r1=$(rss); h1=$(hwm); t1=$(date +%s.%N)
kill -INT $pid; wait $pid || true
v_end=$(grep '"stopped"' "$out" | sed 's/.*"virtual_s":\([0-9.]*\).*/\1/')
lag=$(grep '"progress"' "$out" | tail -1 | sed 's/.*"lag_s":\([0-9.e-]*\).*/\1/')
echo "nodes=$nodes wall_window_s=$(echo "$t1 - $t0" | bc) cpu_formation_s=$c0 cpu_window_s=$(echo "$c1 - $c0" | bc)"
echo "cpu_per_virtual_s=$(echo "scale=4; ($c1 - $c0) / ($t1 - $t0)" | bc) (speed 1: virtual s = wall s while lag stays 0; last lag_s=$lag, virtual_s at stop=$v_end)"
echo "rss_kib_after_warmup=$r0 rss_kib_end=$r1 peak_rss_kib=$h1"
rm -f "$out"
