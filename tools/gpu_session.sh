#!/usr/bin/env bash
# The calls of a GPU session (BENCHMARKS.md, "Runbook"), run on the lent device machine from the
# repository root, one step per call and back to back: the machine stays warm only ~30 s between
# calls, and a fresh one has lost /tmp/c100, data/prepared and runs/.
#
#   tools/gpu_session.sh part          calls 1 and 2: keep the carried data piece in /tmp/c100
#   tools/gpu_session.sh data          call 3: decode CIFAR-100, prepare data/prepared/cifar100.npz
#   tools/gpu_session.sh bench         the eager-vs-fast check and every bench row
#   tools/gpu_session.sh run EXP...    the paper profile's EXP runs side by side on the GPU (train, or
#                                      cache then distill), cut at $BUDGET s (default 540); a cut run
#                                      resumes from its last.pt when given again
#
# Everything to keep lands in $OUT: bench-h100.{json,txt}, and results.tar.gz (runs/*.json, *.tsv,
# each seed's metrics/timing/history, the logs), to unpack into results/h100/ here.
set -euo pipefail
export PYTHONPATH="$PWD/.data/py:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
BUDGET=${BUDGET:-540}
tfkd() { python3 -m pipeline "$@"; }

need_data() {
  if [ ! -f data/prepared/cifar100.npz ]; then
    echo "gpu_session: no data/prepared/cifar100.npz (a fresh machine?): redo 'part' twice, then 'data'" >&2
    exit 3
  fi
}

case "${1:-}" in
  part)
    mkdir -p /tmp/c100 && cp .data/*.part0? /tmp/c100/ && ls -l /tmp/c100 ;;
  data)
    mkdir -p /tmp/c100 && cp .data/*.part0? /tmp/c100/
    if [ "$(ls /tmp/c100/*.part0? | wc -l)" != 3 ]; then
      echo "gpu_session: /tmp/c100 lacks data pieces (a fresh machine?): redo 'part' with part00, then part01" >&2
      exit 3
    fi
    python3 .data/decode.py /tmp/c100/out --src /tmp/c100
    tfkd prepare npz --source /tmp/c100/out/cifar100.npz --name cifar100 ;;
  bench)
    need_data
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    git rev-parse --short HEAD 2>/dev/null || true
    tfkd bench --data data/prepared/cifar100.npz --out "$OUT/bench-h100.json" 2>&1 | tee "$OUT/bench-h100.txt" ;;
  run)
    shift
    need_data
    sed -i 's/^profile: .*/profile: paper/' params.yaml
    logs=/tmp/tfkd/logs && mkdir -p "$logs"
    for exp in "$@"; do
      # SIGKILL at the budget, as the 10-minute limit would: the run resumes from last.pt next time
      (rc=0; timeout -s KILL "$BUDGET" "$0" one "$exp" >"$logs/$exp.log" 2>&1 || rc=$?
       echo "== $exp: exit $rc$( [ $rc = 137 ] && echo ' (cut at the budget; give it again to resume)')") &
    done
    wait
    for exp in "$@"; do echo "-- $exp"; tail -n 3 "$logs/$exp.log"; done
    shopt -s nullglob
    kept=(runs/*.json runs/*.tsv runs/*/s*/metrics.json runs/*/s*/timing.json runs/*/s*/history.tsv)
    tar czf "$OUT/results.tar.gz" -C /tmp/tfkd logs ${kept[@]+-C "$PWD" "${kept[@]}"} ;;
  one)  # one experiment: train it, or write its cache and distill it
    if [ "$(python3 -c "import sys; from pipeline.config import Params; print(Params.load().role_of(sys.argv[1]))" "$2")" = train ]; then
      tfkd train "$2"
    else
      tfkd cache "$2" && tfkd distill "$2"
    fi ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
