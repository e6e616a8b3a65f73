#!/usr/bin/env bash
# bench/backup-s3.sh: what does a backup straight into a bucket cost against
# the same backup to local disk, and does pgward's memory stay flat?
#
# Why it exists: with `repository = "s3://..."`, `pgward backup` streams
# pg_dump's output as a multipart upload while pg_dump runs, completes it
# after validation, reads the whole object back from the bucket and hashes
# it, then writes the manifest. The target (issue 16): at >= 1 GB of
# database, the backup to a loopback S3 server (tools/s3-test-server, which
# scripts/install-deps.sh installs, writing to the same disk) takes at most
# 1.15 x the backup to a local repository, and pgward's own peak RSS stays
# <= 64 MiB. It is a benchmark, not a test: it prints figures and exits 0
# when every figure could be measured.
#
# Usage: bench/backup-s3.sh [--scale N] [--keep] [--dir DIR]
#   --scale N  pgbench scale of the sample database (default 70: ~1 GB)
#   --keep, --dir DIR  as bench/backup.sh
# Environment: PGWARD_TMPDIR (default /var/tmp), PGWARD_BENCH_SAMPLE
#   (default 0.05) seconds between RSS samples of pgward.
#
# Three passes, each: `pgward backup` into a fresh local repository, then
# into a fresh prefix of the bucket (same database, same settings: zstd at
# the default level, no encryption). The table shows the best wall time of
# the three and each run's own peak RSS (VmHWM, sampled; pg_dump's memory is
# its own and the same in both).
set -euo pipefail
export LC_NUMERIC=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_args "${BASH_SOURCE[0]}" 70 "$@"
sample_s=${PGWARD_BENCH_SAMPLE:-0.05}

bench_dir
out="$dir/out"
server_pid=""
cleanup() {
  local rc=$?
  [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
  rm -rf -- "$out"
  bench_leave_dir bench/backup-s3.sh
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_build || {
  log "cargo build --release failed or made no binary"
  exit 2
}
bench_demo_database
mkdir -p "$out/data/bench"
chmod 700 "$out"

bench_s3_server "$out"

declare -A best=() hwm_max=([local]=0 [s3]=0)
keep_best() { # key seconds
  if [[ -z ${best[$1]:-} ]] || awk -v a="$2" -v b="${best[$1]}" 'BEGIN { exit !(a < b) }'; then
    best[$1]=$2
  fi
}
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# measure KEY LABEL REPO: one backup into REPO, timed, its peak RSS kept.
measure() {
  local key=$1 label=$2 repo=$3 t0 pid hwm s
  sync
  t0=$EPOCHREALTIME
  "$pgward" --config "$out/pgward.toml" --repo "$repo" backup --dbname demo --allow-shrink -q &
  pid=$!
  hwm=0
  while kill -0 "$pid" 2>/dev/null; do
    while read -r k val _unit; do
      if [[ $k == VmHWM: ]]; then
        ((val > hwm)) && hwm=$val
        break
      fi
    done 2>/dev/null <"/proc/$pid/status" || true
    sleep "$sample_s"
  done
  wait "$pid"
  sync
  s=$(seconds_since "$t0")
  keep_best "$key" "$s"
  ((hwm > hwm_max[$key])) && hwm_max[$key]=$hwm
  printf '  %-44s %8.2fs %8s KiB RSS (own)\n' "$label" "$s" "$hwm"
}

for pass in 1 2 3; do
  printf 'pass %s of 3\n' "$pass"
  measure local "pgward backup to a local repository" "$out/repo-$pass"
  measure s3 "pgward backup to the bucket" "s3://bench/pass-$pass"
  artifact=$(find "$out/repo-$pass/backups" -name '*.dump.zst' | head -n 1)
  bytes=$(stat -c %s "$artifact")
  rm -rf -- "$out/repo-$pass" "$out/data/bench/pass-$pass"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\nbest of 3 (database %s bytes, artifact %s MiB, %s cores):\n' "$db_bytes" "$((bytes >> 20))" "$(nproc)"
printf '  local repository %8.2fs  peak RSS %8s KiB\n' "${best[local]}" "${hwm_max[local]}"
printf '  bucket           %8.2fs  peak RSS %8s KiB\n' "${best[s3]}" "${hwm_max[s3]}"
r=$(ratio "${best[s3]}" "${best[local]}")
if awk -v r="$r" 'BEGIN { exit !(r <= 1.15) }'; then verdict=PASS; else verdict=MISS; fi
printf '  bucket / local   %8s x   target <= 1.15: %s\n' "$r" "$verdict"
if ((hwm_max[s3] <= 65536)); then verdict=PASS; else verdict=MISS; fi
printf '  bucket peak RSS  %8s KiB  target <= 65536 KiB: %s\n' "${hwm_max[s3]}" "$verdict"
