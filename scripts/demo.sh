#!/usr/bin/env bash
# demo.sh: the README's first command. Sets everything up and runs pgward's
# main job end to end on a throwaway local PostgreSQL with sample data:
# install deps, build, start a sandbox cluster, load ~250 MB of sample data,
# then `pgward backup`, `pgward verify latest`, `pgward drill latest` (restore
# into a scratch database and prove every table came back), and the same
# encrypted to a key made by `pgward key generate`, restored into a new
# database with `pgward restore`; `pgward list` shows the drill verdicts.
#
# Why it exists: one command that proves, on a fresh machine, that pgward
# backs up a real database, can verify what it wrote and proves it restores
# byte for byte. Nothing outside a
# temp dir is touched; the cluster listens on a Unix socket only (no TCP
# port) and is stopped and removed on exit, failure included.
#
# Usage: scripts/demo.sh [--keep]
#   --keep   leave the temp dir (stopped cluster, repository) for inspection
# Exits non-zero as soon as any step (and so any pgward command) fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/pg-sandbox.sh
source "$root/scripts/pg-sandbox.sh"

keep=0
for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    -h | --help)
      awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      printf 'demo: unknown argument %s (try --help)\n' "$arg" >&2
      exit 2
      ;;
  esac
done

t_start=$EPOCHREALTIME
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME CMD...: run one step, show its output, print how long it took;
# on failure say which step failed and exit with its status.
step() {
  local name=$1 t0=$EPOCHREALTIME rc=0
  shift
  printf '\n==> %s\n' "$name"
  "$@" || rc=$?
  if [[ $rc -ne 0 ]]; then
    printf '==> FAILED: %s (exit %d, after %ss)\n' "$name" "$rc" "$(elapsed_since "$t0")" >&2
    exit "$rc"
  fi
  printf '==> done: %s (%ss)\n' "$name" "$(elapsed_since "$t0")"
}

work=""
cleanup() {
  local rc=$?
  [[ -n $work ]] || return 0
  if [[ $keep -eq 1 ]]; then
    pgsb_stop "$work/pg"
    printf '\ndemo: kept %s (cluster stopped; restart with scripts/pg-sandbox.sh start %s)\n' \
      "$work" "$work/pg" >&2
  else
    pgsb_stop "$work/pg"
    rm -rf -- "$work"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# cargo may live in rustup's default place without being on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
  PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

step "install dependencies (scripts/install-deps.sh)" "$root/scripts/install-deps.sh"
step "build pgward (cargo build --release)" cargo build --release --manifest-path "$root/Cargo.toml"
pgward="$root/target/release/pgward"
[[ -x $pgward ]] || {
  printf 'demo: %s was not built\n' "$pgward" >&2
  exit 1
}

work=$(pgsb_mktemp pgward-demo)
repo="$work/repo"
mkdir -p "$repo"
step "start a throwaway PostgreSQL in $work/pg (Unix socket only)" pgsb_start "$work/pg"

load_demo() {
  pgsb_load_sample demo 8 200000 &&
    pgsb_psql -d demo -c 'VACUUM ANALYZE' &&
    pgsb_psql -d demo -At -c "SELECT 'database demo: ' || pg_size_pretty(pg_database_size('demo'))
      || ', ' || (SELECT count(*) FROM public.events) || ' events, '
      || (SELECT count(*) FROM public.pgbench_accounts) || ' pgbench accounts'"
}
step "load sample data into database demo (pgbench -s 8, public.events, audit.log)" load_demo

t_backup=$EPOCHREALTIME
step "pgward backup" "$pgward" --repo "$repo" backup --dbname demo
backup_secs=$(elapsed_since "$t_backup")
step "pgward verify latest" "$pgward" --repo "$repo" verify latest
step "pgward drill latest (restore into a scratch database, prove every table)" \
  "$pgward" --repo "$repo" drill latest

# Encrypted: a keypair made by pgward, the public half as the recipient,
# then a backup that no one without the secret key can read, and a verify
# that decrypts it (the passphrase comes from a file, never from argv).
keys="$work/keys"
mkdir -m 700 "$keys"
printf 'demo passphrase, not for production\n' >"$keys/passphrase"
chmod 600 "$keys/passphrase"
step "pgward key generate" "$pgward" key generate --out "$keys/demo" --user-id "pgward demo" \
  --passphrase-file "$keys/passphrase"
fpr=$("$pgward" --json key show "$keys/demo.pub.asc" |
  sed -n 's/^  "fingerprint": "\([0-9A-F]*\)",$/\1/p')
[[ -n $fpr ]] || {
  printf 'demo: no fingerprint from pgward key show\n' >&2
  exit 1
}
printf '[[encryption.recipient]]\ncertificate = "%s"\nfingerprint = "%s"\n' \
  "$keys/demo.pub.asc" "$fpr" >"$work/encrypted.toml"
step "pgward backup (encrypted to $fpr)" "$pgward" --config "$work/encrypted.toml" --repo "$repo" \
  backup --dbname demo
step "pgward verify latest (stored bytes only: no key given)" "$pgward" --repo "$repo" verify latest
step "pgward verify latest --secret-key (decrypts and checks everything)" "$pgward" --repo "$repo" \
  verify latest --secret-key "$keys/demo.sec.asc" --passphrase-file "$keys/passphrase"
step "pgward restore latest --to demo_restored (decrypts, restores, proves)" "$pgward" --repo "$repo" \
  restore latest --to demo_restored --secret-key "$keys/demo.sec.asc" --passphrase-file "$keys/passphrase"
step "pgward list (with each backup's last drill)" "$pgward" --repo "$repo" list
step "pgward log --verify (the journal of every run above, hash-chained)" "$pgward" --repo "$repo" log --verify
step "pgward status (fresh and proven? exit 0 only when every objective holds)" "$pgward" --repo "$repo" status

# The repository layout is pgward's business: find the newest file whose name
# says it is a manifest rather than assume a path.
manifest=$(find "$repo" -type f -iname '*manifest*' -printf '%T@ %p\n' 2>/dev/null |
  sort -n | tail -n 1 | cut -d' ' -f2-)
db_bytes=$(pgsb_psql -d demo -At -c "SELECT pg_database_size('demo')")
repo_bytes=$(du -sb "$repo" | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

kept_note=" (removed on exit; --keep keeps it)"
[[ $keep -eq 0 ]] || kept_note=""
printf '\nmanifest: %s%s\n' "${manifest:-(no file named *manifest* under $repo)}" "$kept_note"
printf 'summary: backed up database demo (%s) into %s (%s, %s files) in %ss, verified, drilled; then encrypted, verified and restored into demo_restored; total %ss\n' \
  "$(mib "$db_bytes")" "$repo" "$(mib "$repo_bytes")" "$(find "$repo" -type f | wc -l)" \
  "$backup_secs" "$(elapsed_since "$t_start")"
