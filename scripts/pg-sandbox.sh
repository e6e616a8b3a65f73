#!/usr/bin/env bash
# pg-sandbox.sh: throwaway PostgreSQL clusters for pgward's demo and benchmark.
#
# Why it exists: pgward must be shown and measured against a real server, but
# never against the machine's own clusters, and without taking port 5432 (or
# any TCP port). Each sandbox lives in one directory (data/, sock/, log/), is
# reachable only over a Unix socket in DIR/sock, and goes when DIR goes.
#
# As a library (the demo and the benchmark source it):
#   source scripts/pg-sandbox.sh
#   dir=$(pgsb_mktemp pgward-x)            # a fresh dir under /var/tmp
#   trap 'pgsb_destroy "$dir"' EXIT         # stop the server, remove the dir
#   pgsb_start "$dir"                       # exports PGHOST, PGUSER, PGPORT
#
# Standalone:
#   scripts/pg-sandbox.sh start DIR    # prints export lines: eval "$(...)"
#   scripts/pg-sandbox.sh stop DIR     # fast shutdown, keeps DIR
#   scripts/pg-sandbox.sh destroy DIR  # stop, then remove DIR
#
# Environment: PGWARD_PGBIN picks the server bin dir (default: the highest
# /usr/lib/postgresql/*/bin, else the one holding initdb on PATH);
# PGWARD_TMPDIR is where pgsb_mktemp creates dirs (default /var/tmp: /tmp may
# be a small tmpfs). As root, initdb and postgres run as the `postgres` user.
set -euo pipefail

pgsb_log() { printf 'pg-sandbox: %s\n' "$*" >&2; }
pgsb_die() { pgsb_log "error: $*"; return 1; }

# The PostgreSQL server bin dir (holding initdb, postgres, pg_ctl, pgbench).
pgsb_bindir() {
  if [[ -n ${PGWARD_PGBIN:-} ]]; then
    [[ -x $PGWARD_PGBIN/initdb && -x $PGWARD_PGBIN/pg_ctl ]] ||
      pgsb_die "PGWARD_PGBIN=$PGWARD_PGBIN has no initdb/pg_ctl" || return
    printf '%s\n' "$PGWARD_PGBIN"
    return
  fi
  local d best=""
  best=$(for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && printf '%s\n' "$d"
  done | sort -V | tail -n 1)
  if [[ -z $best ]] && command -v initdb >/dev/null 2>&1; then
    best=$(dirname "$(command -v initdb)")
  fi
  [[ -n $best ]] ||
    pgsb_die "no PostgreSQL server binaries (run scripts/install-deps.sh, or set PGWARD_PGBIN)" ||
    return
  printf '%s\n' "$best"
}

# A fresh directory for a sandbox (and whatever else the caller keeps beside
# it), searchable by the postgres user so that a sub-dir can hold the cluster.
pgsb_mktemp() {
  local base=${PGWARD_TMPDIR:-/var/tmp} d
  d=$(mktemp -d "$base/${1:-pg-sandbox}.XXXXXX")
  chmod 711 "$d"
  printf '%s\n' "$d"
}

# Run a server command as the postgres OS user when we are root (initdb and
# postgres refuse to run as root), from a directory that user can enter.
pgsb_as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

pgsb_abspath() {
  local d=$1
  [[ $d == /* ]] || d="$PWD/$d"
  printf '%s\n' "${d%/}"
}

# pgsb_start DIR: initdb DIR/data if it is not there yet, start the server on
# the socket dir DIR/sock with no TCP listener, and export PGHOST, PGUSER,
# PGPORT (and put the server's bin dir first on PATH, so that pg_dump, psql
# and pgbench match the server's major version).
pgsb_start() {
  local dir bin sock
  [[ $# -eq 1 && -n $1 ]] || pgsb_die "usage: pgsb_start DIR" || return
  dir=$(pgsb_abspath "$1")
  [[ $dir != *[[:space:]\'\"\\]* ]] ||
    pgsb_die "sandbox dir must not contain spaces, quotes or backslashes: $dir" || return
  sock="$dir/sock"
  # A Unix socket path is at most 107 bytes.
  ((${#sock} + 16 <= 107)) || pgsb_die "sandbox dir path too long for a Unix socket: $dir" || return
  bin=$(pgsb_bindir) || return

  mkdir -p "$dir/sock" "$dir/log"
  touch "$dir/.pg-sandbox"
  if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 ||
      pgsb_die "no 'postgres' OS user to run the server as (run scripts/install-deps.sh)" || return
    chown postgres:postgres "$dir" "$dir/sock" "$dir/log"
    [[ -d $dir/data ]] && chown postgres:postgres "$dir/data"
    runuser -u postgres -- test -w "$dir" ||
      pgsb_die "the postgres user cannot reach $dir (is a parent directory mode 700?)" || return
  fi

  if [[ ! -f $dir/data/PG_VERSION ]]; then
    local locale_opt=(--no-locale)
    if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then locale_opt=(--locale=C.UTF-8); fi
    pgsb_log "initdb $dir/data ($bin)"
    pgsb_as_pg "$bin/initdb" -D "$dir/data" --auth=trust -U postgres --encoding=UTF8 \
      --no-sync "${locale_opt[@]}" >"$dir/log/initdb.log" 2>&1 || {
      tail -n 20 "$dir/log/initdb.log" >&2
      pgsb_die "initdb failed (log: $dir/log/initdb.log)"
      return
    }
  fi

  if pgsb_as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    pgsb_log "already running: $dir/data"
  else
    pgsb_log "starting server (socket $sock, no TCP)"
    pgsb_as_pg "$bin/pg_ctl" -w -t 120 -D "$dir/data" -l "$dir/log/postgres.log" \
      -o "-k $sock -c listen_addresses='' -c fsync=off" start >/dev/null || {
      tail -n 20 "$dir/log/postgres.log" >&2 || true
      pgsb_die "server did not start (log: $dir/log/postgres.log)"
      return
    }
  fi

  unset PGHOSTADDR PGSERVICE PGDATABASE
  export PGHOST="$sock" PGUSER=postgres PGPORT=5432
  export PGSB_DIR="$dir" PGSB_BIN="$bin"
  case ":$PATH:" in
    *":$bin:"*) ;;
    *) export PATH="$bin:$PATH" ;;
  esac
}

# pgsb_stop DIR: fast shutdown if a server runs there; never fails.
pgsb_stop() {
  local dir bin
  dir=$(pgsb_abspath "${1:?usage: pgsb_stop DIR}")
  [[ -f $dir/data/postmaster.pid ]] || return 0
  bin=$(pgsb_bindir) || return 0
  pgsb_as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
    pgsb_log "warning: could not stop the server in $dir/data"
  return 0
}

# pgsb_destroy DIR: stop, then remove DIR, but only a dir pgsb_start made
# (it holds the .pg-sandbox marker). Never fails: it is meant for traps.
pgsb_destroy() {
  local dir
  dir=$(pgsb_abspath "${1:?usage: pgsb_destroy DIR}")
  pgsb_stop "$dir"
  if [[ -f $dir/.pg-sandbox && $dir != / ]]; then
    rm -rf -- "$dir" || pgsb_log "warning: could not remove $dir"
  elif [[ -e $dir ]]; then
    pgsb_log "not removing $dir: no .pg-sandbox marker in it"
  fi
  return 0
}

# pgsb_psql ARGS...: psql that stops at the first error and reads no ~/.psqlrc.
pgsb_psql() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# pgsb_load_sample DB PGBENCH_SCALE EVENTS_ROWS: create DB with pgbench's
# tables at PGBENCH_SCALE (scale 1 is about 15 MB), a text/jsonb-heavy
# public.events table of EVENTS_ROWS rows (nested jsonb objects and arrays,
# text with tabs, newlines, backslashes, quotes and non-ASCII; some NULLs) and
# a second schema `audit` with EVENTS_ROWS/4 rows and a view. The caller has
# started the sandbox. Shared by scripts/demo.sh and bench/backup.sh.
pgsb_load_sample() {
  local db=${1:?usage: pgsb_load_sample DB SCALE EVENTS_ROWS} scale=${2:?} rows=${3:?}
  [[ $scale =~ ^[0-9]+$ && $rows =~ ^[0-9]+$ ]] || pgsb_die "scale and rows must be integers" || return
  pgsb_psql -d postgres -c "CREATE DATABASE \"$db\"" || return
  pgsb_log "pgbench -i -s $scale $db"
  PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" pgbench -i -s "$scale" --quiet "$db" || return
  pgsb_log "public.events: $rows rows; audit.log: $((rows / 4)) rows"
  pgsb_psql -d "$db" -v rows="$rows" <<'SQL' || return
CREATE TABLE public.events (
  id      bigserial PRIMARY KEY,
  at      timestamptz NOT NULL,
  payload jsonb NOT NULL,
  note    text
);
COMMENT ON TABLE public.events IS 'sample events: jsonb with nested objects and arrays, multi-line non-ASCII text';
INSERT INTO public.events (at, payload, note)
SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '7 seconds',
       jsonb_build_object(
         'kind',  (ARRAY['login','logout','purchase','refund','view'])[1 + g % 5],
         'user',  jsonb_build_object('id', g % 9973, 'name', 'user_' || (g % 9973),
                                     'tags', jsonb_build_array('t' || g % 7, 't' || g % 11)),
         'items', (SELECT jsonb_agg(jsonb_build_object(
                             'sku', 'SKU-' || (g * 31 + i) % 100000,
                             'qty', 1 + (g + i) % 5,
                             'price', round(((g * i) % 10000) / 100.0, 2)))
                     FROM generate_series(1, 1 + g % 4) AS i),
         'ok',    g % 13 <> 0,
         'ratio', round((g % 1000) / 7.0, 6),
         'trace', md5(g::text),
         'none',  NULL),
       CASE WHEN g % 17 = 0 THEN NULL
            ELSE format(E'note %s\twith a tab\nsecond line: Grüße, naïve café, 日本語, 🐘 \\ "quoted" %s',
                        g, md5((g * 7)::text))
       END
  FROM generate_series(1, :rows) AS g;
CREATE INDEX events_at_idx ON public.events (at);

CREATE SCHEMA audit;
CREATE TABLE audit.log (
  id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at     timestamptz NOT NULL DEFAULT now(),
  actor  text NOT NULL,
  action text NOT NULL,
  detail jsonb
);
INSERT INTO audit.log (at, actor, action, detail)
SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute',
       'actor_' || g % 97,
       (ARRAY['grant','revoke','apply','backup'])[1 + g % 4],
       jsonb_build_object('event_id', g * 4, 'reason', 'ticket #' || g, 'ok', g % 9 <> 0)
  FROM generate_series(1, (:rows / 4)::bigint) AS g;
CREATE VIEW audit.recent AS
  SELECT id, at, actor, action FROM audit.log WHERE at > timestamptz '2024-06-01 00:00:00+00';
SQL
}

pgsb_main() {
  local cmd=${1:-} dir=${2:-}
  if [[ -z $cmd || -z $dir || $# -ne 2 ]]; then
    printf 'usage: %s start|stop|destroy DIR\n' "$0" >&2
    return 2
  fi
  case $cmd in
    start)
      pgsb_start "$dir"
      printf 'export PGHOST=%q PGUSER=%q PGPORT=%q\n' "$PGHOST" "$PGUSER" "$PGPORT"
      printf 'export PATH=%q\n' "$PATH"
      ;;
    stop) pgsb_stop "$dir" ;;
    destroy) pgsb_destroy "$dir" ;;
    *)
      printf 'usage: %s start|stop|destroy DIR\n' "$0" >&2
      return 2
      ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  pgsb_main "$@"
fi
