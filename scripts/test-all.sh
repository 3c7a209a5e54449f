#!/usr/bin/env bash
# `make test` on every CPython the project supports that is installed here
# (pyenv versions first, then pythonX.Y on PATH), each in its own virtual
# environment .venv-X.Y. Versions not installed are skipped and said so.
# Exit status 1 if any installed version failed.
set -uo pipefail
cd "$(dirname "$0")/.."

VERSIONS="${VERSIONS:-3.10 3.11 3.12 3.13 3.14}"
pyenv_root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"

find_python() {     # the newest pyenv X.Y.*, else pythonX.Y on PATH
    local v="$1" found
    found="$(ls -d "$pyenv_root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V | tail -1)"
    [ -n "$found" ] || found="$(command -v "python$v" || true)"
    echo "$found"
}

declare -a summary
status=0
for v in $VERSIONS; do
    py="$(find_python "$v")"
    if [ -z "$py" ]; then
        summary+=("$v: not installed, skipped")
        continue
    fi
    echo "=== CPython $v: $py"
    if make --no-print-directory test PYTHON="$py" VENV=".venv-$v"; then
        summary+=("$v: passed ($("$py" -V 2>&1))")
    else
        summary+=("$v: FAILED ($("$py" -V 2>&1))")
        status=1
    fi
done
echo "=== make test-all"
printf '%s\n' "${summary[@]}"
exit $status
