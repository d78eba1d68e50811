#!/usr/bin/env bash
# Time per synchronized forward+backward step versus ranks at a fixed global
# batch: bench/mpi/run.sh [build dir] [n c s steps]. Local transports only.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
shift || true
flags=(--oversubscribe --mca btl self,vader --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
# Ranks beyond the cores would time the scheduler, not bnorm.
for np in 1 2 4; do
  mpirun "${flags[@]}" --bind-to none -np "$np" "$build/bench/mpi/bnorm_bench_mpi" "$@"
done
