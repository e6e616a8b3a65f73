#!/usr/bin/env bash
# bench/drill.sh: how long does proving a backup take, next to just restoring it?
#
# Why it exists: `pgward drill` restores a backup into a scratch database and
# then reads every table back to prove it equals the backup. Its promise is
# that the proof is affordable: drill (restore + full verification) <= 1.3 x
# `pg_restore --jobs 2` of a `pg_dump -Fc` file into an empty database. This
# script measures that on a database of a chosen size. It is a benchmark, not
# a test: it prints figures and PASS/MISS, and exits 0 when every figure could
# be measured (2 when pgward could not be built or run).
#
# Usage: bench/drill.sh [--scale N] [--runs N] [--keep] [--dir DIR]
#   --scale N  pgbench scale (default 35, ~1.1 GB; see bench/backup.sh)
#   --runs N   runs of each command, alternating (default 3); medians shown
#   --keep     keep the cluster dir (stopped) for re-runs
#   --dir DIR  cluster dir to use; a loaded sandbox from an earlier --keep run
#              of any bench script is reused as it is
# Environment: PGWARD_BENCH_BIN measures that pgward binary instead of
# building one; PGWARD_BENCH_COMPARE=BIN also measures BIN's drill in the same
# alternation (of a backup BIN takes itself), for a before/after table whose
# two sides saw the same machine.
#
# Measured in alternation, --runs times each; the median wall time is shown
# with the range, and the drill's own peak RSS (GNU time's %M, which is the
# largest process of its tree: pgward, or its pg_restore):
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

keys=(same offsets drill drill1)
compare=${PGWARD_BENCH_COMPARE:-}
if [[ -n $compare ]]; then
  [[ -x $compare ]] || {
    log "PGWARD_BENCH_COMPARE=$compare is not an executable"
    exit 2
  }
  keys+=(compare)
  log "$compare backup (for the compared drill)"
  "$compare" --repo "$out/repo-compare" backup --dbname demo >/dev/null
fi
declare -A rss_kib=()
declare -A label=(
  [same]="pg_restore -j2 (same archive)"
  [offsets]="pg_restore -j2 (pg_dump -Fc file)"
  [drill]="pgward drill (--jobs 2)"
  [drill1]="pgward drill --jobs 1 (streamed)"
  [compare]="compared binary: drill (--jobs 2)"
)
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }

time_pg_restore() { # KEY FILE
  local t0 s
  pgsb_psql -d postgres -c 'DROP DATABASE IF EXISTS bench_restore' -c 'CREATE DATABASE bench_restore TEMPLATE template0'
  t0=$EPOCHREALTIME
  pg_restore --exit-on-error --jobs 2 -d bench_restore "$2"
  s=$(seconds_since "$t0")
  bench_add "$1" "$s"
  printf '  %-40s %8.2fs\n' "${label[$1]}" "$s"
  pgsb_psql -d postgres -c 'DROP DATABASE bench_restore'
}

problem=""
time_drill() { # KEY ARGS...
  local k=$1 t0 s split r bin=$pgward from=$repo
  shift
  if [[ $k == compare ]]; then bin=$compare from="$out/repo-compare"; fi
  t0=$EPOCHREALTIME
  if ! /usr/bin/time -f '%M' -o "$out/drill.rss" \
    "$bin" --json --repo "$from" drill latest "$@" >"$out/drill.json" 2>"$out/drill.err"; then
    log "pgward drill failed:"
    sed 's/^/    /' "$out/drill.err" >&2
    problem="pgward drill failed"
    return 1
  fi
  s=$(seconds_since "$t0")
  bench_add "$k" "$s"
  r=$(tail -n 1 "$out/drill.rss")
  if [[ -z ${rss_kib[$k]:-} || $r -gt ${rss_kib[$k]} ]]; then rss_kib[$k]=$r; fi
  split=$(grep -E '"(restore|verify)-ms"' "$out/drill.json" | tr -d ' ,"' | tr '\n' ' ')
  printf '  %-40s %8.2fs   (%s)\n' "${label[$k]}" "$s" "$split"
}

for ((pass = 1; pass <= runs; pass++)); do
  printf 'run %s of %s\n' "$pass" "$runs"
  time_pg_restore same "$out/same.dump"
  time_pg_restore offsets "$out/offsets.dump"
  time_drill drill || true
  time_drill drill1 --jobs 1 || true
  if [[ -n $compare ]]; then time_drill compare || true; fi
done

printf '\n%-40s %9s %12s %10s\n' command median range "RSS MiB"
for k in "${keys[@]}"; do
  rss=""
  [[ -n ${rss_kib[$k]:-} ]] && rss=$(awk -v k="${rss_kib[$k]}" 'BEGIN { printf "%.1f", k / 1024 }')
  m=$(bench_median "$k")
  printf '%-40s %9s %12s %10s\n' "${label[$k]}" "${m:-n/a}" "$(bench_range "$k")" "$rss"
done
printf '\n'
bench_verdict "drill / pg_restore -j2 (pg_dump -Fc)" \
  "$(bench_ratio "$(bench_median drill)" "$(bench_median offsets)")" 1.30
printf '%-44s %10s   (information only)\n' "drill / pg_restore -j2 (same archive)" \
  "$(bench_ratio "$(bench_median drill)" "$(bench_median same)")"
printf '%-44s %10s   (information only)\n' "drill --jobs 1 / pg_restore -j2 (pg_dump -Fc)" \
  "$(bench_ratio "$(bench_median drill1)" "$(bench_median offsets)")"
if [[ -n $compare ]]; then
  printf '%-44s %10s   (information only)\n' "compared drill / pg_restore -j2 (pg_dump -Fc)" \
    "$(bench_ratio "$(bench_median compare)" "$(bench_median offsets)")"
fi
printf '%-44s %10s   (the tree: pgward or its pg_restore)\n' "drill peak RSS, MiB" \
  "$(awk -v a="${rss_kib[drill]:-0}" -v b="${rss_kib[drill1]:-0}" 'BEGIN { m = a > b ? a : b; if (m) printf "%.1f", m / 1024 }')"
if [[ -n $problem ]]; then
  log "$problem"
  exit 2
fi
