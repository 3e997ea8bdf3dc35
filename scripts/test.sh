#!/usr/bin/env bash
# The whole test suite: set-up, ruff, mypy --strict, then pytest (unit + integration).
# Extra arguments go to pytest.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== mypy (strict)"
mypy
echo "== pytest"
set +e
pytest -q -p no:cacheprovider "$@"
code=$?
set -e
if [[ $code -eq 5 ]]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $code
