#!/usr/bin/env bash
# The workspace's shape (issue: ports and adapters):
# - the product crate (outboxd) holds no test machinery: its normal dependency tree has no
#   outboxd-testkit, and no file of src/ is over 700 lines;
# - no import cycle between the modules of the product's library, of the testkit's library
#   or of the testkit's two multi-file programs (the benchmark, the fault harness):
#   cargo-modules' item graph, folded into modules by scripts/module-cycles.py
#   (cargo-modules' own --acyclic works on items, where a type and its method already make
#   a cycle).
# cargo-modules takes ~12 minutes to build once: CI (.ci/run) installs it; scripts/test.sh
# runs this check when it is installed and says how to get it when not.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
if cargo tree -p outboxd -e normal --prefix none | grep -q '^outboxd-testkit '; then
    echo "the product crate depends on the testkit:" >&2
    cargo tree -p outboxd -e normal -i outboxd-testkit >&2 || true
    status=1
fi
long=$(find src -name '*.rs' -exec wc -l {} + |
    awk '$2 != "total" && $1 > 700 {print "  " $2 ": " $1 " lines"}')
if [ -n "$long" ]; then
    echo "files of the product crate over 700 lines:" >&2
    echo "$long" >&2
    status=1
fi
if ! command -v cargo-modules >/dev/null 2>&1; then
    echo "check-layout: cargo-modules is not installed; the module-cycle check is skipped" \
        "(cargo install cargo-modules --version 0.27.0 --locked)" >&2
    exit $status
fi
graph=$(mktemp)
trap 'rm -f "$graph"' EXIT
cycles() { # what, then cargo-modules' arguments
    local what=$1; shift
    cargo modules dependencies "$@" --no-externs --no-sysroot >"$graph"
    python3 scripts/module-cycles.py <"$graph" || { echo "  (in $what)" >&2; status=1; }
}
cycles "the outboxd library" -p outboxd --lib
cycles "the testkit library" -p outboxd-testkit --lib
cycles "outboxd-bench" -p outboxd-testkit --bin outboxd-bench
cycles "outboxd-torture" -p outboxd-testkit --bin outboxd-torture
exit $status
