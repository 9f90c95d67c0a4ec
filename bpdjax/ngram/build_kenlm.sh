#!/usr/bin/env bash
# Builds KenLM's lmplz and build_binary from the PyPI `kenlm` sdist into PREFIX/bin.
#
# Shipped inside the package, so an installed bpdjax can build its own: find_lmplz(build=True)
# runs it with the prefix it looks in (a checkout's .kenlm, else ~/.cache/bpdjax/kenlm);
# tools/build_kenlm.sh runs it for a checkout.
# Idempotent: exits at once when both binaries already exist; concurrent runs take turns. Installs the Debian build
# dependencies (Boost, zlib, bz2, lzma, cmake) with apt-get when they are missing and we are root.
# Usage: build_kenlm.sh PREFIX
# Environment: KENLM_JOBS (default 2) parallel compile jobs; PYTHON (default python3) runs
# `pip download` of the sdist.
set -euo pipefail

PREFIX="${1:?usage: build_kenlm.sh PREFIX}"
JOBS="${KENLM_JOBS:-2}"
PYTHON="${PYTHON:-$(command -v python3)}"

# One build per prefix at a time (parallel test workers, two users): the second waits for the
# first, then finds its binaries.
mkdir -p "${PREFIX}"
exec 9>"${PREFIX}/.build.lock"
flock 9
if [[ -x "${PREFIX}/bin/lmplz" && -x "${PREFIX}/bin/build_binary" ]]; then
  echo "kenlm: already built in ${PREFIX}/bin"
  exit 0
fi

PKGS=(cmake g++ make libboost-program-options-dev libboost-system-dev libboost-thread-dev
      libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "kenlm: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "kenlm: missing Debian packages: ${missing[*]} (need root to install)" >&2
    exit 2
  fi
fi

mkdir -p "${PREFIX}/src"
cd "${PREFIX}/src"
if ! ls kenlm-*.tar.gz >/dev/null 2>&1; then
  # Only kenlm itself from source; its build requirements (cmake, setuptools) may come as wheels.
  "${PYTHON}" -m pip download --quiet --no-binary kenlm --no-deps kenlm -d .
fi
SDIST="$(ls kenlm-*.tar.gz | head -1)"
SRC="${SDIST%.tar.gz}"
[[ -d "${SRC}" ]] || tar xzf "${SDIST}"
mkdir -p "${SRC}/build"
cd "${SRC}/build"
cmake .. -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF -DFORCE_STATIC=OFF >/dev/null
make -j"${JOBS}" lmplz build_binary
mkdir -p "${PREFIX}/bin"
cp bin/lmplz bin/build_binary "${PREFIX}/bin/"
echo "kenlm: built ${PREFIX}/bin/lmplz ${PREFIX}/bin/build_binary"
