#!/usr/bin/env bash
# regression-db.sh: build PostgreSQL's own regression database inside a
# running server, as a hard corpus for pgward's backup/restore tests.
#
# Why it exists: pgward must round-trip everything a real database can hold.
# The database PostgreSQL's regression suite leaves behind ("regression") is
# what PostgreSQL's own pg_dump and pg_upgrade tests use for that: ~600
# tables, inheritance, partitions, rules, RLS policies, custom access methods,
# types, operators, large objects. We build it the way `make installcheck-
# parallel` does: pg_regress runs the parallel schedule against the server.
#
# Usage: scripts/regression-db.sh [DBNAME]        (default DBNAME: regression)
#   The server must already run (e.g. scripts/pg-sandbox.sh) and be reachable
#   through the libpq environment: PGHOST (a Unix socket dir), PGPORT, PGUSER
#   (a superuser). PostgreSQL 15 or later; tested with 15.
#   On success DBNAME holds what the suite leaves behind and the last line on
#   stdout reads "regression-db: database DBNAME ready: N tables, M objects in
#   T s"; logs go to stderr. Exit 0 even when some tests' output differs from
#   PostgreSQL's expected output (locale, build options): what counts is that
#   the objects exist. Failure (no database, or fewer than
#   PGWARD_REGRESSION_MIN_TABLES tables) is a one-line error and exit 1.
#
# Rebuild or reuse: by default DBNAME is dropped and built again (pg_regress
# drops it first; close other sessions on it). With PGWARD_REGRESSION_REUSE=1
# an existing DBNAME is kept when a previous run of this script completed it
# from the same source version (it leaves a COMMENT ON DATABASE as marker).
# The suite also creates and drops roles and a tablespace cluster-wide: do
# not build two regression databases in one cluster at the same time.
#
# What it needs, cached under ${PGWARD_CACHE_DIR:-/var/cache/pgward}/regress
# (world-readable: the server, running as user postgres, loads regress.so and
# reads the test data files from there; never inside the git work tree):
#   - the regression suite's source (src/test/regress and contrib/spi of the
#     Debian source package postgresql-<major>, same version as the installed
#     server), fetched with `apt-get source`; this needs a deb-src entry, which
#     the script adds as its own file /etc/apt/sources.list.d/pgward-deb-src.sources
#     mirroring the Debian deb entries (main component), and dpkg-dev;
#   - regress.so compiled from that source (plus autoinc.so and refint.so from
#     contrib/spi, linked from the server package when it ships them);
#   - pg_regress and the server headers from postgresql-server-dev-<major>,
#     installed pinned to the server's version (an unpinned install would
#     upgrade the running server's package).
# The stamp file in the cache holds the source version; a second run skips
# download and compilation, and on a machine that has everything it runs no
# apt command. Only the first run (or a version change) needs root.
#
# Environment: PGWARD_CACHE_DIR (cache root), PGWARD_REGRESSION_REUSE=1 (keep
# a completed DBNAME), PGWARD_REGRESSION_MIN_TABLES (default 400),
# PGWARD_REGRESSION_KEEP=1 (keep pg_regress's output dir: regression.diffs),
# PGWARD_PGBIN (server bin dir; default /usr/lib/postgresql/<major>/bin).
set -euo pipefail

log() { printf 'regression-db: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

SRC_KEEP=(src/test/regress contrib/spi COPYRIGHT) # parts of the source we cache
DEBSRC_FILE=/etc/apt/sources.list.d/pgward-deb-src.sources
FIRST_NORMAL_OID=16384 # objects with a lower OID come with initdb

psqlx() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
as_root() { [[ $EUID -eq 0 ]]; }

# --- the server --------------------------------------------------------------

# Sets MAJOR, SERVER_VERSION, MAX_CONN; dies unless a superuser session works.
check_server() {
  local out num super
  command -v psql >/dev/null 2>&1 || die "no psql on PATH: install postgresql-client or put the server's bin dir on PATH"
  out=$(psqlx -At -d postgres -c "SELECT current_setting('server_version_num'), current_setting('server_version'), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), current_setting('max_connections')" 2>&1) ||
    die "cannot connect to the server (PGHOST=${PGHOST:-unset} PGPORT=${PGPORT:-unset} PGUSER=${PGUSER:-unset}): ${out//$'\n'/ }; start one first, e.g. source scripts/pg-sandbox.sh; pgsb_start DIR"
  IFS='|' read -r num SERVER_VERSION super MAX_CONN <<<"$out"
  [[ $super == t ]] || die "role ${PGUSER:-$(id -un)} is not a superuser: set PGUSER to a superuser (e.g. postgres)"
  MAJOR=$((num / 10000))
  ((MAJOR >= 15)) || die "server is PostgreSQL $SERVER_VERSION; this script needs 15 or later (the suite's layout changed in 15)"
}

# Sets PGBIN (psql for pg_regress), PG_CONFIG, PG_REGRESS, INCDIR.
locate_tools() {
  PGBIN=${PGWARD_PGBIN:-/usr/lib/postgresql/$MAJOR/bin}
  [[ -x $PGBIN/psql ]] || die "no psql in $PGBIN: install postgresql-client-$MAJOR or set PGWARD_PGBIN"
  PG_CONFIG=$PGBIN/pg_config
  [[ -x $PG_CONFIG ]] || die "no pg_config in $PGBIN: install postgresql-client-$MAJOR or set PGWARD_PGBIN"
  PG_REGRESS="$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress"
  INCDIR=$("$PG_CONFIG" --includedir-server)
}

have_dev() { [[ -x $PG_REGRESS && -f $INCDIR/postgres.h ]]; }

# --- apt ---------------------------------------------------------------------

APT_UPDATED=0
apt_update() {
  [[ $APT_UPDATED -eq 1 ]] && return 0
  log "apt-get update"
  apt-get update -q >/dev/null || die "apt-get update failed: check the apt sources and the network to the Debian mirror"
  APT_UPDATED=1
}

need_root_for() {
  as_root || die "$1 is missing and installing it needs root: run scripts/regression-db.sh once as root (it caches what it fetches)"
  command -v apt-get >/dev/null 2>&1 || die "$1 is missing and there is no apt-get: provide it by hand"
}

# Version of an installed Debian package, or nothing.
pkg_version() {
  { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } | awk '$1 == "ii" {print $2}'
}

# The deb entries (main component) of Debian's own archives, as deb822
# deb-src stanzas. Reads deb822 .sources files and one-line .list files.
debian_src_stanzas() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f && $f != "$DEBSRC_FILE" ]] || continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" && comps ~ /(^| )main( |$)/ && uris != "") {
          n = split(uris, u, " "); keep = ""
          for (i = 1; i <= n; i++) if (u[i] ~ /\/debian(-security)?\/?$/) keep = keep (keep == "" ? "" : " ") u[i]
          if (keep != "") {
            printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\n", keep, suites
            if (signed != "") printf "Signed-By: %s\n", signed
            printf "\n"
          }
        }
        types = uris = suites = comps = signed = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[A-Za-z-]+:/ {
        key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val; else if (key == "uris") uris = val
        else if (key == "suites") suites = val; else if (key == "components") comps = val
        else if (key == "signed-by") signed = val; else if (key == "enabled") enabled = val
      }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '
      $1 != "deb" { next }
      {
        signed = ""; i = 2
        if ($2 ~ /^\[/) {
          while (i <= NF) { if ($i ~ /^signed-by=/) { signed = $i; sub(/^signed-by=/, "", signed); sub(/\]$/, "", signed) }
                            if ($i ~ /\]$/) { i++; break }; i++ }
        }
        uri = $i; suite = $(i + 1); main = 0
        for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
        if (main && uri ~ /\/debian(-security)?\/?$/) {
          printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\n", uri, suite
          if (signed != "") printf "Signed-By: %s\n", signed
          printf "\n"
        }
      }' "$f"
  done
}

have_src_index() { [[ -n $(apt-cache showsrc "postgresql-$MAJOR" 2>/dev/null | awk '/^Version:/') ]]; }

# Writes $DEBSRC_FILE unless apt already knows the source package or the
# file exists; the caller's next apt_update then fetches the source index.
write_deb_src() {
  if [[ ! -f $DEBSRC_FILE ]] && ! have_src_index; then
    local stanzas
    stanzas=$(debian_src_stanzas)
    [[ -n $stanzas ]] || die "no Debian deb entry (URI ending in /debian, component main) in /etc/apt/sources.list*: add a deb-src line for postgresql-$MAJOR's archive by hand"
    log "adding $DEBSRC_FILE (deb-src for Debian's main component)"
    {
      printf '# Added by pgward scripts/regression-db.sh: source packages for the\n'
      printf '# PostgreSQL regression suite. Safe to delete.\n'
      printf '%s\n' "$stanzas"
    } >"$DEBSRC_FILE"
    chmod 644 "$DEBSRC_FILE"
    APT_UPDATED=0
  fi
}

ensure_deb_src() {
  have_src_index && return 0
  write_deb_src
  apt_update
  have_src_index || die "apt knows no source package postgresql-$MAJOR even with $DEBSRC_FILE: check that file against the deb entries"
}

# Installs packages (NAME or NAME=VERSION) unless that would touch the
# running server's own packages (an upgrade would replace the binaries under
# it and, on Debian, restart it).
apt_install() {
  local plan touched aptlog
  export DEBIAN_FRONTEND=noninteractive
  apt_update
  plan=$(apt-get install -s -q --no-install-recommends "$@" 2>&1) ||
    die "apt cannot install $*: ${plan//$'\n'/ }"
  touched=$(awk '/^(Inst|Remv) postgresql-[0-9]+ / && /\[/ {print $2} /^Remv postgresql/ {print $2}' <<<"$plan" | sort -u | tr '\n' ' ')
  [[ -z $touched ]] || die "installing $* would upgrade or remove the server's packages (${touched% }); upgrade the server first (apt-get install postgresql-$MAJOR), restart it, then re-run"
  log "apt-get install $*"
  aptlog=$(mktemp "${TMPDIR:-/tmp}/pgward-apt.XXXXXX")
  apt-get install -y -q --no-install-recommends "$@" >"$aptlog" 2>&1 || {
    tail -n 10 "$aptlog" >&2
    die "apt-get install $* failed (log: $aptlog): fix the apt error and re-run"
  }
  rm -f "$aptlog"
}

# postgresql-server-dev-<major> gives pg_regress and the server headers. It
# depends only on client packages and postgresql-common (which any server
# install already has), so it creates no cluster and starts no service.
ensure_dev() {
  have_dev && return 0
  need_root_for "postgresql-server-dev-$MAJOR (pg_regress and server headers)"
  local pkg="postgresql-server-dev-$MAJOR" ver
  ver=$(pkg_version "postgresql-$MAJOR")
  if [[ -n $ver ]] && apt_update && apt-cache madison "$pkg" 2>/dev/null | awk -v v="$ver" '$3 == v {f = 1} END {exit !f}'; then
    apt_install "$pkg=$ver"
  else
    apt_install "$pkg"
  fi
  have_dev || die "$pkg installed but $PG_REGRESS or $INCDIR/postgres.h is missing: check pg_config ($PG_CONFIG)"
}

# --- the cache ---------------------------------------------------------------

# The source version we want: the installed server package's, else whatever
# apt offers ("candidate").
wanted_version() {
  local v
  v=$(pkg_version "postgresql-$MAJOR")
  printf '%s\n' "${v:-candidate}"
}

cache_valid() {
  local key=$1
  [[ -f $CACHE/stamp ]] && grep -qxF "key: $key" "$CACHE/stamp" &&
    [[ -f $CACHE/src/src/test/regress/parallel_schedule ]] &&
    [[ -r $CACHE/lib/regress.so && -r $CACHE/lib/autoinc.so && -r $CACHE/lib/refint.so ]]
}

# Downloads and unpacks the Debian source package into $1/src; prints its version.
fetch_source() {
  local stage=$1 want=$2 pkg="postgresql-$MAJOR" dl=$1/dl dir spec
  command -v dpkg-source >/dev/null 2>&1 || apt_install dpkg-dev
  ensure_deb_src
  mkdir -p "$dl"
  # apt downloads as the _apt user when it can write there (no warning).
  chown _apt "$dl" 2>/dev/null || true
  spec=$pkg
  if [[ $want != candidate ]]; then
    if apt-cache showsrc "$pkg" | awk -v v="$want" '/^Version:/ && $2 == v {f = 1} END {exit !f}'; then
      spec="$pkg=$want"
    else
      log "warning: source $pkg $want is no longer on the mirror; using the newest $pkg source"
    fi
  fi
  log "apt-get source $spec"
  (cd "$dl" && apt-get source -q "$spec") >"$stage/apt-source.log" 2>&1 || {
    tail -n 5 "$stage/apt-source.log" >&2
    die "apt-get source $spec failed (log above): check $DEBSRC_FILE and the network to the Debian mirror"
  }
  dir=$(find "$dl" -mindepth 1 -maxdepth 1 -type d -name "postgresql-$MAJOR-*" | head -n 1)
  [[ -n $dir && -f $dir/src/test/regress/parallel_schedule ]] || die "apt-get source $spec gave no src/test/regress: unexpected source layout in $dl"
  mkdir -p "$stage/src"
  local p
  for p in "${SRC_KEEP[@]}"; do
    mkdir -p "$stage/src/$(dirname "$p")"
    mv "$dir/$p" "$stage/src/$p"
  done
  dpkg-parsechangelog -l "$dir/debian/changelog" -S Version
  rm -rf "$dl"
}

# Compiles one C module against the server headers.
compile_module() {
  local src=$1 out=$2
  "${CC:-cc}" -O2 -fPIC -shared -Wall -Wno-unused -I"$INCDIR" -o "$out" "$src" >"$out.log" 2>&1 || {
    tail -n 20 "$out.log" >&2
    die "compiling $src failed (log above): is postgresql-server-dev-$MAJOR installed and a C compiler (gcc) present?"
  }
  rm -f "$out.log"
}

build_libs() {
  local stage=$1 m pkglib
  mkdir -p "$stage/lib"
  log "compiling regress.so"
  compile_module "$stage/src/src/test/regress/regress.c" "$stage/lib/regress.so"
  pkglib=$("$PG_CONFIG" --pkglibdir)
  for m in autoinc refint; do
    if [[ -r $pkglib/$m.so ]]; then
      ln -s "$pkglib/$m.so" "$stage/lib/$m.so"
    else
      log "compiling $m.so (the server package ships none)"
      compile_module "$stage/src/contrib/spi/$m.c" "$stage/lib/$m.so"
    fi
  done
}

# Makes sure $CACHE holds the suite's source and the compiled modules.
ensure_cache() {
  local key stage srcver
  key="postgresql-$MAJOR $(wanted_version)"
  if cache_valid "$key"; then
    log "cache: $CACHE ($(sed -n 's/^source: //p' "$CACHE/stamp"))"
    return 0
  fi
  need_root_for "the cached regression suite ($CACHE)"
  command -v "${CC:-cc}" >/dev/null 2>&1 || apt_install gcc libc6-dev
  mkdir -p "$CACHE"
  chmod 755 "$CACHE" "$(dirname "$CACHE")"
  # One builder at a time; a waiting one finds the cache ready.
  exec 9>"$CACHE/.lock"
  flock 9
  if cache_valid "$key"; then
    flock -u 9
    return 0
  fi
  stage=$(mktemp -d "$CACHE/.build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$stage'" EXIT
  srcver=$(fetch_source "$stage" "${key#* }")
  build_libs "$stage"
  chmod -R a+rX "$stage"
  rm -rf "$CACHE/src" "$CACHE/lib" "$CACHE/stamp"
  mv "$stage/src" "$stage/lib" "$CACHE/"
  printf 'key: %s\nsource: postgresql-%s %s\nbuilt: %s\n' "$key" "$MAJOR" "$srcver" "$(date -u +%FT%TZ)" >"$CACHE/stamp.new"
  chmod 644 "$CACHE/stamp.new"
  mv "$CACHE/stamp.new" "$CACHE/stamp"
  rm -rf "$stage"
  trap - EXIT
  flock -u 9
  log "cache: $CACHE (postgresql-$MAJOR $srcver, source and modules)"
}

# --- the database ------------------------------------------------------------

# psql interpolates variables (:'db') only in what it reads, not in -c.
db_exists() { [[ $(psqlx -At -d postgres -v db="$DB" <<<"SELECT count(*) FROM pg_database WHERE datname = :'db'") == 1 ]]; }

marker() { printf 'pgward regression corpus: %s' "$(sed -n 's/^source: //p' "$CACHE/stamp")"; }

db_marker_ok() {
  local got
  got=$(psqlx -At -d postgres -v db="$DB" <<<"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :'db'")
  [[ $got == "$(marker)" ]]
}

table_count() {
  psqlx -At -d "$DB" -c "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'"
}

# Objects the suite created: rows with OID >= 16384 in the database's own
# catalogs (relations incl. indexes and TOAST, functions, types, constraints,
# rules, triggers, policies, operators, large objects, ...; not enum labels).
object_count() {
  psqlx -At -d "$DB" -v first="$FIRST_NORMAL_OID" <<'SQL'
SELECT sum((xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM pg_catalog.%I WHERE oid >= %s', c.relname, :first),
                           false, true, '')))[1]::text::bigint)
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'oid'
 WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'
   AND NOT c.relisshared AND c.relname <> 'pg_enum';
SQL
}

# Runs the parallel schedule as `make installcheck-parallel` would, against
# the caller's server. pg_regress drops and creates DB itself. Sets FAILED.
run_pg_regress() {
  local out rc=0 regress_dir=$CACHE/src/src/test/regress summary
  out=$(mktemp -d "${TMPDIR:-/var/tmp}/pgward-regress.XXXXXX")
  OUTDIR=$out
  # The server (OS user postgres) writes COPY/lo_export files to
  # $out/results and reads them back: it must get in and write there.
  chmod 711 "$out"
  mkdir -m 777 "$out/results"
  local args=(
    --inputdir="$regress_dir" --outputdir="$out" --dlpath="$CACHE/lib"
    --bindir="$PGBIN" --schedule="$regress_dir/parallel_schedule"
    --max-concurrent-tests=20 --dbname="$DB" --no-locale
  )
  [[ -n ${PGHOST:-} ]] && args+=(--host="$PGHOST")
  [[ -n ${PGPORT:-} ]] && args+=(--port="$PGPORT")
  [[ -n ${PGUSER:-} ]] && args+=(--user="$PGUSER")
  # A group of the schedule runs up to 20 sessions at once.
  if ((MAX_CONN < 30)); then args+=(--max-connections=$((MAX_CONN > 12 ? MAX_CONN - 10 : 1))); fi
  log "pg_regress: parallel schedule into database $DB (output: $out)"
  (cd "$out" && "$PG_REGRESS" "${args[@]}") >"$out/pg_regress.log" 2>&1 || rc=$?
  summary=$({ grep -E 'tests (passed|failed)|failed test\(s\) ignored' "$out/pg_regress.log" || true; } | sed 's/^[ =]*//; s/[ =]*$//' | tail -n 1)
  FAILED=$(grep -cE '\.\.\. FAILED' "$out/pg_regress.log" || true)
  if [[ $rc -eq 0 ]]; then
    log "pg_regress: ${summary:-done}"
  elif [[ $rc -eq 1 ]]; then
    log "pg_regress: ${summary:-some tests failed} (output differs from PostgreSQL's expected files; harmless for a corpus; PGWARD_REGRESSION_KEEP=1 keeps regression.diffs)"
  else
    # 2: it could not set up (drop/create the database, read the schedule);
    # an old DB might still be there, so this is a failure.
    local cause
    PGWARD_REGRESSION_KEEP=1
    cause=$({ grep -m 1 -E 'ERROR|FATAL|could not|error' "$out/pg_regress.log" || true; } | sed 's/^[[:space:]]*//')
    die "pg_regress stopped (exit $rc): ${cause:-see $out/pg_regress.log}; if it could not drop $DB, close the other sessions on it (log: $out/pg_regress.log)"
  fi
}

cleanup_outdir() {
  [[ -n ${OUTDIR:-} && -d $OUTDIR ]] || return 0
  if [[ ${PGWARD_REGRESSION_KEEP:-0} == 1 ]]; then
    log "kept pg_regress output: $OUTDIR"
  else
    rm -rf -- "$OUTDIR"
  fi
}

# Wall-clock milliseconds, and seconds since T0 with one decimal.
now_ms() {
  local t=${EPOCHREALTIME:-}
  if [[ -n $t ]]; then
    t=${t/,/.}
    printf '%s\n' "$((${t%.*} * 1000 + 10#${t#*.} / 1000))"
  else
    printf '%s\n' "$((SECONDS * 1000))"
  fi
}
elapsed() {
  local ms=$(($(now_ms) - T0))
  printf '%d.%d\n' "$((ms / 1000))" "$((ms % 1000 / 100))"
}

main() {
  [[ $# -le 1 ]] || {
    printf 'usage: %s [DBNAME]\n' "$0" >&2
    exit 2
  }
  case ${1:-} in -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  esac
  DB=${1:-regression}
  [[ $DB =~ ^[A-Za-z_][A-Za-z0-9_-]{0,62}$ ]] || die "database name '$DB' must be letters, digits, _ or - (at most 63)"
  local tables objects min=${PGWARD_REGRESSION_MIN_TABLES:-400}
  T0=$(now_ms)
  umask 022
  CACHE=${PGWARD_CACHE_DIR:-/var/cache/pgward}/regress

  check_server
  log "server: PostgreSQL $SERVER_VERSION at ${PGHOST:-default socket}:${PGPORT:-5432}"
  locate_tools
  # A cold cache needs the source index too: add the deb-src entry before
  # the first apt-get update, so that one update serves both.
  if ! cache_valid "postgresql-$MAJOR $(wanted_version)" && as_root && command -v apt-get >/dev/null 2>&1; then
    write_deb_src
  fi
  if ! have_dev; then ensure_dev; fi
  ensure_cache

  if [[ ${PGWARD_REGRESSION_REUSE:-0} == 1 ]] && db_exists; then
    if db_marker_ok && tables=$(table_count) && ((tables >= min)); then
      objects=$(object_count)
      log "reusing database $DB (PGWARD_REGRESSION_REUSE=1)"
      printf 'regression-db: database %s ready: %s tables, %s objects in %s s\n' "$DB" "$tables" "$objects" "$(elapsed)"
      return 0
    fi
    log "not reusing database $DB: no complete build from $(sed -n 's/^source: //p' "$CACHE/stamp") (marker comment missing); rebuilding"
  fi

  FAILED=0
  OUTDIR=""
  trap cleanup_outdir EXIT
  run_pg_regress
  db_exists || {
    PGWARD_REGRESSION_KEEP=1
    die "pg_regress left no database $DB: see $OUTDIR/pg_regress.log (is another session connected to $DB, or is the server short of connections?)"
  }
  tables=$(table_count)
  if ((tables < min)); then
    PGWARD_REGRESSION_KEEP=1
    die "database $DB holds only $tables tables (want >= $min): the suite broke early; see $OUTDIR/pg_regress.log and $OUTDIR/regression.diffs"
  fi
  ((FAILED == 0)) || log "$FAILED tests differ from the expected output (information only: the objects exist)"
  psqlx -d postgres -c "COMMENT ON DATABASE \"$DB\" IS '$(marker)'"
  objects=$(object_count)
  printf 'regression-db: database %s ready: %s tables, %s objects in %s s\n' "$DB" "$tables" "$objects" "$(elapsed)"
}

main "$@"
