#!/bin/bash
# Boot test, fast mode: no cloud-init. install.sh installs outpost on the fresh
# guest (iperf3 and curl from the image's local mirror first), the checks
# below see it up under the real unit, then each check script given to
# `tests/boot/run fast SCRIPT...` runs as root, in order.
set -u
dir=/run/outpost-boot
# shellcheck source=tests/boot/guest/lib.sh
. "$dir/lib.sh"

export DEBIAN_FRONTEND=noninteractive
if apt_out=$(apt-get update -q 2>&1 && apt-get install -y -q --no-install-recommends iperf3 curl ca-certificates 2>&1); then
    pass packages-from-site-mirror
else
    fail packages-from-site-mirror "$(echo "$apt_out" | tail -n 3)"
fi

# --- install.sh on a fresh guest --------------------------------------------------
if bash "$dir/systemd/install.sh" "$dir/outpost" >/run/install-1.log 2>&1; then
    pass install-sh "$(wc -l </run/install-1.log) actions"
else
    fail install-sh "$(tail -n 3 /run/install-1.log)"
fi
info "install.sh said: $(tr '\n' ';' </run/install-1.log | cut -c1-600)"
check binary-mode expect_mode /usr/local/bin/outpost 0755 root:root
check etc-outpost-mode expect_mode /etc/outpost 0750 root:outpost
check agent-env-mode expect_mode /etc/outpost/agent.env 0640 root:outpost
check agent-key-mode expect_mode /etc/outpost/agent.key 0600 root:root
check unit-mode expect_mode /etc/systemd/system/outpost.service 0644 root:root
check unit-enabled systemctl is-enabled --quiet outpost
if wait_for 120 outpost_active; then
    pass ready "READY=1 at $(cut -d' ' -f1 /proc/uptime) s; StatusText: $(unit_prop outpost StatusText)"
else
    fail ready "outpost is $(unit_prop outpost ActiveState)/$(unit_prop outpost SubState): $(unit_prop outpost StatusText)"
fi
check state-dir-mode expect_mode /var/lib/outpost 0700 outpost:outpost
check http-ready http_ok /ready
bash "$dir/systemd/install.sh" "$dir/outpost" >/run/install-2.log 2>&1
changes=$(grep -vE ': (exists|unchanged|exists, content kept|exists in .*|done|already enabled and running)$|^install.sh: note:' /run/install-2.log)
if [ -z "$changes" ]; then
    pass install-sh-second-run-changes-nothing
else
    fail install-sh-second-run-changes-nothing "$changes"
fi
check still-running-after-second-run outpost_active

# --- the given check scripts ----------------------------------------------------------
export OUTPOST_BOOT_LIB=$dir/lib.sh OUTPOST_BOOT_DIR=$dir
for script in "$dir"/checks/*; do
    case $script in *.name) continue ;; esac
    [ -f "$script" ] || continue
    name=$(cat "$script.name" 2>/dev/null || basename "$script")
    info "running check script $name"
    timeout "$(cat "$dir/script-timeout")" "$script" >"$OUTPOST_BOOT_OUT" 2>&1
    report "EXIT $name $?"
done
[ "$FAILED" -eq 0 ]
