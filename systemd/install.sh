#!/usr/bin/env bash
# Installs the outpost agent as a systemd service. See --help.
set -euo pipefail
umask 022

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNIT_SRC="$HERE/outpost.service"

usage() {
    cat <<EOF
Usage: $PROG [--root DIR] BINARY

Installs the outpost agent BINARY as a systemd service:

  /usr/local/bin/outpost                 BINARY, mode 0755 (replaced atomically)
  /etc/outpost/                          0750 root:outpost
  /etc/outpost/agent.env                 0640 root:outpost, a commented template
                                         (only when missing: never overwritten)
  /etc/outpost/agent.key                 0600 root:root, empty placeholder
                                         (only when missing: never overwritten)
  /etc/systemd/system/outpost.service    0644, from $UNIT_SRC
  system user and group 'outpost'        (useradd --system, no home, nologin)

then, when installing into / on a machine where systemd is running:
  systemctl daemon-reload; systemctl enable --now --no-block outpost
  (and systemctl try-restart --no-block outpost when the binary or the unit
  changed). The start is not waited for: the agent reports ready only once it
  has registered with its manager; see systemctl status outpost.

Running it again changes nothing unless BINARY or the unit changed; the
settings and the key are never touched once they exist (only their modes
are put right).

Options:
  --root DIR   install under DIR instead of / (an image being built, a test).
               Root is not required when DIR is not /. Under such a DIR the
               user is created only when running as root and DIR/etc/passwd
               exists (useradd --root DIR); file ownership is set only when
               running as root; systemctl is never run.
  -h, --help   this text.

Installing into / needs root.
EOF
}

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}
say() { echo "$PROG: $*"; }

ROOT=/
BINARY=
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --root)
        [ $# -ge 2 ] || die "--root needs a directory (see --help)"
        ROOT=$2
        shift 2
        ;;
    --root=*)
        ROOT=${1#--root=}
        shift
        ;;
    --)
        shift
        break
        ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *)
        [ -z "$BINARY" ] || die "only one BINARY may be given (see --help)"
        BINARY=$1
        shift
        ;;
    esac
done
if [ $# -gt 0 ]; then
    if [ -n "$BINARY" ] || [ $# -ne 1 ]; then
        die "only one BINARY may be given (see --help)"
    fi
    BINARY=$1
fi

[ -d "$ROOT" ] || die "--root '$ROOT' is not a directory"
ROOT=$(cd "$ROOT" && pwd -P)

IS_ROOT=false
[ "$(id -u)" -eq 0 ] && IS_ROOT=true
REAL=false
[ "$ROOT" = / ] && REAL=true
if $REAL && ! $IS_ROOT; then
    die "installing into / needs root: run it with sudo (or use --root DIR to install into a directory)"
fi

[ -n "$BINARY" ] || die "no BINARY given (usage: $PROG [--root DIR] BINARY; see --help)"
[ -f "$BINARY" ] || die "BINARY '$BINARY' does not exist or is not a regular file"
[ -r "$BINARY" ] || die "BINARY '$BINARY' is not readable"
[ -f "$UNIT_SRC" ] || die "unit file '$UNIT_SRC' not found (run install.sh from its systemd/ directory)"

# Paths inside ROOT.
p() { if $REAL; then echo "$1"; else echo "$ROOT$1"; fi; }

BIN_DST=$(p /usr/local/bin/outpost)
ETC_DIR=$(p /etc/outpost)
ENV_FILE=$ETC_DIR/agent.env
KEY_FILE=$ETC_DIR/agent.key
UNIT_DST=$(p /etc/systemd/system/outpost.service)

CHANGED=false # the binary or the unit changed: restart a running service

# --- user -----------------------------------------------------------------
OWN=false # may we chown to root:outpost?
if $REAL; then
    if getent passwd outpost >/dev/null; then
        say "user outpost: exists"
    else
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --user-group outpost
        say "user outpost: created"
    fi
    OWN=true
elif $IS_ROOT && [ -f "$ROOT/etc/passwd" ]; then
    if grep -q '^outpost:' "$ROOT/etc/passwd"; then
        say "user outpost: exists in $ROOT"
    else
        useradd --root "$ROOT" --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --user-group outpost
        say "user outpost: created in $ROOT"
    fi
    OWN=true
else
    say "user outpost: skipped (no $ROOT/etc/passwd or not root); create it on the target: useradd --system --no-create-home --shell /usr/sbin/nologin outpost"
fi

# gid of group outpost inside ROOT (numeric, so chown needs no NSS lookup
# inside ROOT).
outpost_gid() {
    if $REAL; then
        getent group outpost | cut -d: -f3
    else
        awk -F: '$1 == "outpost" { print $3 }' "$ROOT/etc/group"
    fi
}
GID=
if $OWN; then
    GID=$(outpost_gid)
    [ -n "$GID" ] || die "group outpost not found after creating the user"
fi

# --- helpers ----------------------------------------------------------------
# ensure_mode PATH MODE [OWNER:GROUP]: put mode (and owner, when allowed) right.
ensure_mode() {
    local path=$1 mode=$2 owner=${3:-}
    local have
    have=$(stat -c '%a' "$path")
    if [ "$have" != "${mode#0}" ]; then
        chmod "$mode" "$path"
        say "$path: mode $have -> $mode"
    fi
    if [ -n "$owner" ] && $OWN; then
        local want_uid=${owner%%:*} want_gid=${owner##*:}
        if [ "$(stat -c '%u:%g' "$path")" != "$want_uid:$want_gid" ]; then
            chown "$want_uid:$want_gid" "$path"
            say "$path: owner -> $want_uid:$want_gid"
        fi
    fi
}

ensure_dir() {
    local dir=$1 mode=$2 owner=${3:-}
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        chmod "$mode" "$dir"
        say "$dir: created ($mode)"
    fi
    ensure_mode "$dir" "$mode" "$owner"
}

# ensure_parent DIR: create a system directory when missing; never chmod one
# that exists (/etc, /usr/local/bin belong to the OS).
ensure_parent() {
    if [ ! -d "$1" ]; then
        mkdir -p "$1"
        say "$1: created"
    fi
}

# install_file SRC DST MODE: copy when the content differs (atomically, via a
# temporary file and rename, so a running binary is never written over).
install_file() {
    local src=$1 dst=$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        say "$dst: unchanged"
        ensure_mode "$dst" "$mode" 0:0
        return
    fi
    local tmp
    tmp=$(mktemp "$(dirname "$dst")/.${dst##*/}.XXXXXX")
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    if $OWN; then chown 0:0 "$tmp"; fi
    if [ -e "$dst" ]; then
        mv -f "$tmp" "$dst"
        say "$dst: updated ($mode)"
    else
        mv -f "$tmp" "$dst"
        say "$dst: installed ($mode)"
    fi
    CHANGED=true
}

# create_once DST MODE OWNER: write stdin to DST only when DST is missing.
create_once() {
    local dst=$1 mode=$2 owner=$3
    if [ -e "$dst" ]; then
        say "$dst: exists, content kept"
        cat >/dev/null
    else
        local tmp
        tmp=$(mktemp "$(dirname "$dst")/.${dst##*/}.XXXXXX")
        cat >"$tmp"
        chmod "$mode" "$tmp"
        if $OWN; then chown "$owner" "$tmp"; fi
        mv -f "$tmp" "$dst"
        say "$dst: created ($mode)"
    fi
    ensure_mode "$dst" "$mode" "$owner"
}

# --- files -----------------------------------------------------------------
ensure_parent "$(dirname "$BIN_DST")"
install_file "$BINARY" "$BIN_DST" 0755

ensure_parent "$(dirname "$ETC_DIR")"
ensure_dir "$ETC_DIR" 0750 "0:${GID:-0}"

create_once "$ENV_FILE" 0640 "0:${GID:-0}" <<'EOF'
# outpost agent settings, read by systemd (EnvironmentFile= in outpost.service).
# One NAME=value a line; `outpost --help` lists every setting. After a change:
#   systemctl restart outpost
# Check a file before restarting:
#   outpost --check-config --env-file /etc/outpost/agent.env --key-file /etc/outpost/agent.key
#
# Manager base URL; unset = manager-less mode (tasks only from the inbox spool).
#OUTPOST_MANAGER_URL=https://manager.example.com
# Agent name; default: the hostname.
#OUTPOST_AGENT_NAME=
# The registration key is NOT set here: put it in /etc/outpost/agent.key
# (0600 root), which systemd hands to the agent as a credential.
#
# Health responder (/health /ready /metrics /status); "off" disables it.
#OUTPOST_HTTP_ADDR=127.0.0.1:8090
#OUTPOST_HEARTBEAT_INTERVAL=5s
#OUTPOST_POLL_WAIT=25s
#OUTPOST_MAX_TASKS=64
#OUTPOST_IPERF3=iperf3
#OUTPOST_COLLECTOR_CMD=otelcol-contrib --config {config}
#OUTPOST_ALLOW_HTTP_CONFIG=false
# SIGTERM -> SIGKILL grace for children; keep TimeoutStopSec= in the unit
# above this + 5 s (a drop-in: systemctl edit outpost).
#OUTPOST_STOP_GRACE=10s
#OUTPOST_PUSHGATEWAY_URL=
#OUTPOST_CA_FILE=/etc/outpost/ca.pem
#OUTPOST_CLIENT_CERT=/etc/outpost/client.pem
#OUTPOST_CLIENT_KEY=/etc/outpost/client.key
#OUTPOST_LOG_LEVEL=info
#OUTPOST_LOG_FORMAT=text
# State dir: systemd sets $STATE_DIRECTORY=/var/lib/outpost; leave unset.
#OUTPOST_STATE_DIR=
#OUTPOST_CONFIG_DIR=
EOF

# Empty on purpose: the unit's LoadCredential= needs the file to exist. Put the
# registration key in it (one line) when a manager is configured.
create_once "$KEY_FILE" 0600 0:0 </dev/null

ensure_parent "$(dirname "$UNIT_DST")"
install_file "$UNIT_SRC" "$UNIT_DST" 0644

# --- systemd ---------------------------------------------------------------
if ! $REAL; then
    say "systemctl: skipped (--root $ROOT); on the target: systemctl daemon-reload && systemctl enable --now --no-block outpost"
elif [ ! -d /run/systemd/system ]; then
    say "systemctl: skipped (systemd is not running); later: systemctl daemon-reload && systemctl enable --now --no-block outpost"
else
    systemctl daemon-reload
    say "systemctl daemon-reload: done"
    # --no-block: the unit has no start timeout and reports READY=1 only once
    # the agent has registered, so a blocking start would wait for the manager.
    if systemctl is-enabled --quiet outpost && systemctl is-active --quiet outpost; then
        say "service outpost: already enabled and running"
        if $CHANGED; then
            systemctl try-restart --no-block outpost
            say "service outpost: restart queued (binary or unit changed)"
        fi
    else
        systemctl enable --now --no-block outpost
        say "service outpost: enabled, start queued (see: systemctl status outpost)"
    fi
    if [ ! -s "$KEY_FILE" ]; then
        say "note: $KEY_FILE is empty; with OUTPOST_MANAGER_URL set, put the registration key in it and: systemctl restart --no-block outpost"
    fi
fi
