#!/usr/bin/env bash
# bench/verify.sh: how fast does `pgward verify` prove a backup intact?
#
# Why it exists: verify re-reads a backup's artifact, decrypts and
# decompresses it, and checks every digest, the archive's structure and
# every table's rows and fingerprints against the manifest. It should run at
# the speed of the disk, not of its checks: targets are >= 1000 MB/s of
# archive (the uncompressed pg_dump output the manifest records) for an
# unencrypted backup and >= 400 MB/s for an encrypted one, on one core if it
# gets there. It is a benchmark, not a test: it prints figures and PASS/MISS,
# and exits 0 when every figure could be measured (2 when pgward could not be
# built or run).
#
# Usage: bench/verify.sh [--scale N] [--runs N] [--keep] [--dir DIR]
#   --scale N  pgbench scale (default 35, ~1.1 GB; see bench/backup.sh)
#   --runs N   runs of each command, alternating (default 3); medians shown
#   --keep     keep the cluster dir (stopped) for re-runs
#   --dir DIR  cluster dir to use; a loaded sandbox from an earlier --keep run
#              of any bench script is reused as it is
# Environment: PGWARD_BENCH_BIN measures that pgward binary instead of
# building one (for before/after tables).
#
# Measured per run, in this order (the artifacts are in the page cache, as
# right after a backup; the first two are references, not targets):
#   cat artifact > /dev/null          reading the stored bytes
#   zstd -d | sha256sum               decompressing and hashing, stock tools
#   pgward verify (plain)             a backup taken without encryption
#   pgward verify (encrypted)         the same database encrypted to a key made
#                                     by `pgward key generate`, verified with
#                                     the secret key
# MB/s = the manifest's archive bytes / the median wall time. Peak RSS is
# GNU time's %M (verify starts no child).
set -euo pipefail
export LC_NUMERIC=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
bench_args "${BASH_SOURCE[0]}" 35 "$@"
bench_dir
out="$dir/out-verify"

cleanup() {
  local rc=$?
  rm -rf -- "$out"
  bench_leave_dir bench/verify.sh
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
mkdir -p "$out/keys"
chmod 700 "$out"
printf 'pgward: %s; cores: %s\n\n' "$pgward" "$(nproc)"

printf 'bench verify passphrase\n' >"$out/keys/passphrase"
"$pgward" key generate --out "$out/keys/bench" --passphrase-file "$out/keys/passphrase" >/dev/null
fpr=$("$pgward" --json key show "$out/keys/bench.pub.asc" |
  sed -n 's/^  "fingerprint": "\([0-9A-F]*\)",$/\1/p')
cat >"$out/encrypted.toml" <<EOF
[[encryption.recipient]]
certificate = "$out/keys/bench.pub.asc"
fingerprint = "$fpr"
[decryption]
secret-key = "$out/keys/bench.sec.asc"
passphrase-file = "$out/keys/passphrase"
EOF

log "pgward backup, plain and encrypted (the backups every run below verifies)"
"$pgward" --repo "$out/plain" backup --dbname demo >/dev/null
"$pgward" --config "$out/encrypted.toml" --repo "$out/encrypted" backup --dbname demo >/dev/null
plain_artifact=$(find "$out/plain/backups" -name '*.dump.zst')
encrypted_artifact=$(find "$out/encrypted/backups" -name '*.dump.zst.gpg')
archive_bytes=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["archive"]["bytes"])' \
  "$(find "$out/plain/backups" -name '*.manifest.json')")
[[ -n $archive_bytes && -n $plain_artifact && -n $encrypted_artifact ]] || {
  log "the backups to verify were not made"
  exit 2
}
printf 'archive: %s bytes; artifacts: %s bytes (plain), %s bytes (encrypted)\n\n' \
  "$archive_bytes" "$(stat -c %s "$plain_artifact")" "$(stat -c %s "$encrypted_artifact")"

keys=(cat zstd plain encrypted)
declare -A label=(
  [cat]="cat artifact > /dev/null"
  [zstd]="zstd -d < artifact | sha256sum"
  [plain]="pgward verify (plain)"
  [encrypted]="pgward verify (encrypted)"
)
declare -A rss_kib=()
problem=""
timed() { # KEY COMMAND...: one run under GNU time
  local k=$1 s r
  shift
  if ! /usr/bin/time -f '%e %M' -o "$out/time" "$@" >/dev/null 2>"$out/err"; then
    log "${label[$k]} failed:"
    sed 's/^/    /' "$out/err" >&2
    problem="${label[$k]} failed"
    return 1
  fi
  read -r s r <"$out/time"
  bench_add "$k" "$s"
  if [[ -z ${rss_kib[$k]:-} || $r -gt ${rss_kib[$k]} ]]; then rss_kib[$k]=$r; fi
  printf '  %-40s %8.2fs %10s KiB RSS\n' "${label[$k]}" "$s" "$r"
}

for ((pass = 1; pass <= runs; pass++)); do
  printf 'run %s of %s\n' "$pass" "$runs"
  timed cat cat "$plain_artifact" || true
  timed zstd bash -c 'zstd -q -d -c "$1" | sha256sum' _ "$plain_artifact" || true
  timed plain "$pgward" --repo "$out/plain" verify latest || true
  timed encrypted "$pgward" --config "$out/encrypted.toml" --repo "$out/encrypted" verify latest || true
done

mbps() { if [[ -n ${1:-} ]]; then awk -v b="$archive_bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / s }'; fi; }
printf '\n%-40s %9s %12s %12s %10s\n' command median range "MB/s archive" "RSS MiB"
for k in "${keys[@]}"; do
  m=$(bench_median "$k")
  printf '%-40s %9s %12s %12s %10s\n' "${label[$k]}" "${m:-n/a}" "$(bench_range "$k")" \
    "$(mbps "$m")" "$(awk -v k="${rss_kib[$k]:-0}" 'BEGIN { printf "%.1f", k / 1024 }')"
done
printf '\n'
bench_verdict "pgward verify (plain), MB/s of archive" "$(mbps "$(bench_median plain)")" 1000 ">="
bench_verdict "pgward verify (encrypted), MB/s of archive" "$(mbps "$(bench_median encrypted)")" 400 ">="
bench_verdict "pgward verify peak RSS, MiB" \
  "$(awk -v a="${rss_kib[plain]:-0}" -v b="${rss_kib[encrypted]:-0}" 'BEGIN { m = a > b ? a : b; if (m) printf "%.1f", m / 1024 }')" 64
if [[ -n $problem ]]; then
  log "$problem"
  exit 2
fi
