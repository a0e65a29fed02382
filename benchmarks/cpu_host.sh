#!/usr/bin/env bash
# Issue 16's CPU checks on a lent GPU machine's host CPU, in one device call of under 10 minutes.
#
#     bash benchmarks/cpu_host.sh OUT [MINUTES [SECONDS]]   # MINUTES per sweep arm (7), SECONDS per roofline arm (30)
#     PYTHON=.venv/bin/python bash benchmarks/cpu_host.sh /tmp/host 0.1 2    # a dry run of the script itself
#
# Device time is short (15 minutes a session, starts included; 10 a command), and the host's CPU (an Intel Xeon
# with AMX on the H200 machine) is a kind the 2-core machines seldom are. So everything runs at once, each part
# pinned to cores of its own, with the GPU hidden so that every trainer runs on the CPU:
# - cores 0-1: `roofline.py --lstm-kernels torch,loops`: bf16 and fp32 through each LSTM kernel against the GEMM
#   mix (about 3 minutes): item 4's ratio on this CPU through each kernel; then `kernel_choice.py`, what
#   `--lstm-kernel auto`'s own trial picks here (about 15 s);
# - two cores each, the rest: `sweep.py --pin 2`, the default preset for seeds 1-3 with `auto` and with the loops
#   (as many arms as the cores allow, in that order), for item 4's 10-minute figure read at MINUTES.
# Runs at once share the chip's memory: on the H200 host eight pinned runs each trained half as fast as one
# alone, so the arms compare with each other, not with a 2-core machine's figures (benchmarks/README.md, "On AMX,
# the first beta and the rate side by side").
set -euo pipefail
out=${1:?usage: bash benchmarks/cpu_host.sh OUT [MINUTES [SECONDS]]}
minutes=${2:-7}
seconds=${3:-30}
py=${PYTHON:-python}  # the Python with torch: the host's own on a device machine
mkdir -p "$out"
cd "$(dirname "$0")/.."
export CUDA_VISIBLE_DEVICES=
"$py" benchmarks/machine.py | tee "$out/machine.jsonl"
# lstm.cpp is built once, here, so that the parts below load it rather than race to build it
"$py" -c 'from storyloom import kernels; print("lstm.cpp:", kernels.build_lstm() or "built")' 2>&1 | tee "$out/build.txt"
# where it cannot be built (no compiler on the host), `loops` is refused: the checks run through torch's kernel alone
if grep -qx "lstm.cpp: built" "$out/build.txt"; then kernels=torch,loops; else kernels=torch; fi
# one reading of the cores: the roofline's two, the rest, and the sweep's arms (two cores each) in the order kept
mapfile -t plan < <("$py" - "$kernels" <<'EOF'
import sys
sys.path.insert(0, ".")
from storyloom.cpu import cores
groups = cores()
kinds = ("", ",lstm_kernel=loops") if "loops" in sys.argv[1] else ("",)
arms = [f"default:seed={s}{k}" for s in (1, 2, 3) for k in kinds]
print(",".join(str(c) for g in groups[:2] for c in sorted(g)))
print(",".join(str(c) for g in groups[2:] for c in sorted(g)))
print(" ".join(arms[:max(0, (len(groups) - 2) // 2)]))
EOF
)
first=${plan[0]} rest=${plan[1]}
read -r -a specs <<< "${plan[2]}"
{
    OMP_NUM_THREADS=2 taskset -c "$first" "$py" benchmarks/roofline.py --seconds "$seconds" --lstm-kernels "$kernels" \
        > "$out/roofline.jsonl" 2> "$out/roofline.err"
    if [ "$kernels" != torch ]; then  # what auto's own trial picks here, against the roofline's whole runs
        OMP_NUM_THREADS=2 taskset -c "$first" "$py" benchmarks/kernel_choice.py \
            > "$out/kernel_choice.jsonl" 2> "$out/kernel_choice.err"
    fi
} &
roofline=$!
if [ ${#specs[@]} -gt 0 ]; then
    taskset -c "$rest" "$py" benchmarks/sweep.py --pin 2 --minutes "$minutes" --evals 5 "${specs[@]}" \
        > "$out/sweep.jsonl" 2> "$out/sweep.err"
fi
wait "$roofline"
tail -n 4 "$out/roofline.jsonl" "$out/kernel_choice.jsonl" "$out/sweep.jsonl" 2>/dev/null || true
