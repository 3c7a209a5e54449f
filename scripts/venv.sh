#!/usr/bin/env bash
# The project's virtual environment: $VENV (default .venv) made with $PYTHON
# (default: python3 on PATH), the project installed editable with the extras
# $EXTRAS (default: demo,test,bench,docs; make demo asks for demo only). Debian's own python3 is externally managed, so nothing is ever
# installed into it.
#
# Reinstalls only when what it was installed from changed (the interpreter, or
# pyproject.toml / setup.py / build.py: a stamp file holds their hash), and
# rebuilds the extension in place when its sources changed. A run that failed
# half way wrote no stamp, so the next one starts again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
EXTRAS="${EXTRAS:-demo,test,bench,docs}"

digest() { cat "$@" | sha256sum | cut -d' ' -f1; }
interp="$("$PYTHON" -c 'import sys; print(sys.executable, sys.version)')"
stamp() { printf '%s\n%s\n%s\n' "$interp" "$1" "$(digest pyproject.toml setup.py build.py)"; }
want_install="$(stamp "$EXTRAS")"
# An environment installed with more extras than asked for serves as it is.
have_extras="$(sed -n 2p "$VENV/.mcsafe-install" 2>/dev/null || true)"
if [ -n "$have_extras" ] && [ "$(stamp "$have_extras")" = "$(cat "$VENV/.mcsafe-install")" ] \
        && [ -z "$(comm -23 <(tr , '\n' <<<"$EXTRAS" | sort -u) <(tr , '\n' <<<"$have_extras" | sort -u))" ]; then
    want_install="$(stamp "$have_extras")"
fi
ext_sources() {                            # what the built extension is made from
    find mcsafe/_mcsafe.pyx mcsafe/_mcsafe.pxd mcsafe/_core extable -type f \
        \( -name '*.pyx' -o -name '*.pxd' -o -name '*.[ch]' -o -name '*.py' \) | LC_ALL=C sort
}
want_ext="$(digest $(ext_sources))"

exec 9>"$VENV.lock"                        # two makes in one clone: one installs
flock 9

if ! "$PY" -c '' 2>/dev/null || [ "$(cat "$VENV/.mcsafe-install" 2>/dev/null)" != "$want_install" ]; then
    echo "setup: installing the project into $VENV ($PYTHON: ${interp#* })"
    rm -f "$VENV/.mcsafe-install" "$VENV/.mcsafe-ext"
    "$PYTHON" -m venv --clear --upgrade-deps "$VENV" >/dev/null
    "$PY" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
    echo "$want_install" > "$VENV/.mcsafe-install"
    echo "$want_ext" > "$VENV/.mcsafe-ext"
elif [ "$(cat "$VENV/.mcsafe-ext" 2>/dev/null)" != "$want_ext" ] \
        || ! "$PY" -c 'import mcsafe._mcsafe' 2>/dev/null; then
    echo "setup: rebuilding the extension in place (its sources changed, or it does not import)"
    "$PY" build.py >/dev/null
    echo "$want_ext" > "$VENV/.mcsafe-ext"
fi
# The docs the installed extable names in its help (build.py copies them into
# the package); cheap, so always, in case docs/ changed since the last build.
"$PY" -c 'import sys; sys.path.insert(0, "."); import build; build.package_docs()'
