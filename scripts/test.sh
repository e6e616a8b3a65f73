#!/usr/bin/env bash
# test.sh: the README's test command. Installs what a fresh machine lacks
# (PostgreSQL server binaries, zstd, gnupg) and runs the whole test suite:
# unit tests, and integration tests that start their own throwaway
# PostgreSQL cluster and drive the real pgward binary, pg_dump and pg_restore,
# among them a drill of PostgreSQL's own regression database.
#
# Why it exists: one command that works the same on a developer's machine
# and in CI (.ci/run calls exactly this).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/install-deps.sh"
if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# The drill of PostgreSQL's regression database is part of the suite here
# (scripts/regression-db.sh builds it; PGWARD_REGRESSION_DB=0 leaves it out).
export PGWARD_REGRESSION_DB=${PGWARD_REGRESSION_DB:-1}
cargo test --workspace --locked
