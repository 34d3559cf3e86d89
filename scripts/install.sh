#!/usr/bin/env bash
# Install SPX Command Center into ./.venv (idempotent).
#   bash scripts/install.sh          # the mesh: package + every plugin package under plugins/
#   bash scripts/install.sh --test   # also test tools, and Debian's chromium for the browser test (when root)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null

extras=""
[ "$want_test" = 1 ] && extras="[test]"
args=(-e ".${extras}")
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] && args+=(-e "$p")
done
echo "==> installing ${args[*]}"
# setuptools warns on every editable build that a folder named like the package may shadow it
# (that folder is the package itself here); the filter matches that one message only
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q "${args[@]}"

if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium (browser test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: chromium could not be installed; the browser test will be skipped" >&2
  else
    echo "install.sh: chromium not installed (needs root + apt-get); the browser test will be skipped" >&2
  fi
fi
echo "==> done: .venv/bin/spx --help"
