#!/usr/bin/env bash
# Runs one cargo-fuzz target until it has used CPU_SECONDS of CPU time (not wall time), so that a
# run shares the machine (niced, beside builds or another target) and still counts what it asked:
# libFuzzer's own -max_total_time counts wall time. New inputs go into fuzz/corpus/TARGET,
# crashes into fuzz/artifacts/TARGET/; minimize the corpus afterwards with
# `cargo +nightly fuzz cmin TARGET` (README, "Fuzzing"). Build first: `cargo +nightly fuzz build`.
#
#   scripts/fuzz-cpu.sh TARGET CPU_SECONDS [libFuzzer flags...]
#   nice -n 19 scripts/fuzz-cpu.sh session 3600 -max_len=1024 > /tmp/fuzz-session.log 2>&1
#   setsid nice -n 19 scripts/fuzz-cpu.sh session 3600 &   # detached: still niced (autogroup)
#
# The last line printed is `fuzz-cpu: TARGET cpu_s=... wall_s=... exit=...`; libFuzzer's final
# stats (executions, exec/s, coverage) come just before it.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET CPU_SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
TARGET="$1"
LIMIT="$2"
shift 2

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="fuzz/target/x86_64-unknown-linux-gnu/release/$TARGET"
if [ ! -x "$BIN" ]; then
    echo "error: $BIN is not built (cargo +nightly fuzz build $TARGET)" >&2
    exit 2
fi
mkdir -p "fuzz/corpus/$TARGET" "fuzz/artifacts/$TARGET"

# With the kernel's autogroups on, nice counts only inside a session: a fuzzer started under
# setsid would take a full share beside builds and benchmarks whatever its nice value. A script
# that leads its own session gives the session's group its own nice value.
if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w /proc/self/autogroup ]; then
    echo "$(nice)" > /proc/self/autogroup 2>/dev/null || true
fi

"$BIN" -artifact_prefix="fuzz/artifacts/$TARGET/" -print_final_stats=1 "$@" "fuzz/corpus/$TARGET" &
PID=$!
trap 'kill -INT "$PID" 2>/dev/null || true' EXIT INT TERM

TICKS=$(getconf CLK_TCK)
START=$(date +%s)
cpu_ticks() {
    # Fields 14 and 15 of /proc/PID/stat (utime, stime) cover every thread of the process; the
    # command name (field 2) may hold spaces, so fields are counted after its closing parenthesis.
    local stat
    stat=$(cat "/proc/$PID/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo $(( ${12} + ${13} ))
}
CPU=0
while kill -0 "$PID" 2>/dev/null; do
    if T=$(cpu_ticks); then
        CPU=$T
        if [ $(( CPU / TICKS )) -ge "$LIMIT" ]; then
            kill -INT "$PID" 2>/dev/null || true
            break
        fi
    fi
    sleep 5
done
set +e
wait "$PID"
RC=$?
set -e
trap - EXIT INT TERM
echo "fuzz-cpu: $TARGET cpu_s=$(( CPU / TICKS )) wall_s=$(( $(date +%s) - START )) exit=$RC"
# libFuzzer exits 72 when interrupted (-interrupted_exit_code's default); anything else but 0
# means it stopped on its own: a crash, a leak or a timeout, written to fuzz/artifacts/TARGET/.
if [ "$RC" -ne 0 ] && [ "$RC" -ne 72 ]; then
    exit "$RC"
fi
