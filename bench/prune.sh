#!/usr/bin/env bash
# bench/prune.sh: how long `pgward prune --dry-run` takes to plan over a
# repository of N backups (default 10 000; target: under 1 s), against
# the floor of listing the same repository (`pgward list`), which reads
# and checks every manifest too. The backups are copies of one real
# backup's manifest, one per hour back in time, each with its own id and
# digest (artifacts are not needed to plan).
#
# usage: bench/prune.sh [--count N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
count=10000
if [[ ${1:-} == --count ]]; then count=$2; fi
# shellcheck source=scripts/pg-sandbox.sh
source "$root/scripts/pg-sandbox.sh"
log() { printf 'bench: %s\n' "$*" >&2; }

log "building pgward (release)"
(cd "$root" && cargo build --release --locked -q -p pgward-cli)
pgward=$root/target/release/pgward
work=$(mktemp -d /var/tmp/pgward-bench-prune.XXXXXX)
chmod 755 "$work"
dir=$(pgsb_mktemp prune)
cleanup() { pgsb_destroy "$dir"; rm -rf "$work"; }
trap cleanup EXIT
pgsb_start "$dir" >/dev/null
psql -qX -d postgres -c "CREATE DATABASE app" -c "\\c app" \
  -c "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g" >/dev/null
repo=$work/repo
"$pgward" --repo "$repo" --quiet backup -d app
log "cloning the manifest into $count backups"
python3 - "$repo" "$count" <<'PY'
import hashlib, json, os, sys, datetime
repo, count = sys.argv[1], int(sys.argv[2])
backups = os.path.join(repo, "backups")
name = next(n for n in os.listdir(backups) if n.endswith(".manifest.json"))
seed = json.load(open(os.path.join(backups, name)))
start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
key = seed["id"][17:-5]
for i in range(count):
    t = start - datetime.timedelta(hours=i + 1)
    m = json.loads(json.dumps(seed))
    m["id"] = f"{t:%Y%m%dT%H%M%SZ}-{key}-{i % 10000:04x}"
    m["started-at"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    m["finished-at"] = m["started-at"]
    m["artifact"]["file"] = m["id"] + m["artifact"]["file"][len(seed["id"]):]
    m.pop("manifest-digest", None)
    canon = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    m["manifest-digest"] = hashlib.sha256(canon.encode()).hexdigest()
    path = os.path.join(backups, m["id"] + ".manifest.json")
    with open(path, "w") as f:
        json.dump(m, f)
    os.chmod(path, 0o600)
PY
cat >"$work/pgward.toml" <<TOML
[policy]
keep-last = 5
keep-hourly = 48
keep-daily = 30
keep-weekly = 12
keep-monthly = 24
time-zone = "UTC"
TOML
listed=$("$pgward" --repo "$repo" --json list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["backups"]))')
[[ $listed -eq $((count + 1)) ]] || { log "only $listed backups listed (damaged clones?)"; exit 1; }
python3 - "$pgward" "$repo" "$work/pgward.toml" "$((count + 1))" <<'PY'
import statistics, subprocess, sys, time
pgward, repo, config, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def timed(args):
    start = time.monotonic()
    subprocess.run([pgward, "--repo", repo] + args, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start
lists, prunes = [], []
for _ in range(3):
    lists.append(timed(["--json", "list"]))
    prunes.append(timed(["--config", config, "--json", "prune", "--dry-run"]))
p, l = statistics.median(prunes), statistics.median(lists)
print(f"backups            {n}")
print(f"prune --dry-run    {p:.3f} s (median of 3)   target < 1 s: {'met' if p < 1 else 'MISSED'}")
print(f"list (floor)       {l:.3f} s")
print(f"prune / list       {p / l:.2f}")
PY
