#!/usr/bin/env bash
# Mutation testing (mutmut) of the pure core and the safety paths. NOT run in CI: it takes
# minutes to an hour depending on the subset and the machine.
#
#   bench/mutation.sh [--rev REV] [--tests "PYTEST PATHS"] [--only GLOB] [--keep] [FILE ...]
#
# FILE: modules to mutate, relative to the repo (default: the pure core's plan, diff,
#       desire and addresses modules, where the safety check and the comparison live).
# --rev: mutate and test a committed revision (default: the working tree as it is).
# --tests: the tests mutmut runs against each mutant (default: the fast pure-core
#          tests; pass e2e tests here to cover the I/O paths, e.g. engine/reconciler.py with
#          tests/e2e/test_cli_promises.py -- slower).
# --only: mutate only the functions whose mutant names match GLOB, e.g.
#         'provisiond.engine.reconciler.xǁReconcilerǁread_source__mutmut_*' (the failed-read path).
# --keep: leave the throwaway copy in place (its path is printed) to look at survivors
#         with `cd DIR && $PYTHON -m mutmut show NAME`.
#
# The run happens in a throwaway copy under $TMPDIR (mutmut writes a mutants/ tree next to
# the code); the repo is never touched. It prints mutmut's per-mutant verdicts summary and
# the score: killed / (killed + survived). Timeouts count as killed, as mutmut does;
# "no tests" mutants (code no selected test runs) count as survived.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
REV=""
KEEP=""
ONLY=()
TESTS="tests/test_core.py tests/test_addresses.py tests/test_core_promises.py tests/ipam/test_allocate.py tests/radius/test_radius_desire.py tests/radius/test_effective_reply.py"
FILES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rev) REV=$2; shift 2 ;;
        --tests) TESTS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --only) ONLY+=("$2"); shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) FILES+=("$1"); shift ;;
    esac
done
[ ${#FILES[@]} -gt 0 ] || FILES=(provisiond/core/plan.py provisiond/core/diff.py provisiond/core/desire.py provisiond/core/addresses.py)
"$PY" -c 'import mutmut' 2>/dev/null || "$PY" -m pip install -q "mutmut>=3.2"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/provisiond-mutation.XXXXXX")
if [ -n "$KEEP" ]; then echo "mutation: keeping $WORK" >&2; else trap 'rm -rf "$WORK"' EXIT; fi
if [ -n "$REV" ]; then
    git archive "$REV" | tar -x -C "$WORK"
else
    git ls-files -co --exclude-standard -z | tar --null -T - -c | tar -x -C "$WORK"
fi
cd "$WORK"
# Only the test files that exist at that revision.
sel=()
for t in $TESTS; do [ -e "${t%%::*}" ] && sel+=("$t"); done
only=""
for f in "${FILES[@]}"; do only+="\"$f\", "; done
tests=""
for t in "${sel[@]}"; do tests+="\"$t\", "; done
cat >> pyproject.toml <<TOML

[tool.mutmut]
source_paths = ["provisiond"]
only_mutate = [${only%, }]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-o", "addopts="]
pytest_add_cli_args_test_selection = [${tests%, }]
use_git_change_detection = false
TOML
echo "mutation: mutating ${FILES[*]}" >&2
echo "mutation: tests ${sel[*]}" >&2
start=$(date +%s)
"$PY" -m mutmut run "${ONLY[@]}" >"$WORK/run.log" 2>&1 || { tail -40 "$WORK/run.log" >&2; exit 1; }
"$PY" -m mutmut results --all true >"$WORK/results.txt" 2>&1 || true
if [ ${#ONLY[@]} -gt 0 ]; then  # score only the mutants asked for
    pattern=$(printf '%s\n' "${ONLY[@]}" | sed 's/[.]/[.]/g; s/[*]/.*/g' | paste -sd'|')
    grep -E "^ *($pattern):" "$WORK/results.txt" >"$WORK/results.only" || true
    mv "$WORK/results.only" "$WORK/results.txt"
fi
end=$(date +%s)
"$PY" - "$WORK/results.txt" "$((end - start))" <<'PYEOF'
import collections, re, sys
counts = collections.Counter()
survivors = []
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"\s*(\S+): (.+)$", line)
    if not m:
        continue
    name, verdict = m.group(1), m.group(2).strip()
    counts[verdict] += 1
    if verdict in ("survived", "no tests"):
        survivors.append(f"{verdict:9} {name}")
killed = counts["killed"] + counts["timeout"]
survived = counts["survived"] + counts["no tests"]
total = killed + survived
for line in survivors:
    print(line)
print("verdicts:", dict(sorted(counts.items())))
score = 100.0 * killed / total if total else 0.0
print(f"mutation score: {killed}/{total} killed = {score:.1f}%  ({sys.argv[2]} s)")
PYEOF
