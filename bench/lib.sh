# bench/lib.sh: what the benchmarks share; sourced by bench/*.sh, not run.
#
# Each benchmark takes the same arguments (--scale N, --runs N, --keep,
# --dir DIR), runs in a sandbox cluster dir that a later run with --dir can
# reuse with its loaded data, builds pgward in release mode (or measures the
# binary PGWARD_BENCH_BIN names, e.g. an older build for a before/after
# table), and works on the sample database `demo`. The functions below set
# these globals: scale, scale_given, runs, keep, dir, created_dir, pgward.
# Figures are medians of the runs, which alternate between the commands
# compared, with their range (min-max) beside them.
#
# shellcheck shell=bash
# root: set by the sourcing script (the checkout).
# shellcheck disable=SC2154
# shellcheck source=scripts/pg-sandbox.sh
source "$root/scripts/pg-sandbox.sh"

log() { printf 'bench: %s\n' "$*" >&2; }

# bench_args SCRIPT DEFAULT_SCALE ARGS...: parses the shared arguments;
# --help prints SCRIPT's header comment.
bench_args() {
  local script=$1
  scale=$2 scale_given=0 keep=0 dir="" runs=3
  shift 2
  while [[ $# -gt 0 ]]; do
    case $1 in
      --runs)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || {
          echo "bench: --runs needs a positive integer" >&2
          exit 2
        }
        runs=$2
        shift 2
        ;;
      --scale)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || {
          echo "bench: --scale needs a positive integer" >&2
          exit 2
        }
        scale=$2 scale_given=1
        shift 2
        ;;
      --keep)
        keep=1
        shift
        ;;
      --dir)
        [[ -n ${2:-} ]] || {
          echo "bench: --dir needs a path" >&2
          exit 2
        }
        dir=$(pgsb_abspath "$2")
        shift 2
        ;;
      -h | --help)
        awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$script"
        exit 0
        ;;
      *)
        echo "bench: unknown argument $1 (try --help)" >&2
        exit 2
        ;;
    esac
  done
}

# bench_dir: the cluster dir: new, or reused from an earlier --keep run;
# anything else that is not empty is refused.
bench_dir() {
  created_dir=0
  if [[ -z $dir ]]; then
    dir=$(pgsb_mktemp pgward-bench)
    created_dir=1
  elif [[ ! -e $dir ]]; then
    mkdir -p "$dir"
    chmod 711 "$dir"
    created_dir=1
  elif [[ ! -f $dir/.pg-sandbox && -n $(ls -A "$dir") ]]; then
    log "$dir is neither empty nor a sandbox from an earlier run: refusing to use it"
    exit 2
  fi
}

# bench_leave_dir SCRIPT: for the exit trap: stops the cluster, then keeps
# the dir (--keep, or a --dir that existed) or removes it.
bench_leave_dir() {
  pgsb_stop "$dir"
  if [[ $keep -eq 1 || $created_dir -eq 0 ]]; then
    log "kept $dir (cluster stopped); re-run: $1 --dir $dir --keep"
  else
    rm -rf -- "$dir"
  fi
}

# bench_build: cargo build --release; sets pgward. Fails when there is no
# binary to measure.
bench_build() {
  [[ -x /usr/bin/time ]] || {
    log "GNU time (/usr/bin/time) is missing: run scripts/install-deps.sh"
    return 1
  }
  if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  fi
  if [[ -n ${PGWARD_BENCH_BIN:-} ]]; then
    pgward=$PGWARD_BENCH_BIN
    log "measuring $pgward (PGWARD_BENCH_BIN), not building"
    [[ -x $pgward ]]
    return
  fi
  pgward="$root/target/release/pgward"
  log "cargo build --release"
  (cd "$root" && cargo build --release) && [[ -x $pgward ]]
}

# Samples per key: bench_add KEY VALUE adds one; bench_median KEY and
# bench_range KEY ("min-max") summarise them (print nothing when there are
# none).
declare -A bench_samples=()
bench_add() { bench_samples[$1]="${bench_samples[$1]:-} $2"; }
bench_median() {
  tr ' ' '\n' <<<"${bench_samples[$1]:-}" | awk 'NF' | sort -g | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) exit
      if (NR % 2) printf "%.2f", v[(NR + 1) / 2]
      else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2
    }'
}
bench_range() {
  tr ' ' '\n' <<<"${bench_samples[$1]:-}" | awk 'NF' | sort -g | awk '
    NR == 1 { lo = $1 } { hi = $1 }
    END { if (NR) printf "%.2f-%.2f", lo, hi }'
}
# bench_ratio A B: A / B to two decimals, or nothing when either is unknown.
bench_ratio() { if [[ -n ${1:-} && -n ${2:-} ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; fi; }
# bench_verdict NAME VALUE TARGET [<=|>=] [UNIT]: PASS or MISS.
bench_verdict() {
  local name=$1 v=$2 t=$3 op=${4:-<=} unit=${5:-}
  if [[ -z $v ]]; then
    printf '%-44s %10s   target %s %-10s MISS (not measured)\n' "$name" n/a "$op" "$t$unit"
  else
    printf '%-44s %10s   target %s %-10s %s\n' "$name" "$v$unit" "$op" "$t$unit" \
      "$(awk -v v="$v" -v t="$t" -v op="$op" 'BEGIN { ok = (op == "<=") ? v <= t : v >= t; print ok ? "PASS" : "MISS" }')"
  fi
}

# bench_demo_database: starts the cluster and loads database demo at the
# scale asked for, or reuses what an earlier run loaded; prints its size.
bench_demo_database() {
  local loaded t0
  pgsb_start "$dir"
  if [[ -f $dir/loaded-scale ]]; then
    loaded=$(<"$dir/loaded-scale")
    if [[ $scale_given -eq 1 && $loaded != "$scale" ]]; then
      log "warning: $dir holds scale $loaded, not $scale; using it as it is"
    fi
    scale=$loaded
    log "reusing the database demo (scale $scale) in $dir"
  else
    # A load that did not finish (no marker) is redone from scratch.
    PGOPTIONS='-c client_min_messages=warning' pgsb_psql -d postgres -c 'DROP DATABASE IF EXISTS demo'
    t0=$EPOCHREALTIME
    pgsb_load_sample demo "$scale" "$((scale * 25000))"
    log "VACUUM ANALYZE"
    pgsb_psql -d demo -c 'VACUUM ANALYZE'
    printf '%s\n' "$scale" >"$dir/loaded-scale"
    log "loaded in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')s"
  fi
  db_bytes=$(pgsb_psql -d demo -At -c "SELECT pg_database_size('demo')")
  printf '\ndatabase demo: scale %s, %s bytes (%s)\n' "$scale" "$db_bytes" \
    "$(pgsb_psql -d demo -At -c "SELECT pg_size_pretty(pg_database_size('demo'))")"
}

# bench_s3_server OUT: starts the tests' S3 server (tools/s3-test-server,
# which scripts/install-deps.sh installs) on a free loopback port, storing in
# OUT/data, and writes OUT/credentials and OUT/pgward.toml to reach it.
# Sets server_pid (for the exit trap to kill) and port. Exits 1 without
# it.
bench_s3_server() {
  local out=$1 server
  server=$(command -v pgward-s3-test-server || true)
  [[ -n $server ]] || server=${CARGO_HOME:-$HOME/.cargo}/bin/pgward-s3-test-server
  [[ -x $server ]] || {
    log "pgward-s3-test-server is missing: run scripts/install-deps.sh"
    exit 1
  }
  mkdir -p "$out/data"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$server" --host 127.0.0.1 --port "$port" --access-key AKIABENCH --secret-key bench-secret "$out/data" \
    >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  printf '[default]\naws_access_key_id = AKIABENCH\naws_secret_access_key = bench-secret\n' >"$out/credentials"
  chmod 600 "$out/credentials"
  cat >"$out/pgward.toml" <<TOML
[s3]
endpoint = "http://127.0.0.1:$port"
credentials-file = "$out/credentials"
TOML
}
