#!/usr/bin/env bash
# bench/backup.sh: how fast and how lean is `pgward backup` next to pg_dump?
#
# Why it exists: pgward streams pg_dump through hash, compress and encrypt
# stages; its promise is to cost little more than pg_dump itself while writing
# much less than `pg_dump -Fc` and keeping its own memory flat. This script
# measures exactly that on a database of a chosen size. It is a benchmark, not
# a test: it prints figures and PASS/MISS per target, and exits 0 when every
# figure could be measured (2 when pgward could not be built or run).
#
# Usage: bench/backup.sh [--scale N] [--runs N] [--keep] [--dir DIR]
#   --scale N  pgbench scale (default 70); the database also gets the
#              events table (N*25000 rows) and audit.log (N*6250 rows). Each
#              scale step is ~15 MB of pgbench plus ~15 MB of events: scale 2
#              is ~70 MB, scale 70 ~2.1 GB
#   --runs N   runs of each command, alternating (default 3); medians shown
#   --keep     keep the cluster dir (stopped) for re-runs
#   --dir DIR  cluster dir to use; if it holds a loaded sandbox from an earlier
#              --keep run, the data load is skipped
# Environment: PGWARD_BENCH_BIN measures that pgward binary instead of
#   building one (for before/after tables),
#   PGWARD_TMPDIR (default /var/tmp) for the temp dir,
#   PGWARD_BENCH_TIMEOUT (default 3600) seconds before a pgward run is killed,
#   PGWARD_BENCH_SAMPLE (default 0.05) seconds between RSS samples of pgward.
#
# Each command runs --runs times, alternating (floor, -Fc, gzip, -Fc | gpg,
# pgward, pgward encrypted, then again); the table shows the median wall time
# with its range, and the highest peak RSS seen. Targets: pgward time <= 1.10
# x floor; encrypted pgward time <= 1.17 x floor and <= 0.45 x `pg_dump -Fc |
# gpg --encrypt`; pgward's own peak RSS <= 64 MiB, encrypted or not (pgward /
# `pg_dump -Fc` is shown for information). Both encrypt to the same key, gpg 2.2's
# default (RSA-3072 primary and encryption subkey), made by gpg in a
# throwaway GNUPGHOME.
#
# On peak RSS: GNU time's %M is ru_maxrss from wait4(), which Linux fills
# with the maximum of the process's own peak and the peaks of all descendants
# it waited for: the largest single process in the tree, not a sum. Measured
# here: a 100 MB python child under a 5 MB parent gives %M of ~210 MB. So for
# `pgward` (whose pg_dump child can be larger than pgward) %M is
# max(pgward, pg_dump); that figure is shown as "tree", and pgward's own peak
# is read from VmHWM in /proc/<pid>/status of the pgward process, sampled
# every PGWARD_BENCH_SAMPLE seconds while it runs (VmHWM only grows, so the
# last sample is the peak up to then; growth in the final interval is missed).
# For the baselines %M is what we want (pg_dump's, or the larger of pg_dump
# and gzip).
set -euo pipefail
export LC_NUMERIC=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_args "${BASH_SOURCE[0]}" 70 "$@"

timeout_s=${PGWARD_BENCH_TIMEOUT:-3600}
sample_s=${PGWARD_BENCH_SAMPLE:-0.05}
[[ $timeout_s =~ ^[0-9]+$ ]] || {
  log "PGWARD_BENCH_TIMEOUT must be a whole number of seconds"
  exit 2
}
[[ -x /usr/bin/time ]] || {
  log "GNU time (/usr/bin/time) is missing: run scripts/install-deps.sh"
  exit 1
}

bench_dir
out="$dir/out"

cleanup() {
  local rc=$?
  if [[ -d $out/gnupg ]]; then GNUPGHOME="$out/gnupg" gpgconf --kill all 2>/dev/null || true; fi
  rm -rf -- "$out"
  bench_leave_dir bench/backup.sh
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build pgward first -----------------------------------------------------
pgward_problem=""
bench_build || pgward_problem="cargo build --release failed or made no binary"
[[ -z $pgward_problem ]] || log "pgward will not be measured: $pgward_problem"

# --- data -------------------------------------------------------------------
bench_demo_database
mkdir -p "$out"
printf 'pg_dump: %s; cores: %s\n\n' "$(pg_dump --version)" "$(nproc)"

# --- measurements -------------------------------------------------------------
# Results per key: seconds (bench_add), max RSS KiB, output bytes, and for
# pgward the tree RSS too. Keys: floor, fc, gzip, pgward.
declare -A rss_kib=() out_bytes=() tree_kib=()
keys=(floor fc gzip gpg pgward pgward_enc)
declare -A label=(
  [floor]="pg_dump -Ft demo > /dev/null (floor)"
  [fc]="pg_dump -Fc demo > file"
  [gzip]="pg_dump demo | gzip > file"
  [gpg]="pg_dump -Fc demo | gpg --encrypt > file"
  [pgward]="pgward backup --allow-shrink"
  [pgward_enc]="pgward backup, encrypted"
)

# The recipient key for both encrypted pipelines.
export GNUPGHOME="$out/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
  --quick-gen-key 'pgward bench <bench@example.invalid>' default default never 2>/dev/null
fpr=$(gpg --with-colons --list-keys | awk -F: '/^fpr/ { print $10; exit }')
gpg --export --armor "$fpr" >"$out/recipient.asc"
cat >"$out/encrypted.toml" <<EOF
[[encryption.recipient]]
certificate = "$out/recipient.asc"
fingerprint = "$fpr"
EOF

record() { # key seconds rss_kib(may be empty: unknown) bytes
  local k=$1 s=$2 r=$3 b=$4
  bench_add "$k" "$s"
  if [[ -n $r ]] && [[ -z ${rss_kib[$k]:-} || $r -gt ${rss_kib[$k]} ]]; then rss_kib[$k]=$r; fi
  out_bytes[$k]=$b
}

# time_baseline KEY SCRIPT ARGS...: one run under GNU time, in bash -c so
# that redirects and pipes are inside the measurement.
time_baseline() {
  local k=$1 script=$2 tf="$out/time.$1" f="$out/dump.$1" rc=0 s r b=""
  shift 2
  rm -f "$f"
  /usr/bin/time -f '%e %M' -o "$tf" bash -c "set -o pipefail; $script" _ "$f" "$@" || rc=$?
  if [[ $rc -ne 0 ]]; then
    log "${label[$k]} failed (exit $rc)"
    return 1
  fi
  read -r s r <"$tf"
  [[ -f $f ]] && b=$(stat -c %s "$f")
  record "$k" "$s" "$r" "$b"
  printf '  %-40s %8.2fs %10s KiB RSS\n' "${label[$k]}" "$s" "$r"
  rm -f "$f"
}

# time_pgward KEY [ARGS...]: one run with a fresh repository; wall time and
# tree RSS from GNU time, pgward's own peak RSS from VmHWM samples (see
# header). ARGS go before the subcommand (e.g. --config FILE).
time_pgward() {
  local k=$1 repo="$out/repo" tf="$out/time.pgward" lg="$out/pgward.log"
  local tpid ppid="" hwm=0 rc=0 s r key val _unit timed_out=0 nap files deadline
  shift
  rm -rf "$repo"
  mkdir -p "$repo"
  /usr/bin/time -f '%e %M' -o "$tf" "$pgward" "$@" --repo "$repo" backup --dbname demo --allow-shrink \
    </dev/null >"$lg" 2>&1 &
  tpid=$!
  deadline=$((SECONDS + timeout_s))
  # The loop forks only `sleep` (and pgrep until pgward is seen): cheap
  # enough to poll often on a 2-core machine.
  while kill -0 "$tpid" 2>/dev/null; do
    [[ -n $ppid ]] || ppid=$(pgrep -P "$tpid" || true) # the one child of time: pgward
    nap=$sample_s
    [[ -n $ppid ]] || nap=0.02 # catch even a short run
    if [[ -n $ppid && -r /proc/$ppid/status ]]; then
      while read -r key val _unit; do
        if [[ $key == VmHWM: ]]; then
          ((val > hwm)) && hwm=$val
          break
        fi
      done 2>/dev/null <"/proc/$ppid/status" || true
    fi
    if ((SECONDS > deadline)); then
      log "pgward still running after ${timeout_s}s: killing it"
      if [[ -n $ppid ]]; then kill "$ppid" 2>/dev/null || true; fi
      kill "$tpid" 2>/dev/null || true
      timed_out=1
      break
    fi
    sleep "$nap"
  done
  wait "$tpid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    log "pgward backup failed (exit $rc); its output:"
    tail -n 30 "$lg" | sed 's/^/    /' >&2
    pgward_problem="pgward backup exited $rc"
    [[ $timed_out -eq 0 ]] || pgward_problem="pgward backup killed after ${timeout_s}s"
    return 1
  fi
  files=$(find "$repo" -type f -size +0 | wc -l)
  if [[ $files -eq 0 ]]; then
    log "pgward backup exited 0 but wrote no file to the repository; its output:"
    tail -n 30 "$lg" | sed 's/^/    /' >&2
    pgward_problem="pgward backup exited 0 but wrote nothing"
    return 1
  fi
  read -r s r <"$tf"
  if [[ $hwm -eq 0 ]]; then
    log "pgward ended before its RSS could be sampled: own peak RSS unknown"
    hwm=""
  fi
  if [[ $k == pgward_enc ]] && ! compgen -G "$repo/backups/*.dump.zst.gpg" >/dev/null; then
    pgward_problem="the encrypted run wrote no .dump.zst.gpg artifact"
    return 1
  fi
  record "$k" "$s" "$hwm" "$(du -sb "$repo" | cut -f1)"
  if [[ -z ${tree_kib[$k]:-} || $r -gt ${tree_kib[$k]} ]]; then tree_kib[$k]=$r; fi
  printf '  %-40s %8.2fs %10s KiB RSS (own), %s KiB (tree), %s files\n' \
    "${label[$k]}" "$s" "${hwm:-?}" "$r" "$files"
  rm -rf "$repo"
}

# The scripts below are run by `bash -c SCRIPT _ FILE`: "$1" is the output file.
# shellcheck disable=SC2016
for ((pass = 1; pass <= runs; pass++)); do
  printf 'run %s of %s\n' "$pass" "$runs"
  time_baseline floor 'pg_dump -Ft demo > /dev/null'
  time_baseline fc 'pg_dump -Fc demo > "$1"'
  time_baseline gzip 'pg_dump demo | gzip > "$1"'
  time_baseline gpg 'pg_dump -Fc demo | gpg --batch --trust-model always --encrypt -r "$2" > "$1"' "$fpr"
  if [[ -z $pgward_problem ]]; then
    time_pgward pgward || true
    time_pgward pgward_enc --config "$out/encrypted.toml" || true
  else
    printf '  %-40s skipped: %s\n' "${label[pgward]}" "$pgward_problem"
  fi
done

# --- report -------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
printf '\n%-40s %9s %12s %12s %14s\n' command median range "output MiB" "peak RSS MiB"
for k in "${keys[@]}"; do
  m=$(bench_median "$k")
  if [[ -z $m ]]; then
    printf '%-40s %9s %12s %12s %14s\n' "${label[$k]}" n/a n/a n/a n/a
    continue
  fi
  size=-
  [[ -n ${out_bytes[$k]} ]] && size=$(awk -v b="${out_bytes[$k]}" 'BEGIN { printf "%.1f", b / 1048576 }')
  rss=n/a
  [[ -n ${rss_kib[$k]:-} ]] && rss=$(mib "${rss_kib[$k]}")
  note=""
  [[ $k == pgward* ]] && note="  (pgward's own; with its pg_dump child: $(mib "${tree_kib[$k]}"))"
  printf '%-40s %9s %12s %12s %14s%s\n' "${label[$k]}" "$m" "$(bench_range "$k")" "$size" "$rss" "$note"
done

printf '\n'
pw=$(bench_median pgward)
floor=$(bench_median floor)
bench_verdict "time pgward / floor" "$(bench_ratio "$pw" "$floor")" 1.10
printf '%-44s %10s   (information only)\n' "time pgward / pg_dump -Fc" "$(bench_ratio "$pw" "$(bench_median fc)")"
own_mib=""
if [[ -n ${rss_kib[pgward]:-} ]]; then own_mib=$(mib "${rss_kib[pgward]}"); fi
bench_verdict "pgward own peak RSS, MiB" "$own_mib" 64
pe=$(bench_median pgward_enc)
bench_verdict "time encrypted pgward / floor" "$(bench_ratio "$pe" "$floor")" 1.17
bench_verdict "time encrypted pgward / -Fc | gpg" "$(bench_ratio "$pe" "$(bench_median gpg)")" 0.45
enc_mib=""
if [[ -n ${rss_kib[pgward_enc]:-} ]]; then enc_mib=$(mib "${rss_kib[pgward_enc]}"); fi
bench_verdict "encrypted pgward own peak RSS, MiB" "$enc_mib" 64
if [[ -n $pw ]]; then
  printf '%-44s %10s   (information only)\n' "size pgward / pg_dump -Fc" \
    "$(bench_ratio "${out_bytes[pgward]}" "${out_bytes[fc]}")"
fi

if [[ -n $pgward_problem ]]; then
  log "pgward was not measured: $pgward_problem"
  exit 2
fi
