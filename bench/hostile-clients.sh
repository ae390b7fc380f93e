#!/bin/sh
# Hostile-client measurement (issue 11) on the NBD server (oxemu-nbd, release build):
# 200 clients idle in the handshake, 50 clients that send 256 x 1 MiB reads and never
# read the replies, 64 GiB CACHE and WRITE_ZEROES requests, all at once. Reports the
# server's RSS growth (must stay under 512 MiB) and a well-behaved client's 4 KiB read
# rate alone and under attack (must stay at or above half).
# Usage: bench/hostile-clients.sh [DEAF] [IDLE]
set -e
cd "$(dirname "$0")/.."
HOSTILE_DEAF="${1:-50}" HOSTILE_IDLE="${2:-200}" HOSTILE_MEASURE_MS=2000 \
HOSTILE_RSS_BOUND_MIB=512 exec cargo test --release -p oxemu-nbd --test hostile_clients \
    -- --nocapture clients_that_never_read
