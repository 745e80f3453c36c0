#!/bin/bash
# Boot test, fast mode check script: PROTOCOL section 4.2 under the real unit
# (cgroup v2, Delegate=cpu memory pids). Every task runs in a cgroup of its
# own: a stop leaves nothing (a setsid grandchild included), a kill -9 of the
# agent and systemd's restart leave nothing of the old instance, the kernel
# enforces memory and CPU limits, final updates carry usage, and register
# says cgroups: true. Collectors here are shell scripts (OUTPOST_COLLECTOR_CMD
# "/bin/sh {config}"), so a task's config is the program the check needs.
#   tests/boot/run fast tests/boot/checks/cgroups.sh
set -u
# shellcheck source=tests/boot/guest/lib.sh
. "${OUTPOST_BOOT_LIB:?run by tests/boot/run fast}"
fm=/run/fake-manager-cg
key=cg-key-$RANDOM$RANDOM
base=/sys/fs/cgroup/system.slice/outpost.service

# --- set-up: a fake manager (for register's capabilities) and shell collectors ---
echo '[]' >/run/fake-manager-cg-tasks.json
systemd-run --unit=fake-manager-cg --quiet \
    python3 "$OUTPOST_BOOT_DIR/fake-manager.py" 8098 "$key" "$fm" /run/fake-manager-cg-tasks.json
# shellcheck disable=SC2317 # called through wait_for
listening() { python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8098), 1).close()'; }
wait_for 60 listening || fail cgroups-fake-manager "the fake manager did not listen within 60 s"
sed -i '/^OUTPOST_MANAGER_URL=/d; /^OUTPOST_COLLECTOR_CMD=/d' /etc/outpost/agent.env
printf 'OUTPOST_MANAGER_URL=http://127.0.0.1:8098\nOUTPOST_COLLECTOR_CMD=/bin/sh {config}\n' >>/etc/outpost/agent.env
printf '%s\n' "$key" >/etc/outpost/agent.key
pid0=$(unit_prop outpost MainPID)
systemctl restart --no-block outpost
# shellcheck disable=SC2317
registered() { outpost_active && [ "$(unit_prop outpost MainPID)" != "$pid0" ] && [ -s "$fm/register.jsonl" ]; }
wait_for 120 registered || fail cgroups-restart "outpost is $(unit_prop outpost ActiveState): $(unit_prop outpost StatusText)"
main=$(unit_prop outpost MainPID)

cap=$(tail -n 1 "$fm/register.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["capabilities"].get("cgroups"))' 2>&1)
if [ "$cap" = True ]; then
    pass cgroups-capability "register says cgroups: true"
else
    fail cgroups-capability "register capabilities.cgroups is '$cap'"
    journal_tail 20
fi
# shellcheck disable=SC2317
agent_in_leaf() {
    local cg
    cg=$(cat "/proc/$main/cgroup")
    [ "$cg" = "0::/system.slice/outpost.service/agent" ] || { echo "agent's cgroup: $cg"; return 1; }
    grep -qw memory "$base/cgroup.subtree_control" || { echo "subtree_control: $(cat "$base/cgroup.subtree_control")"; return 1; }
}
check cgroups-agent-in-its-own-leaf agent_in_leaf

# task_cg ID: the task's cgroup directory.
task_cg() { echo "$base/task.$1"; }
# usage_ok ID: the final update carries plausible usage.
usage_of() { json "$STATE/results/$1.json" 'j.get("usage")'; }
# shellcheck disable=SC2317
usage_ok() {
    json "$STATE/results/$1.json" '(lambda u: u is not None and 0 <= u["cpu_seconds"] < 1000 and 65536 <= u["memory_peak_bytes"] < 2**31 and u["oom_kills"] >= 0)(j.get("usage"))' | grep -qx True
}
# shellcheck disable=SC2317
gone() { ! pgrep -f "$1" >/dev/null; }

# --- a stop leaves nothing, a setsid grandchild included ------------------------------
cat >/run/cg-setsid.sh <<'EOF'
setsid -f sleep 1234561 </dev/null >/dev/null 2>&1
exec sleep 1234560
EOF
cfg=$(python3 -c 'import json; print(json.dumps(open("/run/cg-setsid.sh").read()))')
spool cg-setsid '{"id":"cg-setsid","type":"collector_start","payload":{"name":"cg-setsid","config":'"$cfg"'}}'
if wait_result cg-setsid running 90 >/tmp/cg.why 2>&1 && wait_for 10 pgrep -f 'sleep 1234561'; then
    grandchild=$(pgrep -f 'sleep 1234561')
    grand_sid=$(ps -o sid= -p "$grandchild" | tr -d ' ')
    info "setsid grandchild pid $grandchild (session $grand_sid) in $(cat "/proc/$grandchild/cgroup")"
    if grep -qx "$grandchild" "$(task_cg cg-setsid)/cgroup.procs"; then
        pass cgroups-grandchild-in-task-cgroup "pid $grandchild, own session $grand_sid"
    else
        fail cgroups-grandchild-in-task-cgroup "pid $grandchild is in $(cat "/proc/$grandchild/cgroup")"
    fi
    spool cg-setsid-stop '{"id":"cg-setsid-stop","type":"collector_stop","payload":{"name":"cg-setsid"}}'
    if wait_result cg-setsid stopped 60 >/tmp/cg.why 2>&1 && wait_for 10 gone 'sleep 123456[01]'; then
        if [ -e "$(task_cg cg-setsid)" ]; then
            fail cgroups-stop-leaves-nothing "$(task_cg cg-setsid) still exists"
        else
            pass cgroups-stop-leaves-nothing "leader and setsid grandchild gone, cgroup removed"
        fi
    else
        fail cgroups-stop-leaves-nothing "$(cat /tmp/cg.why); left: $(pgrep -af 'sleep 123456[01]')"
    fi
    if usage_ok cg-setsid; then
        pass cgroups-usage-on-stop "$(usage_of cg-setsid)"
    else
        fail cgroups-usage-on-stop "final update: $(cat "$STATE/results/cg-setsid.json")"
    fi
else
    fail cgroups-grandchild-in-task-cgroup "$(cat /tmp/cg.why)"
    journal_tail 20
fi

# --- usage of a one-shot task ---------------------------------------------------------
spool cg-server '{"id":"cg-server","type":"iperf_server_start","payload":{"port":5301}}'
if wait_result cg-server running 90 >/tmp/cg.why 2>&1; then
    spool cg-client '{"id":"cg-client","type":"iperf_client_run","payload":{"server":"127.0.0.1","port":5301,"time":2,"limits":{"memory_max_bytes":268435456,"pids_max":64}}}'
    if wait_result cg-client succeeded 90 >/tmp/cg.why 2>&1 && usage_ok cg-client; then
        pass cgroups-usage-of-a-client "$(usage_of cg-client)"
    else
        fail cgroups-usage-of-a-client "$(cat /tmp/cg.why); $(cut -c1-300 "$STATE/results/cg-client.json" 2>&1)"
    fi
else
    fail cgroups-usage-of-a-client "server: $(cat /tmp/cg.why)"
fi

# --- cpu_max_percent: 20 holds a busy loop to about a fifth of a core -----------------------
spool cg-busy '{"id":"cg-busy","type":"collector_start","payload":{"name":"cg-busy","config":"while :; do :; done\n","limits":{"cpu_max_percent":20}}}'
if wait_result cg-busy running 90 >/tmp/cg.why 2>&1; then
    cpu_max=$(cat "$(task_cg cg-busy)/cpu.max")
    u0=$(awk '$1 == "usage_usec" {print $2}' "$(task_cg cg-busy)/cpu.stat")
    t0=$(date +%s%N)
    sleep 10 # a measurement window, not synchronisation
    u1=$(awk '$1 == "usage_usec" {print $2}' "$(task_cg cg-busy)/cpu.stat")
    t1=$(date +%s%N)
    share=$(awk -v du=$((u1 - u0)) -v dt=$(((t1 - t0) / 1000)) 'BEGIN { printf "%.1f", 100 * du / dt }')
    if awk -v s="$share" 'BEGIN { exit !(s >= 10 && s <= 30) }'; then
        pass cgroups-cpu-limit "busy loop at $share % of a core (cpu.max '$cpu_max')"
    else
        fail cgroups-cpu-limit "busy loop at $share % of a core, want 10-30 (cpu.max '$cpu_max')"
    fi
    # The task report (heartbeat, /status) is measured on the cgroup too.
    # shellcheck disable=SC2317
    report_ok() {
        curl -fsS --max-time 5 "$HTTP/status" | python3 -c '
import json, sys
r = [t for t in json.load(sys.stdin)["tasks"] if t["id"] == "cg-busy"][0]
print(r)
sys.exit(0 if 10 <= r.get("cpu_percent", -1) <= 30 and r.get("rss_bytes", 0) > 0 else 1)' >/tmp/cg.report 2>&1
    }
    if wait_for 30 report_ok; then
        pass cgroups-task-report-on-cgroup "$(cat /tmp/cg.report)"
    else
        fail cgroups-task-report-on-cgroup "$(cat /tmp/cg.report)"
    fi
else
    fail cgroups-cpu-limit "$(cat /tmp/cg.why)"
fi

# --- over its memory limit: oom_killed, the agent and the other task live on --------------
cat >/run/cg-oom.sh <<'EOF'
x=$(head -c 100000000 /dev/zero | tr '\0' a)
exec sleep 1234570
EOF
cfg=$(python3 -c 'import json; print(json.dumps(open("/run/cg-oom.sh").read()))')
spool cg-oom '{"id":"cg-oom","type":"collector_start","payload":{"name":"cg-oom","config":'"$cfg"',"restart":"never","limits":{"memory_max_bytes":16777216}}}'
if wait_for 120 result_is cg-oom failed; then
    kind=$(json "$STATE/results/cg-oom.json" 'j["error"]["kind"]')
    oom=$(json "$STATE/results/cg-oom.json" '(j.get("usage") or {}).get("oom_kills")')
    if [ "$kind" = oom_killed ] && [ "${oom:-0}" -ge 1 ] 2>/dev/null; then
        pass cgroups-oom-killed "$(json "$STATE/results/cg-oom.json" 'j["error"]["message"]'); usage $(usage_of cg-oom)"
    else
        fail cgroups-oom-killed "kind $kind, oom_kills $oom: $(cut -c1-300 "$STATE/results/cg-oom.json")"
    fi
else
    fail cgroups-oom-killed "task cg-oom is '$(result_state cg-oom)': $(result_error cg-oom)"
fi
# shellcheck disable=SC2317
lives_on() {
    [ "$(unit_prop outpost MainPID)" = "$main" ] || { echo "agent pid $main is now $(unit_prop outpost MainPID)"; return 1; }
    outpost_active || { echo "outpost is $(unit_prop outpost ActiveState)"; return 1; }
    result_is cg-busy running || { echo "cg-busy is $(result_state cg-busy)"; return 1; }
    http_ok /health
}
check cgroups-oom-agent-lives-on lives_on

# --- kill -9 of the agent: systemd restarts it, nothing of the old instance is left ---------
# pid:start-time of every process of the old instance's task, so that a
# resumed collector that happens to get an old pid is not taken for a leftover.
starts() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null; }
old_busy=""
while read -r p; do old_busy="$old_busy $p:$(starts "$p")"; done <"$(task_cg cg-busy)/cgroup.procs"
kill -9 "$main"
# shellcheck disable=SC2317
restarted() { outpost_active && [ "$(unit_prop outpost MainPID)" != "$main" ] && [ -n "$(unit_prop outpost MainPID)" ]; }
# shellcheck disable=SC2317
old_gone() {
    local e
    for e in $old_busy; do
        [ "$(starts "${e%%:*}")" = "${e#*:}" ] && { echo "pid ${e%%:*} of the old instance lives"; return 1; }
    done
    [ -z "$(pgrep -f 'sleep 12345')" ] || { echo "left: $(pgrep -af 'sleep 12345')"; return 1; }
    return 0
}
if wait_for 120 restarted && wait_for 60 old_gone; then
    new_main=$(unit_prop outpost MainPID)
    # shellcheck disable=SC2317
busy_again() { result_is cg-busy running && [ -n "$(cat "$(task_cg cg-busy)/cgroup.procs" 2>/dev/null)" ]; }
    if wait_for 60 busy_again; then
        pass cgroups-kill-9-leaves-nothing "old pids ($old_busy) gone; agent $main -> $new_main; cg-busy runs again as $(tr '\n' ' ' <"$(task_cg cg-busy)/cgroup.procs")"
        info "after the restart: $(journalctl -b -u outpost --no-pager -o cat 2>&1 | grep -E 'left by the previous|Killing process|cut off' | tail -n 4 | tr '\n' ';')"
    else
        fail cgroups-kill-9-leaves-nothing "cg-busy is '$(result_state cg-busy)' after the restart"
    fi
else
    fail cgroups-kill-9-leaves-nothing "$(old_gone 2>&1); outpost $(unit_prop outpost ActiveState) pid $(unit_prop outpost MainPID)"
    journal_tail 30
fi
# --- leftovers found by their cgroups ----------------------------------------------------
# Under the shipped unit systemd kills what a crashed agent left (above). With
# KillMode=process it leaves them, and the next agent must find them itself:
# a grandchild with an empty environment (no OUTPOST_TASK marker) and its
# own session can only be found by its cgroup. systemd 252 cannot start the
# agent while they remain (219/CGROUP: it places the new agent in the unit's
# cgroup, which hands controllers down); the check takes the controllers
# back by hand once that is seen, standing in for systemd 254's
# DelegateSubgroup=, and then the agent's recovery has to do the rest.
mkdir -p /run/systemd/system/outpost.service.d
printf '[Service]\nKillMode=process\n' >/run/systemd/system/outpost.service.d/cg-leftovers.conf
systemctl daemon-reload
cat >/run/cg-hidden.sh <<'EOF'
env -i setsid -f sleep 1234562 </dev/null >/dev/null 2>&1
exec sleep 1234563
EOF
cfg=$(python3 -c 'import json; print(json.dumps(open("/run/cg-hidden.sh").read()))')
spool cg-hidden '{"id":"cg-hidden","type":"collector_start","payload":{"name":"cg-hidden","config":'"$cfg"'}}'
if wait_result cg-hidden running 90 >/tmp/cg.why 2>&1 && wait_for 10 pgrep -f 'sleep 1234562'; then
    hidden=$(pgrep -f 'sleep 1234562')
    old_hidden="$hidden:$(starts "$hidden")"
    while read -r p; do old_hidden="$old_hidden $p:$(starts "$p")"; done <"$(task_cg cg-hidden)/cgroup.procs"
    if grep -qa OUTPOST_TASK "/proc/$hidden/environ"; then
        fail cgroups-leftovers-found-by-cgroup "the grandchild kept OUTPOST_TASK in its environment"
    fi
    main=$(unit_prop outpost MainPID)
    since=$(date '+%Y-%m-%d %H:%M:%S')
    kill -9 "$main"
    # shellcheck disable=SC2317
    hidden_gone() {
        local e
        for e in $old_hidden; do
            [ "$(starts "${e%%:*}")" = "${e#*:}" ] && { echo "pid ${e%%:*} of the old instance lives"; return 1; }
        done
        return 0
    }
    # shellcheck disable=SC2317
    refused() { [ "$(unit_prop outpost ExecMainStatus)" = 219 ]; }
    if wait_for 60 refused; then
        info "restart refused with 219/CGROUP while leftovers remain, as documented; taking the controllers back"
        echo "-cpu -memory -pids" >"$base/cgroup.subtree_control"
    fi
    if wait_for 120 restarted && wait_for 90 hidden_gone; then
        said=$(journalctl -u outpost --since "$since" --no-pager -o cat 2>&1 | grep -E 'left by the previous agent instance|Killing process' | tr '\n' ';')
        case $said in
        *"Killing process"*) fail cgroups-leftovers-found-by-cgroup "systemd killed them, not the agent: $said" ;;
        *"of task cg-hidden left by the previous"*) pass cgroups-leftovers-found-by-cgroup "old ($old_hidden) gone: $said" ;;
        *) fail cgroups-leftovers-found-by-cgroup "gone, but the journal does not say the agent stopped them: $said" ;;
        esac
    else
        fail cgroups-leftovers-found-by-cgroup "$(hidden_gone 2>&1); outpost $(unit_prop outpost ActiveState)"
        journal_tail 30
    fi
    # shellcheck disable=SC2317
    hidden_again() {
        local procs
        procs=$(cat "$(task_cg cg-hidden)/cgroup.procs" 2>/dev/null)
        result_is cg-hidden running && [ -n "$procs" ] && hidden_gone && [ "$(unit_prop outpost ActiveState)" = active ]
    }
    if wait_for 90 hidden_again; then
        pass cgroups-leftover-collector-runs-again "as $(tr '\n' ' ' <"$(task_cg cg-hidden)/cgroup.procs")"
    else
        fail cgroups-leftover-collector-runs-again "cg-hidden is '$(result_state cg-hidden)', outpost $(unit_prop outpost ActiveState)"
    fi
else
    fail cgroups-leftovers-found-by-cgroup "$(cat /tmp/cg.why)"
fi
rm -f /run/systemd/system/outpost.service.d/cg-leftovers.conf
systemctl daemon-reload
spool cg-hidden-stop '{"id":"cg-hidden-stop","type":"collector_stop","payload":{"name":"cg-hidden"}}'
wait_result cg-hidden-stop succeeded 60 >/dev/null 2>&1 || true
spool cg-busy-stop '{"id":"cg-busy-stop","type":"collector_stop","payload":{"name":"cg-busy"}}'
wait_result cg-busy-stop succeeded 60 >/dev/null 2>&1 || true
spool cg-server-stop '{"id":"cg-server-stop","type":"task_stop","payload":{"task_id":"cg-server"}}'
wait_result cg-server-stop succeeded 60 >/dev/null 2>&1 || true

# --- the sandbox's score with the delegation --------------------------------------------
info "systemd-analyze security: $(systemd-analyze security outpost --no-pager 2>&1 | grep -E 'Overall exposure|Delegate|ProtectControlGroups' | tr '\n' ';')"
info "kernel $(uname -r); memory.peak $([ -e "$base/agent/memory.peak" ] && echo present || echo absent); cgroup.kill $([ -e "$base/agent/cgroup.kill" ] && echo present || echo absent)"
info "leftover task cgroups: $(find "$base" -maxdepth 1 -name 'task.*' -printf '%f ' 2>&1)"
[ "$FAILED" -eq 0 ]
