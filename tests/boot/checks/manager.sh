#!/bin/bash
# Boot test, fast mode check script: outpost (installed by install.sh,
# running manager-less) is pointed at a fake manager inside the guest, the way
# the README's install section says (agent.env, agent.key, restart), and must
# register, heartbeat, take tasks and report them; a wrong key must stop it
# with status 78 and no restart.
#   tests/boot/run fast tests/boot/checks/manager.sh
set -u
# shellcheck source=tests/boot/guest/lib.sh
. "${OUTPOST_BOOT_LIB:?run by tests/boot/run fast}"
fm=/run/fake-manager
key=boot-key-$RANDOM$RANDOM

cat >/run/fake-manager-tasks.json <<'EOF'
[
  {"id": "mgr-sysinfo", "type": "system_info", "payload": {}},
  {"id": "mgr-collector", "type": "collector_start",
   "payload": {"name": "mgr-otel", "config": "# outpost-boot-config from the manager\n"}}
]
EOF
systemd-run --unit=fake-manager --quiet \
    python3 "$OUTPOST_BOOT_DIR/fake-manager.py" 8099 "$key" "$fm" /run/fake-manager-tasks.json
# shellcheck disable=SC2317 # called through wait_for
listening() { python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8099), 1).close()'; }
wait_for 60 listening || fail manager-fake-started "the fake manager did not listen within 60 s"

printf 'OUTPOST_MANAGER_URL=http://127.0.0.1:8099\n' >>/etc/outpost/agent.env
printf '%s\n' "$key" >/etc/outpost/agent.key
pid0=$(unit_prop outpost MainPID)
systemctl restart --no-block outpost
# shellcheck disable=SC2317
registered() { outpost_active && [ "$(unit_prop outpost MainPID)" != "$pid0" ] && [ -s "$fm/register.jsonl" ]; }
if wait_for 90 registered; then
    pass manager-register "READY after registering; StatusText: $(unit_prop outpost StatusText)"
else
    fail manager-register "outpost is $(unit_prop outpost ActiveState): $(unit_prop outpost StatusText)"
fi
check manager-env-check-config /usr/local/bin/outpost --check-config --env-file /etc/outpost/agent.env --key-file /etc/outpost/agent.key
# shellcheck disable=SC2317
headers_ok() {
    local out
    out=$(json "$fm/headers.json" 'j.get("x-api-version") == "1" and j.get("x-agent-name") == "'"$(hostname)"'" and j.get("user-agent", "").startswith("outpost/") or j')
    [ "$out" = True ] || { echo "register headers: $out"; return 1; }
}
check manager-headers headers_ok
# shellcheck disable=SC2317
beats() { [ "$(cat "$fm/heartbeat.count" 2>/dev/null || echo 0)" -ge "$1" ]; }
if wait_for 30 beats 3; then
    pass manager-heartbeats "$(cat "$fm/heartbeat.count") heartbeats"
else
    fail manager-heartbeats "$(cat "$fm/heartbeat.count" 2>/dev/null || echo 0) heartbeats after 30 s"
fi
# shellcheck disable=SC2317
reported() { grep -q "\"state\": \"$2\"" "$fm/status/$1.jsonl" 2>/dev/null; }
if wait_for 60 reported mgr-sysinfo succeeded; then
    pass manager-task-system-info
else
    fail manager-task-system-info "statuses: $(cut -c1-300 "$fm/status/mgr-sysinfo.jsonl" 2>&1)"
fi
if wait_for 60 reported mgr-collector running; then
    pass manager-task-collector
else
    fail manager-task-collector "statuses: $(cut -c1-300 "$fm/status/mgr-collector.jsonl" 2>&1)"
fi
# shellcheck disable=SC2317
status_has_agent_id() { curl -fsS --max-time 5 "$HTTP/status" | grep -q boot-agent-1; }
check manager-status-agent-id status_has_agent_id
check manager-ready http_ok /ready

# A key the manager rejects: exit 78, and systemd does not restart it.
printf 'wrong-%s\n' "$key" >/etc/outpost/agent.key
systemctl restart --no-block outpost
# shellcheck disable=SC2317
stopped_78() { [ "$(unit_prop outpost ActiveState)" = failed ] && [ "$(unit_prop outpost ExecMainStatus)" = 78 ]; }
if wait_for 90 stopped_78; then
    restarts=$(unit_prop outpost NRestarts)
    pass manager-key-rejected-exit-78 "failed with status 78, NRestarts $restarts"
else
    fail manager-key-rejected-exit-78 "outpost is $(unit_prop outpost ActiveState), status $(unit_prop outpost ExecMainStatus)"
fi
[ "$FAILED" -eq 0 ]
