#!/usr/bin/env bash
# Installs the Debian packages the project and its tests need on a fresh Debian
# machine and the arm64 sysroot for the emulated tests. The project itself goes
# into a virtual environment: scripts/venv.sh. Safe to run again, and to run
# from two clones at once (apt runs under a lock).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# The tests build fixtures and the C harness for both machines (and the unwind
# fixtures with clang as well as gcc) and run the
# other machine's under qemu-user; they read ELF files with elfutils and
# patchelf (auditwheel needs patchelf too) and compressed files with zstd/xz;
# failing files are served by FUSE (fuse3: fusermount3 and libfuse3); mcsafe
# rescue's mapfiles are checked with GNU ddrescue's own tools (gddrescue).
case "$(uname -m)" in
    aarch64) cross=(gcc-x86-64-linux-gnu libc6-dev-amd64-cross) ;;
    *)       cross=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
esac
debs=(gcc clang binutils "${cross[@]}" qemu-user elfutils patchelf zstd xz-utils fuse3 gddrescue)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

# Debian's gcc-multilib conflicts with every gcc-*-linux-gnu cross compiler:
# apt would remove it to install ours. Leave the user's choice alone and say
# what is skipped; MCSAFE_REPLACE_MULTILIB=1 lets apt swap them.
if installed gcc-multilib && [ "${MCSAFE_REPLACE_MULTILIB:-0}" != 1 ] && ! installed "${cross[0]}"; then
    echo "setup: gcc-multilib is installed and conflicts with ${cross[0]};" \
         "not installing the cross compiler, so the tests for the other machine" \
         "will be skipped (MCSAFE_REPLACE_MULTILIB=1 make test replaces gcc-multilib)" >&2
    cross=()
    debs=(gcc clang binutils qemu-user elfutils patchelf zstd xz-utils fuse3 gddrescue)
fi

# A python3 that cannot make a virtual environment (Debian without python3-venv):
# ensurepip is what is missing.
venv_ok() { "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; }
venv_ok || debs+=(python3-venv)

missing_debs() {
    missing=()
    local pkg
    for pkg in "${debs[@]}"; do installed "$pkg" || missing+=("$pkg"); done
}
missing_debs
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    lock="${XDG_CACHE_HOME:-$HOME/.cache}/mcsafe/apt.lock"
    mkdir -p "$(dirname "$lock")"
    exec 9>"$lock"
    flock 9                                    # apt-get update + install as one step
    missing_debs                               # another run may have installed them
    if ((${#missing[@]})); then
        echo "setup: installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    exec 9>&-
fi
venv_ok || { echo "setup: $PYTHON cannot create a virtual environment (no ensurepip)" >&2; exit 1; }

scripts/arm64-sysroot.sh
