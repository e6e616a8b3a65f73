#!/usr/bin/env bash
# bench/drill.sh: how long does proving a backup take, next to just restoring it?
#
# Why it exists: `pgward drill` restores a backup into a scratch database and
# then reads every table back to prove it equals the backup. Its promise is
# that the proof is affordable: drill (restore + full verification) <= 1.5 x
# `pg_restore --jobs 2` of the same archive into an empty database. This
# script measures that on a database of a chosen size. It is a benchmark, not
# a test: it prints figures and PASS/MISS, and exits 0 when every figure could
# be measured (2 when pgward could not be built or run).
#
# Usage: bench/drill.sh [--scale N] [--keep] [--dir DIR]
#   --scale N  pgbench scale (default 35, ~1.1 GB; see bench/backup.sh)
#   --keep     keep the cluster dir (stopped) for re-runs
#   --dir DIR  cluster dir to use; a loaded sandbox from an earlier --keep run
#              of this script or of bench/backup.sh is reused as it is
#
# Measured, twice each, in sequence; the best wall time is shown:
#   pg_restore -j2 (same archive)   `zstd -d` of pgward's artifact, restored
#                                   with pg_restore --jobs 2 into a new database
#   pg_restore -j2 (pg_dump -Fc)    the same database dumped by pg_dump -Fc to a
#                                   file (whose TOC has data offsets), for reference
#   pgward drill                    restore (--jobs 2, spooled) + verification
#   pgward drill --jobs 1           streamed into pg_restore, one verifying session
# The drill's own split (restore / verification) is printed from its JSON.
set -euo pipefail
export LC_NUMERIC=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_args "${BASH_SOURCE[0]}" 35 "$@"
bench_dir
out="$dir/out-drill"

cleanup() {
  local rc=$?
  rm -rf -- "$out"
  bench_leave_dir bench/drill.sh
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_build || {
  log "pgward could not be built"
  exit 2
}
bench_demo_database
rm -rf -- "$out"
mkdir -p "$out"
printf 'pg_restore: %s; cores: %s\n\n' "$(pg_restore --version)" "$(nproc)"

repo="$out/repo"
log "pgward backup (the backup every run below restores)"
"$pgward" --repo "$repo" backup --dbname demo >/dev/null
artifact=$(find "$repo/backups" -name '*.dump.zst' | head -n 1)
zstd -q -d "$artifact" -o "$out/same.dump"
pg_dump -Fc -f "$out/offsets.dump" demo

declare -A best_s=()
keys=(same offsets drill drill1)
declare -A label=(
  [same]="pg_restore -j2 (same archive)"
  [offsets]="pg_restore -j2 (pg_dump -Fc file)"
  [drill]="pgward drill (--jobs 2)"
  [drill1]="pgward drill --jobs 1 (streamed)"
)
record() {
  if [[ -z ${best_s[$1]:-} ]] || awk -v a="$2" -v b="${best_s[$1]}" 'BEGIN { exit !(a < b) }'; then
    best_s[$1]=$2
  fi
}
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

time_pg_restore() { # KEY FILE
  local t0 s
  pgsb_psql -d postgres -c 'DROP DATABASE IF EXISTS bench_restore' -c 'CREATE DATABASE bench_restore TEMPLATE template0'
  t0=$EPOCHREALTIME
  pg_restore --exit-on-error --jobs 2 -d bench_restore "$2"
  s=$(seconds_since "$t0")
  record "$1" "$s"
  printf '  %-40s %8.2fs\n' "${label[$1]}" "$s"
  pgsb_psql -d postgres -c 'DROP DATABASE bench_restore'
}

problem=""
time_drill() { # KEY ARGS...
  local k=$1 t0 s split
  shift
  t0=$EPOCHREALTIME
  if ! "$pgward" --json --repo "$repo" drill latest "$@" >"$out/drill.json" 2>"$out/drill.err"; then
    log "pgward drill failed:"
    sed 's/^/    /' "$out/drill.err" >&2
    problem="pgward drill failed"
    return 1
  fi
  s=$(seconds_since "$t0")
  record "$k" "$s"
  split=$(grep -E '"(restore|verify)-ms"' "$out/drill.json" | tr -d ' ,"' | tr '\n' ' ')
  printf '  %-40s %8.2fs   (%s)\n' "${label[$k]}" "$s" "$split"
}

for pass in 1 2; do
  printf 'pass %s of 2\n' "$pass"
  time_pg_restore same "$out/same.dump"
  time_pg_restore offsets "$out/offsets.dump"
  time_drill drill || true
  time_drill drill1 --jobs 1 || true
done

printf '\n%-40s %9s\n' command seconds
for k in "${keys[@]}"; do
  printf '%-40s %9s\n' "${label[$k]}" "${best_s[$k]:-n/a}"
done
ratio() { if [[ -n ${1:-} && -n ${2:-} ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; fi; }
verdict() { # NAME VALUE TARGET
  if [[ -z $2 ]]; then
    printf '%-40s %9s   target <= %-5s MISS (not measured)\n' "$1" n/a "$3"
  else
    printf '%-40s %9s   target <= %-5s %s\n' "$1" "$2" "$3" \
      "$(awk -v v="$2" -v t="$3" 'BEGIN { print (v <= t) ? "PASS" : "MISS" }')"
  fi
}
printf '\n'
verdict "drill / pg_restore -j2 (same archive)" "$(ratio "${best_s[drill]:-}" "${best_s[same]:-}")" 1.5
printf '%-40s %9s   (information only)\n' "drill / pg_restore -j2 (pg_dump -Fc)" \
  "$(ratio "${best_s[drill]:-}" "${best_s[offsets]:-}")"
printf '%-40s %9s   (information only)\n' "drill --jobs 1 / pg_restore -j2 (same)" \
  "$(ratio "${best_s[drill1]:-}" "${best_s[same]:-}")"
if [[ -n $problem ]]; then
  log "$problem"
  exit 2
fi
