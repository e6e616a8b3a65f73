#!/usr/bin/env bash
# install-deps.sh: give a fresh Debian machine what pgward's demo, tests and
# benchmark need, and nothing else.
#
# Why it exists: nothing installed by hand survives a move to a new machine,
# so the project installs its own tools. Idempotent: it checks first, and on a
# machine that has everything it runs no apt command at all.
#
# Installs, only when missing:
#   - PostgreSQL server binaries (postgresql-<major>, /usr/lib/postgresql/<major>/bin),
#     which also bring the client (psql, pg_dump, pg_restore) and pgbench;
#   - PostGIS for that server (postgresql-<major>-postgis-3), for the tests;
#   - zstd, gnupg (gpg), GNU time (/usr/bin/time -v for peak RSS), a C compiler
#     (for -sys crates), libclang-dev (bindgen, for PostgreSQL's SQL parser);
#   - the tests' S3 server (tools/s3-test-server), with cargo install (after
#     the Rust check).
# It never starts a service: Debian's postgresql package would create and start
# a cluster "<major>/main" on port 5432; we forbid service starts with a
# temporary policy-rc.d (exit 101) and turn off the main-cluster creation with a
# temporary createcluster.d drop-in; any cluster the install still created is
# dropped. Finally it checks that a Rust toolchain (cargo) exists.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

have_pg_server() {
  local d
  if [[ -n ${PGWARD_PGBIN:-} && -x ${PGWARD_PGBIN}/initdb ]]; then return 0; fi
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb && -x $d/postgres && -x $d/pg_ctl && -x $d/pg_dump && -x $d/pgbench ]] && return 0
  done
  return 1
}

missing=()
need_pg=0
have_pg_server || need_pg=1
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
[[ -x /usr/bin/time ]] || missing+=(time)
# The tests trace pg_dump's file opens to prove no plaintext temp file.
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
# The TLS tests make a throwaway CA and certificates with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The tests back up and restore databases that use PostGIS (contrib's
# extensions come with the server package): its package for every server
# major installed here.
for d in /usr/lib/postgresql/*/bin; do
  [[ -x $d/postgres ]] || continue
  major=$(basename "$(dirname "$d")")
  [[ -f /usr/share/postgresql/$major/extension/postgis.control ]] ||
    missing+=("postgresql-$major-postgis-3")
done
# `apply` splits SQL with PostgreSQL's own parser (the pg_query crate builds
# libpg_query and runs bindgen, which needs libclang).
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)

if [[ $need_pg -eq 0 && ${#missing[@]} -eq 0 ]]; then
  log "system packages: all present (nothing to install)"
else
  if [[ $EUID -ne 0 ]]; then
    [[ $need_pg -eq 1 ]] && missing+=(postgresql-server)
    die "missing: ${missing[*]}; run as root to install"
  fi
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install PostgreSQL server, zstd, gnupg, GNU time, strace, openssl and libclang-dev by hand"
  export DEBIAN_FRONTEND=noninteractive
  log "apt-get update"
  apt-get update -q >/dev/null

  if [[ $need_pg -eq 1 ]]; then
    # The server package: postgresql-15 when the archive has it, else the
    # major that the `postgresql` metapackage depends on, else the highest.
    pgpkg=""
    if [[ -n $(apt-cache policy postgresql-15 2>/dev/null | awk '/Candidate:/ && $2 != "(none)"') ]]; then
      pgpkg=postgresql-15
    else
      pgpkg=$(apt-cache depends postgresql 2>/dev/null |
        awk '/Depends: postgresql-[0-9]+$/ {print $2; exit}')
      if [[ -z $pgpkg ]]; then
        pgpkg=$(apt-cache search --names-only '^postgresql-[0-9]+$' | awk '{print $1}' | sort -V | tail -n 1)
      fi
    fi
    [[ -n $pgpkg ]] || die "apt knows no postgresql-<major> package"
    missing+=("$pgpkg" "$pgpkg-postgis-3")
  fi

  # No service may start while we install (Debian's invoke-rc.d and
  # deb-systemd-invoke both ask policy-rc.d), and postgresql-common must not
  # create the <major>/main cluster. Both are undone on exit, even on failure.
  policy=/usr/sbin/policy-rc.d
  policy_backup=""
  ccdir=/etc/postgresql-common/createcluster.d
  ccdropin=$ccdir/00-pgward-no-main-cluster.conf
  ccdir_made=0
  [[ -d $ccdir ]] || ccdir_made=1
  restore() {
    rm -f "$policy" "$ccdropin"
    if [[ -n $policy_backup ]]; then mv -f "$policy_backup" "$policy"; fi
    if [[ $ccdir_made -eq 1 ]]; then rmdir "$ccdir" 2>/dev/null || true; fi
  }
  if [[ -e $policy ]]; then
    policy_backup=$(mktemp /usr/sbin/.policy-rc.d.pgward.XXXXXX)
    cp -p "$policy" "$policy_backup"
  fi
  trap restore EXIT
  printf '#!/bin/sh\n# pgward install-deps.sh: no service starts during install\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  mkdir -p "$ccdir"
  printf '# pgward install-deps.sh (temporary)\ncreate_main_cluster = off\n' >"$ccdropin"

  clusters_before=""
  if command -v pg_lsclusters >/dev/null 2>&1; then
    clusters_before=$(pg_lsclusters -h 2>/dev/null | awk '{print $1 "/" $2}' || true)
  fi

  log "apt-get install ${missing[*]}"
  apt-get install -y -q --no-install-recommends "${missing[@]}"

  # Belt and braces: drop any cluster this install created (it would own
  # port 5432 and start with the machine).
  if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver name _; do
      [[ -n $ver ]] || continue
      if ! grep -qxF "$ver/$name" <<<"$clusters_before"; then
        log "dropping cluster $ver/$name created by the package install"
        pg_dropcluster --stop "$ver" "$name"
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
  restore
  trap - EXIT
  have_pg_server || die "PostgreSQL server binaries still missing after install"
  log "installed: ${missing[*]}"
fi

# Something listening on TCP 5432 is not ours to stop, but worth a warning:
# pgward's scripts never use TCP, yet a stray cluster confuses people.
if awk 'NR > 1 && $2 ~ /:1538$/ && $4 == "0A" {found = 1} END {exit !found}' \
  /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
  log "warning: something listens on TCP port 5432 (not started by this script)"
fi

# Rust: cargo on PATH, or rustup's default place.
cargo=cargo
if command -v cargo >/dev/null 2>&1; then
  log "rust: $(cargo --version)"
elif [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
  cargo=${CARGO_HOME:-$HOME/.cargo}/bin/cargo
  log "rust: $("$cargo" --version) (add ${CARGO_HOME:-$HOME/.cargo}/bin to PATH)"
else
  die "no Rust toolchain: cargo is neither on PATH nor in ${CARGO_HOME:-$HOME/.cargo}/bin; install one with rustup (https://rustup.rs), then re-run"
fi

# The tests' S3 server: tools/s3-test-server (s3s-fs from crates.io, a real
# S3-protocol server that checks SigV4 signatures, with the two things a real
# service has and s3s-fs 0.14 lacks: a list of open multipart uploads, and
# atomic conditional writes). Installed into cargo's bin dir, where the tests
# look for it; its build is kept in target/s3-test-server, so a second install
# only checks that it is current.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log "cargo install pgward-s3-test-server (the tests' S3 server; minutes the first time)"
"$cargo" install --path "$root/tools/s3-test-server" --locked --quiet \
  --target-dir "$root/target/s3-test-server"
