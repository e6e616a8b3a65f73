#!/usr/bin/env bash
# bench/copy.sh: what does an off-site copy to S3 cost, and does pgward's
# memory stay flat while it streams a large artifact?
#
# Why it exists: `pgward copy` (and `[[mirror]]`) send a backup to an
# S3-compatible bucket as a multipart upload, then read it back from the
# bucket and hash it again before the manifest makes it a backup there. This
# script measures that against moving the same bytes without any proof, on
# loopback, with a real S3 server (tools/s3-test-server, which scripts/install-deps.sh
# installs) writing to the same disk. It is a benchmark, not a test: it
# prints figures and exits 0 when every figure could be measured.
#
# Usage: bench/copy.sh [--scale N] [--keep] [--dir DIR]
#   --scale N  pgbench scale of the sample database (default 30: ~1 GB of
#              database, a few hundred MB of artifact)
#   --keep, --dir DIR  as bench/backup.sh
# Environment: PGWARD_TMPDIR (default /var/tmp), PGWARD_BENCH_SAMPLE
#   (default 0.05) seconds between RSS samples of pgward.
#
# Three passes, each: `cp` of the artifact into the server's data directory
# (the floor: the bytes moved once, no network, no proof), `curl` PUT of
# the artifact to the server (one unsigned-payload request, no proof: what
# the S3 protocol itself costs on loopback), and `pgward copy` to a fresh
# prefix (multipart upload with CRC32C per part, sha256 on the way, read
# back and sha256 again, manifest written and read back). The table shows
# the best wall time of the three and pgward's own peak RSS (VmHWM, sampled,
# as in bench/backup.sh). Target: pgward's own peak RSS <= 64 MiB (parts of
# 8 MiB by default; about 15 MiB plus four parts are in memory). The copy's time is reported as ratios
# against both baselines; it reads the artifact twice by design.
set -euo pipefail
export LC_NUMERIC=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_args "${BASH_SOURCE[0]}" 30 "$@"
sample_s=${PGWARD_BENCH_SAMPLE:-0.05}

bench_dir
out="$dir/out"
server_pid=""
cleanup() {
  local rc=$?
  [[ -z $server_pid ]] || kill "$server_pid" 2>/dev/null || true
  rm -rf -- "$out"
  bench_leave_dir bench/copy.sh
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
mkdir -p "$out/data/bench" "$out/repo"
chmod 700 "$out"

log "pgward backup (the artifact to copy)"
"$pgward" --repo "$out/repo" backup --dbname demo --allow-shrink -q
artifact=$(find "$out/repo/backups" -name '*.dump.zst' | head -n 1)
bytes=$(stat -c %s "$artifact")
printf 'artifact: %s bytes (%s MiB)\n\n' "$bytes" "$((bytes >> 20))"

bench_s3_server "$out"

declare -A best=()
hwm_max=0
keep_best() { # key seconds
  if [[ -z ${best[$1]:-} ]] || awk -v a="$2" -v b="${best[$1]}" 'BEGIN { exit !(a < b) }'; then
    best[$1]=$2
  fi
}
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

for pass in 1 2 3; do
  printf 'pass %s of 3\n' "$pass"
  sync
  t0=$EPOCHREALTIME
  cp "$artifact" "$out/data/bench/cp-$pass"
  sync
  s=$(seconds_since "$t0")
  keep_best cp "$s"
  printf '  %-44s %8.2fs\n' "cp artifact (floor)" "$s"
  rm -f "$out/data/bench/cp-$pass"

  t0=$EPOCHREALTIME
  curl -sS -f -o /dev/null -T "$artifact" \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user AKIABENCH:bench-secret \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
    "http://127.0.0.1:$port/bench/put-$pass"
  sync
  s=$(seconds_since "$t0")
  keep_best put "$s"
  printf '  %-44s %8.2fs\n' "curl PUT to the S3 server (one request)" "$s"

  t0=$EPOCHREALTIME
  "$pgward" --config "$out/pgward.toml" --repo "$out/repo" copy latest --database demo \
    --to "s3://bench/pass-$pass" -q &
  pid=$!
  hwm=0
  while kill -0 "$pid" 2>/dev/null; do
    while read -r key val _unit; do
      if [[ $key == VmHWM: ]]; then
        ((val > hwm)) && hwm=$val
        break
      fi
    done 2>/dev/null <"/proc/$pid/status" || true
    sleep "$sample_s"
  done
  wait "$pid"
  sync
  s=$(seconds_since "$t0")
  keep_best pgward "$s"
  ((hwm > hwm_max)) && hwm_max=$hwm
  printf '  %-44s %8.2fs %8s KiB RSS (own)\n' "pgward copy (upload, read back, manifest)" "$s" "$hwm"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib_s() { awk -v n="$bytes" -v s="$1" 'BEGIN { printf "%.0f", n / 1048576 / s }'; }
printf '\nbest of 3 (%s MiB artifact, %s cores):\n' "$((bytes >> 20))" "$(nproc)"
printf '  cp (floor)      %8.2fs  %5s MiB/s\n' "${best[cp]}" "$(mib_s "${best[cp]}")"
printf '  curl PUT        %8.2fs  %5s MiB/s\n' "${best[put]}" "$(mib_s "${best[put]}")"
printf '  pgward copy     %8.2fs  %5s MiB/s of artifact; %s x cp, %s x curl PUT\n' \
  "${best[pgward]}" "$(mib_s "${best[pgward]}")" "$(ratio "${best[pgward]}" "${best[cp]}")" \
  "$(ratio "${best[pgward]}" "${best[put]}")"
if ((hwm_max <= 65536)); then verdict=PASS; else verdict=MISS; fi
printf '  pgward peak RSS %8s KiB  target <= 65536 KiB: %s\n' "$hwm_max" "$verdict"
