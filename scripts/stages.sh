# Stage timing for CI scripts (sourced): `stage NAME COMMAND...` runs the command, says how long
# it took, and remembers it; `stage_report` prints every stage's time at the end. A failing
# stage still reports its time and fails the script.
_stage_lines=()
stage() {
    local name=$1
    shift
    local t0 rc=0
    t0=$(date +%s)
    echo "==> stage: $name" >&2
    "$@" || rc=$?
    local took=$(($(date +%s) - t0))
    _stage_lines+=("$(printf '%-40s %4d min %02d s%s' "$name" $((took / 60)) $((took % 60)) \
        "$([ $rc = 0 ] || echo "  FAILED (exit $rc)")")")
    echo "==> stage: $name took ${took} s" >&2
    if [ $rc != 0 ]; then
        stage_report
        return $rc
    fi
}
stage_report() {
    echo "---- stage times ----" >&2
    printf '%s\n' "${_stage_lines[@]}" >&2
}
