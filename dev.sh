#!/usr/bin/env bash
# The README's two set-up commands on a fresh machine:
#   ./dev.sh run    install gitmld into .venv and run the daemon in the foreground
#                   (embedded default remote: a local directory, when no S3 is configured)
#   ./dev.sh test   install gitmld with its test needs into .venv and run the whole suite
# Extra arguments go to `gitmld daemon` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${GITMLD_VENV:-.venv}
PYTHON=${PYTHON:-python3}

install() {  # install EXTRAS
  command -v git >/dev/null || { echo "dev.sh: git is required (apt-get install git)" >&2; exit 1; }
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".$1" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import gitmld.daemon, gitmld.client" \
    || { echo "dev.sh: installation into $VENV failed" >&2; exit 1; }
}

case "${1:-}" in
  run)
    install ""
    shift
    exec "$VENV/bin/gitmld" daemon "$@"
    ;;
  test)
    install "[test]"
    shift
    "$VENV/bin/ruff" check .
    mypy=$(cd "$VENV/bin" && pwd)/mypy
    (cd typecheck && "$mypy" -p gitmld --config-file ../pyproject.toml)
    exec "$VENV/bin/pytest" -q -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: ./dev.sh run [daemon args...] | ./dev.sh test [pytest args...]" >&2
    exit 2
    ;;
esac
