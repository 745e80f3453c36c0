# shellcheck shell=bash
# Helpers for checks that run inside the boot test's guest (as root). Source
# it: . "$OUTPOST_BOOT_LIB"
#
# Results go to the guest's second serial port, which the host reads:
#   PASS <check>            FAIL <check>: <why>       SKIP <check>: <why>
#   INFO <text>             LOG <text> (journal lines shown on failure)
# The host counts PASS and FAIL lines; anything else is shown as it comes.

OUTPOST_BOOT_OUT=${OUTPOST_BOOT_OUT:-/dev/ttyS1}
OUTPOST_BOOT_DIR=${OUTPOST_BOOT_DIR:-/run/outpost-boot}
STATE=/var/lib/outpost
HTTP=http://127.0.0.1:8090
FAILED=${FAILED:-0}

report() { printf '%s\n' "$*" >"$OUTPOST_BOOT_OUT"; }
pass() { report "PASS $1${2:+ ($2)}"; }
fail() {
    report "FAIL $1: $(printf '%s' "$2" | tr '\n' ' ' | cut -c1-400)"
    FAILED=$((FAILED + 1))
}
skip() { report "SKIP $1: $2"; }
info() { report "INFO $*"; }

# check NAME COMMAND...: PASS when the command succeeds, else FAIL with the
# last lines of its output.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name" "$(printf '%s' "$out" | tail -n 4)"
    fi
}

# wait_for SECONDS COMMAND...: polls COMMAND (twice a second) until it
# succeeds or the deadline passes; returns 1 on the deadline.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

# expect_mode PATH MODE OWNER:GROUP
expect_mode() {
    local have
    have=$(stat -c '%a %U:%G' "$1" 2>&1) || { echo "$1: $have"; return 1; }
    [ "$have" = "${2#0} $3" ] || { echo "$1 is $have, want ${2#0} $3"; return 1; }
}

unit_prop() { systemctl show -p "$2" --value "$1"; }

# The unit has reached READY=1 (Type=notify: active only after READY).
outpost_active() { [ "$(unit_prop outpost ActiveState)" = active ]; }

http_ok() { curl -fsS --max-time 5 -o /dev/null "$HTTP$1"; }

# json FILE PYTHON-EXPR: prints the expression over the decoded file as j.
json() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# spool ID JSON: drops a task into the inbox as the agent's user would
# (written aside, then renamed, so the agent never reads half a file).
spool() {
    local tmp=$STATE/inbox/.$1.part
    printf '%s\n' "$2" >"$tmp"
    chown outpost:outpost "$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$STATE/inbox/$1.json"
}

# result_state ID: the state of spool task ID, from results/ID.json.
result_state() { json "$STATE/results/$1.json" 'j["state"]' 2>/dev/null; }
result_is() { [ "$(result_state "$1")" = "$2" ]; }
result_error() { json "$STATE/results/$1.json" '(j.get("error") or {}).get("message","") + " " + (j.get("stderr_tail") or "")' 2>/dev/null; }

# wait_result ID STATE SECONDS: PASS-able when the task reached STATE.
wait_result() {
    wait_for "$3" result_is "$1" "$2" && return 0
    echo "task $1 is '$(result_state "$1")', want $2: $(result_error "$1")"
    return 1
}

# journal_tail N: the agent's journal, as LOG lines.
journal_tail() {
    journalctl -b -u outpost --no-pager -n "$1" 2>&1 | sed 's/^/LOG /' >"$OUTPOST_BOOT_OUT"
}
