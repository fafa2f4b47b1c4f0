#!/usr/bin/env bash
# The product crate's shape (issue: ports and adapters):
# - no import cycle between its modules: cargo-modules' item graph, folded into modules by
#   scripts/module-cycles.py (cargo-modules' own --acyclic works on items, where a type and
#   its method already make a cycle);
# - no file of the library over 700 lines (src/bin is test machinery, moving out).
# cargo-modules takes ~12 minutes to build once: CI (.ci/run) installs it; scripts/test.sh
# runs this check when it is installed and says how to get it when not.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
long=$(find src -name '*.rs' -not -path 'src/bin/*' -exec wc -l {} + |
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
cargo modules dependencies --lib --features testkit --no-externs --no-sysroot >"$graph"
python3 scripts/module-cycles.py <"$graph" || status=1
exit $status
