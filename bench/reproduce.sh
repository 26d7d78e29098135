#!/usr/bin/env bash
# Every figure of the README's Performance table, one run after another (~60 min on 2 cores; the soak is ~22 of
# them). Usage: bench/reproduce.sh [OUT_DIR] [--no-soak]. Each run writes results.json, results.md and its plots
# into a subfolder of OUT_DIR (default bench-out).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
py=.venv/bin/python
# From a fresh clone (no .venv yet) or without the benchmark's extras: ./dev installs them and comes back here.
if ! { [ -x "$py" ] && $py -c "import psutil, matplotlib" 2>/dev/null; }; then
  [ -z "${VOXLINE_BENCH_INSTALLED:-}" ] || { echo "reproduce.sh: .venv still lacks psutil or matplotlib" >&2; exit 1; }
  exec ./dev bench "$@"
fi
run() { local name=$1; shift; echo "== $name: bench/load.py $*"; $py bench/load.py "$@" --out "$out/$name" --quiet; }
run cloud-10 --target both --calls 10
run noisy-20 --target both --calls 20 --line-noise -60 --hold 20
run local-3 --target both --agent local --calls 3
run local-1 --target voxline --agent local --calls 1 --turns 6
run local-1-baseline --target baseline --agent local --calls 1 --turns 6
run ramp --target voxline --ramp --ramp-levels 10,20,30,40,60,80,100 --turns 1 --hold 8
run ramp-workers2 --target voxline --ramp --ramp-levels 20,30,40,60,80,100 --turns 1 --hold 8 --workers 2
# The same with the load generator and the emulators at niceness 19, taking what the server leaves (needs root).
run ramp-workers2-nice --target voxline --ramp --ramp-levels 20,30,40,60,80,100 --turns 1 --hold 8 --workers 2 \
  --harness-nice 19
# And under SCHED_IDLE: the load gives a core up as soon as a server thread wakes, which niceness does not promise.
run ramp-workers2-idle --target voxline --ramp --ramp-levels 20,30,40,60,80,100 --turns 1 --hold 8 --workers 2 \
  --harness-idle
# The last two rows: 100 calls with their talk spread over 10 s, and calls arriving at random at a server limited to
# the 40 at once this VM carries (the rest turned away busy).
run spread-100 --target voxline --calls 100 --turns 3 --spread 10 --hold 8 --workers 2 --harness-nice 19
VOXLINE_MAX_CALLS=40 run arrivals-40 --target voxline --arrivals 4 --arrival-secs 60 --turns 3 --spread 0 \
  --workers 2 --harness-nice 19
# And at 50, the size this VM carries on a PGO+LTO interpreter (Debian's python3.11, the Docker image's), not on pyenv's.
VOXLINE_MAX_CALLS=50 run arrivals-50 --target voxline --arrivals 4 --arrival-secs 60 --turns 3 --spread 0 \
  --workers 2 --harness-nice 19
[[ "${2:-}" == "--no-soak" ]] || run soak --target voxline --soak 1000 --soak-lanes 4
for f in "$out"/*/results.md; do echo; cat "$f"; done
