#!/usr/bin/env bash
# An arm64 Python (Debian's own packages, unpacked, not installed) for running
# the real extension under qemu-aarch64 on an x86-64 machine. Does nothing on
# an arm64 machine or when a complete sysroot is already there.
#
# Safe to run several times at once (a lock; each run unpacks into its own
# temporary folder and renames it into place only when complete) and
# self-repairing: "complete" means the stamp file names this package list and
# every file the tests need is present, so a sysroot left broken by an older
# version of this script, or by hand, is rebuilt.
set -euo pipefail

ROOT="${MCSAFE_ARM64_SYSROOT:-$HOME/.cache/mcsafe/arm64-sysroot}"
[ "$(uname -m)" = "x86_64" ] || exit 0

debs=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-dev libc6
      zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0 libtinfo6
      libncursesw6 libreadline8 libdb5.3 libgdbm6 libnsl2 libtirpc3 libcrypt1)
# What tests/test_emulated_extension.py needs from the sysroot.
needed=(usr/bin/python3.11 lib/ld-linux-aarch64.so.1 usr/lib/python3.11/os.py
        usr/include/python3.11/Python.h usr/include/aarch64-linux-gnu/python3.11/pyconfig.h
        usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-aarch64-linux-gnu.so)
STAMP=.mcsafe-sysroot-complete
want="mcsafe arm64 sysroot v1: ${debs[*]}"

complete() {   # complete DIR: the stamp is this version's and nothing needed is missing
    [ "$(cat "$1/$STAMP" 2>/dev/null)" = "$want" ] || return 1
    local f
    for f in "${needed[@]}"; do [ -e "$1/$f" ] || return 1; done
}
has_all() {    # has_all DIR: every needed file is there (a sysroot from before the stamp)
    local f
    for f in "${needed[@]}"; do [ -e "$1/$f" ] || return 1; done
}

complete "$ROOT" && exit 0

mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9
complete "$ROOT" && exit 0                 # another run finished it while we waited
rm -rf "$ROOT".tmp.*                       # made under this lock: a killed run's leftovers
if [ -d "$ROOT" ] && [ ! -e "$ROOT/$STAMP" ] && has_all "$ROOT"; then
    # Unpacked by the previous version of this script, which wrote no stamp:
    # adopt it rather than pull it from under tests that may be using it.
    echo "$want" > "$ROOT/$STAMP"
    exit 0
fi
[ -e "$ROOT" ] && echo "setup: $ROOT is incomplete; rebuilding it"

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    $SUDO flock "$(dirname "$ROOT")/apt.lock" apt-get update -qq
fi

tmp="$(mktemp -d "$ROOT.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/debs" "$tmp/root"
chmod 777 "$tmp/debs"                      # apt-get download runs as the _apt user
(cd "$tmp/debs" && apt-get download -qq "${debs[@]/%/:arm64}" 2>/dev/null) || {
    $SUDO flock "$(dirname "$ROOT")/apt.lock" apt-get update -qq
    (cd "$tmp/debs" && apt-get download -qq "${debs[@]/%/:arm64}")
}
for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
has_all "$tmp/root" || { echo "setup: the arm64 packages lack files the tests need" >&2; exit 1; }
echo "$want" > "$tmp/root/$STAMP"

# Under the lock nobody else renames; the old tree (broken, or from an older
# package list) goes aside first and is removed after the new one is in place.
if [ -e "$ROOT" ]; then mv "$ROOT" "$tmp/old"; fi
mv "$tmp/root" "$ROOT"
echo "setup: arm64 Python for emulated tests in $ROOT"
