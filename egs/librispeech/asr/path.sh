# Sourced by run.sh: put the repository's virtualenv (made by tools/setup.sh) on PATH.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
if [ -x "$_root/.venv/bin/speechkit" ]; then export PATH="$_root/.venv/bin:$PATH"; fi
export PATH="$_root/recipes:$PATH"
export PYTHONUNBUFFERED=1
