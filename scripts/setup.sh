#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, then the
# project itself (editable, with its test extras). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests build fixtures and the C harness for both machines and run the
# other machine's under qemu-user.
case "$(uname -m)" in
    aarch64) cross=(gcc-x86-64-linux-gnu libc6-dev-amd64-cross) ;;
    *)       cross=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
esac
debs=(gcc binutils "${cross[@]}" qemu-user)
missing=()
for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/arm64-sysroot.sh

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test,bench]'
