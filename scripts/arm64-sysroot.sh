#!/usr/bin/env bash
# An arm64 Python (Debian's own packages, unpacked, not installed) for running
# the real extension under qemu-aarch64 on an x86-64 machine. Idempotent; does
# nothing on an arm64 machine or when the sysroot is already there.
set -euo pipefail

ROOT="${MCSAFE_ARM64_SYSROOT:-$HOME/.cache/mcsafe/arm64-sysroot}"
[ "$(uname -m)" = "x86_64" ] || exit 0
[ -x "$ROOT/usr/bin/python3.11" ] && exit 0

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
fi
debs=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-dev libc6
      zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0 libtinfo6
      libncursesw6 libreadline8 libdb5.3 libgdbm6 libnsl2 libtirpc3 libcrypt1)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp"
(cd "$tmp" && apt-get download -qq "${debs[@]/%/:arm64}" 2>/dev/null) || {
    $SUDO apt-get update -qq
    (cd "$tmp" && apt-get download -qq "${debs[@]/%/:arm64}")
}
mkdir -p "$ROOT.part"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$ROOT.part"; done
rm -rf "$ROOT"
mv "$ROOT.part" "$ROOT"
echo "setup: arm64 Python for emulated tests in $ROOT"
