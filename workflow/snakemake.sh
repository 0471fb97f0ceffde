#!/bin/sh
# Start snakemake whatever PATH the caller has: dvc.yaml's stage commands call this
# (DVC runs a stage's cmd through the shell with the caller's PATH, which need not hold
# the virtual environment). Tried in order:
#   1. <repo>/.venv/bin/snakemake   (made by scripts/setup.sh; <repo> = this file's ../)
#   2. snakemake on PATH            (an activated venv or conda environment)
#   3. python3 -m snakemake         (a python3 on PATH that has snakemake installed)
# Every argument is passed on:  sh workflow/snakemake.sh results/retab_fold0 --cores 2
# POSIX sh and shell builtins only (PATH may be nearly empty).
case "$0" in
  */*) repo="${0%/*}/.." ;;
  *) repo=".." ;;
esac
if [ -x "$repo/.venv/bin/snakemake" ]; then
  exec "$repo/.venv/bin/snakemake" "$@"
fi
if command -v snakemake >/dev/null 2>&1; then
  exec snakemake "$@"
fi
if command -v python3 >/dev/null 2>&1 && python3 -c "import snakemake" >/dev/null 2>&1; then
  exec python3 -m snakemake "$@"
fi
echo "error: snakemake not found: no $repo/.venv/bin/snakemake (run: bash scripts/setup.sh), no snakemake on PATH, no python3 with snakemake installed" >&2
exit 127
