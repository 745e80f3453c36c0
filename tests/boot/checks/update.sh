#!/bin/bash
# Boot test, fast mode check script: PROTOCOL section 4.3 under the real unit.
# An agent_update from the spool hands over in the same process: systemd's
# MainPID and a running collector keep their pids, the unit never restarts,
# the new version registers and reports the task succeeded. The unit's
# sandbox lets the agent run what the update kept in programs/ and nothing
# else it can write. A restart from the installed program runs the updated
# one. A new version that dies by a signal brings the unit down; systemd
# restarts it, the previous version runs again and the task fails naming
# the signal (recorded by the unit's ExecStopPost=). The second build comes
# in extra/outpost-next (.ci/boot builds it with a higher
# OUTPOST_BUILD_VERSION).
#   OUTPOST_BOOT_EXTRA=DIR tests/boot/run fast tests/boot/checks/update.sh
set -u
# shellcheck source=tests/boot/guest/lib.sh
. "${OUTPOST_BOOT_LIB:?run by tests/boot/run fast}"
next=$OUTPOST_BOOT_DIR/extra/outpost-next
if [ ! -x "$next" ]; then
    skip update "no second build at extra/outpost-next (set OUTPOST_BOOT_EXTRA, as .ci/boot does)"
    exit 0
fi
version=$("$next" --version | sed 's/^outpost //')
installed=$(/usr/local/bin/outpost --version | sed 's/^outpost //')
info "update: installed $installed, next $version"
# shellcheck disable=SC2317 # called through wait_for
status_version() { curl -fsS --max-time 5 "$HTTP/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }
# shellcheck disable=SC2317
exe_of() { readlink "/proc/$1/exe"; }

# --- a collector that must live through the update -----------------------------
# (the collector program is "/bin/sh {config}" when checks/cgroups.sh ran
# first; with otelcol-contrib's stand-in it is that process that must live)
spool up-col '{"id":"up-col","type":"collector_start","payload":{"name":"up-col","config":"exec sleep 1234570\n"}}'
if ! wait_result up-col running 90 >/tmp/up.why 2>&1; then
    fail update-collector-starts "$(cat /tmp/up.why)"
    journal_tail 20
    exit 1
fi
col_pid=$(json "$STATE/results/up-col.json" 'j.get("pid")')
main=$(unit_prop outpost MainPID)
restarts=$(unit_prop outpost NRestarts)
info "update: MainPID $main ($(exe_of "$main")), collector pid $col_pid, NRestarts $restarts"

# --- the update, from the spool, of a program the agent's user can read --------------
mkdir -p /run/outpost-update
cp "$next" /run/outpost-update/outpost
chmod 0755 /run/outpost-update /run/outpost-update/outpost
sha=$(sha256sum /run/outpost-update/outpost | cut -d' ' -f1)
spool up-1 "{\"id\":\"up-1\",\"type\":\"agent_update\",\"payload\":{\"path\":\"/run/outpost-update/outpost\",\"sha256\":\"$sha\",\"version\":\"$version\"}}"
if wait_result up-1 succeeded 180 >/tmp/up.why 2>&1; then
    pass update-succeeds "$(json "$STATE/results/up-1.json" 'j.get("result")')"
else
    fail update-succeeds "$(cat /tmp/up.why)"
    journal_tail 40
fi
# shellcheck disable=SC2317
same_process() {
    [ "$(unit_prop outpost MainPID)" = "$main" ] || { echo "MainPID is $(unit_prop outpost MainPID), was $main"; return 1; }
    [ "$(unit_prop outpost NRestarts)" = "$restarts" ] || { echo "NRestarts $(unit_prop outpost NRestarts), was $restarts"; return 1; }
    outpost_active || { echo "outpost is $(unit_prop outpost ActiveState)"; return 1; }
    case $(exe_of "$main") in
    "$STATE"/programs/*) ;;
    *) echo "MainPID runs $(exe_of "$main")"; return 1 ;;
    esac
}
check update-same-pid-new-program same_process
# shellcheck disable=SC2317
collector_kept() {
    kill -0 "$col_pid" || { echo "collector $col_pid is gone"; return 1; }
    [ "$(awk '{print $4}' "/proc/$col_pid/stat")" = "$main" ] || { echo "collector's parent is $(awk '{print $4}' "/proc/$col_pid/stat")"; return 1; }
    result_is up-col running || { echo "up-col is $(result_state up-col)"; return 1; }
    [ "$(json "$STATE/results/up-col.json" 'j.get("pid")')" = "$col_pid" ] || { echo "up-col's pid is now $(json "$STATE/results/up-col.json" 'j.get("pid")')"; return 1; }
}
check update-collector-kept collector_kept
if wait_for 30 [ "$(status_version)" = "$version" ]; then
    pass update-status-says-new-version "$version"
else
    fail update-status-says-new-version "/status says $(status_version 2>&1)"
fi

# --- the sandbox: programs/ runs, the rest of the state directory does not -----------
# The unit's mount namespace is the agent's: what it could exec, root can
# exec there, no more (NoExecPaths= is a noexec mount).
printf '#!/bin/sh\necho ran\n' >"$STATE/not-a-program"
chmod 0755 "$STATE/not-a-program"
kept=$(exe_of "$main")
if out=$(nsenter -t "$main" -m -- "$kept" --version 2>&1) && [ "$out" = "outpost $version" ]; then
    pass update-sandbox-runs-programs "$kept"
else
    fail update-sandbox-runs-programs "$kept: $out"
fi
if out=$(nsenter -t "$main" -m -- "$STATE/not-a-program" 2>&1); then
    fail update-sandbox-runs-nothing-else "$STATE/not-a-program ran: $out"
else
    pass update-sandbox-runs-nothing-else "$out"
fi
rm -f "$STATE/not-a-program"

# --- a restart from the installed program runs the updated one -----------------------
systemctl restart --no-block outpost
# shellcheck disable=SC2317
restarted() { outpost_active && [ "$(unit_prop outpost MainPID)" != "$main" ] && [ "$(status_version)" = "$version" ]; }
if wait_for 120 restarted; then
    now=$(unit_prop outpost MainPID)
    case $(exe_of "$now") in
    "$STATE"/programs/*) pass update-restart-runs-updated "MainPID $now runs $(exe_of "$now")" ;;
    *) fail update-restart-runs-updated "MainPID $now runs $(exe_of "$now")" ;;
    esac
else
    fail update-restart-runs-updated "outpost $(unit_prop outpost ActiveState), /status says $(status_version 2>&1)"
    journal_tail 30
fi
if wait_for 60 result_is up-col running && ! kill -0 "$col_pid" 2>/dev/null; then
    pass update-collector-after-restart "running again as $(json "$STATE/results/up-col.json" 'j.get("pid")')"
else
    fail update-collector-after-restart "up-col is $(result_state up-col); old pid $col_pid $(kill -0 "$col_pid" 2>/dev/null && echo alive || echo gone)"
fi
spool up-col-stop '{"id":"up-col-stop","type":"collector_stop","payload":{"name":"up-col"}}'
wait_result up-col-stop succeeded 60 >/dev/null 2>&1 || true
info "update: journal: $(journalctl -b -u outpost --no-pager -o cat 2>&1 | grep -iE 'update|hand' | tail -n 6 | tr '\n' ';' | cut -c1-600)"

# --- a new version that dies by a signal in its first minutes ------------------------
# (after the checks above, which it must not disturb) It takes the process
# down; the unit's ExecStopPost= records how in $STATE/last-exit, systemd
# starts the unit again, the installed program settles the trial and the
# version that ran before runs again, and the task fails naming the signal.
cat >/run/outpost-update/dies <<'EOF'
#!/bin/sh
for a in "$@"; do
    case "$a" in
    --version) echo "outpost 99.0.0"; exit 0 ;;
    --check-config) echo ok; exit 0 ;;
    esac
done
echo "dies-by-signal: about to crash" >&2
kill -s SEGV $$
EOF
chmod 0755 /run/outpost-update/dies
sha=$(sha256sum /run/outpost-update/dies | cut -d' ' -f1)
main=$(unit_prop outpost MainPID)
restarts=$(unit_prop outpost NRestarts)
spool up-dies "{\"id\":\"up-dies\",\"type\":\"agent_update\",\"payload\":{\"path\":\"/run/outpost-update/dies\",\"sha256\":\"$sha\",\"version\":\"99.0.0\"}}"
if wait_result up-dies failed 180 >/tmp/up.why 2>&1; then
    why=$(result_error up-dies)
    kind=$(json "$STATE/results/up-dies.json" '(j.get("error") or {}).get("kind")')
    case "$kind: $why" in
    "update_failed: "*"signal SEGV"*dies-by-signal*) pass update-dies-by-signal-reported "$why" ;;
    *) fail update-dies-by-signal-reported "$kind: $why" ;;
    esac
else
    fail update-dies-by-signal-reported "$(cat /tmp/up.why); last-exit: $(cat "$STATE/last-exit" 2>&1)"
    journal_tail 30
fi
# shellcheck disable=SC2317
restarted_as_before() {
    outpost_active || { echo "outpost is $(unit_prop outpost ActiveState)"; return 1; }
    [ "$(unit_prop outpost NRestarts)" -gt "$restarts" ] || { echo "NRestarts $(unit_prop outpost NRestarts), was $restarts"; return 1; }
    [ "$(unit_prop outpost MainPID)" != "$main" ] || { echo "MainPID is still $main"; return 1; }
    [ "$(status_version)" = "$version" ] || { echo "/status says $(status_version 2>&1), want $version"; return 1; }
    [ ! -e "$STATE/last-exit" ] || { echo "$STATE/last-exit is still there: $(cat "$STATE/last-exit")"; return 1; }
}
if wait_for 120 restarted_as_before; then
    pass update-dies-previous-runs-again "$version as MainPID $(unit_prop outpost MainPID), NRestarts $(unit_prop outpost NRestarts)"
else
    fail update-dies-previous-runs-again "$(restarted_as_before 2>&1)"
    journal_tail 20
fi
[ "$FAILED" -eq 0 ]
