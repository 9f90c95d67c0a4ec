#!/usr/bin/env bash
# Builds KenLM's lmplz and build_binary into <repo>/.kenlm/bin (ignored), where a checkout's
# bpdjax looks for them; the build itself is bpdjax/ngram/build_kenlm.sh (shipped in the package).
# Usage: tools/build_kenlm.sh [PREFIX]   (default PREFIX: <repo>/.kenlm)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "${REPO}/.venv/bin/python" ]] && export PYTHON="${PYTHON:-${REPO}/.venv/bin/python}"
exec bash "${REPO}/bpdjax/ngram/build_kenlm.sh" "${1:-${REPO}/.kenlm}"
