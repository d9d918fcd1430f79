#!/bin/bash
# Run the scaling-law sweep of configs/fit_sweep.py (a few CPU minutes), then fit L(N, D).
#   scripts/fit_sweep.sh OUTDIR [extra train.main flags]
# Each point trains in OUTDIR/<index> (re-running resumes or skips finished points); the fit is
# written to OUTDIR/fit.json, ready for `pregate-plan --budget_flops=C --fit=OUTDIR/fit.json`.
set -euo pipefail
OUT=${1:?usage: scripts/fit_sweep.sh OUTDIR [train.main flags]}
shift
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
POINTS=$("$PY" -c "from configs import fit_sweep; print(len(fit_sweep.POINTS))")
for ((i = 0; i < POINTS; i++)); do
  "$PY" -m train.main --config="configs/fit_sweep.py:$i" --workdir="$OUT/$i" \
    --config.data.data_dir="$OUT/data" "$@"
done
"$PY" -m train.cli.fit --out="$OUT/fit.json" "$OUT"/[0-9]*
