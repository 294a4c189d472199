#!/usr/bin/env bash
# Set up the virtual environment in .venv when needed, then run one command:
#   ./run.sh quickstart [OPTIONS]   build small models and distil on CPU
#   ./run.sh test [PYTEST ARGS]     run the test suite
#   ./run.sh <command> [ARGS]       run any command inside the environment
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "Installing pocl-axolotl and its dependencies into $venv (several minutes the first time)"
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # The CPU build of torch 2.13.0; axolotl 0.19.0 accepts torch 2.11 to 2.13.
  "$venv/bin/python" -m pip install --quiet torch==2.13.0
  "$venv/bin/python" -m pip install --quiet -e ".[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi

export PATH="$PWD/$venv/bin:$PATH"
# Axolotl's telemetry retries without a network and can hang a process.
export AXOLOTL_DO_NOT_TRACK=1
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

command=${1:-test}
shift || true
case "$command" in
  quickstart) exec pocl-axolotl quickstart "$@" ;;
  test) exec python -m pytest "$@" ;;
  *) exec "$command" "$@" ;;
esac
