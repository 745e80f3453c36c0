#!/usr/bin/python3
"""A psutil heartbeat agent: the peer that benches/agent.rs measures outpost against.

Why this exists: the issue asks what outpost costs "against a psutil heartbeat
loop (RSS, CPU per collection)", because that loop is what an operator would
write instead of deploying outpost. This file is that loop, written the way a
careful author would write it, so the comparison is measured rather than
quoted. Every interval it collects the metrics outpost's heartbeat carries
(protocol section 5: CPU overall and per core, memory and swap, load,
filesystems, disk and network rates, process counts, temperatures, uptime)
with psutil, builds the same heartbeat body (section 3.2) and POSTs it with
urllib, with the headers of section 1, to the manager's /v1/agent/heartbeat.

It is a benchmark peer, not a second agent: no tasks, no state directory, no
backoff beyond "try again next interval".

    psutil_heartbeat.py URL INTERVAL_S              heartbeat until killed
    psutil_heartbeat.py URL INTERVAL_S --count N    N collections back to back,
                                                    then one JSON line of CPU
                                                    per collection on stdout

The key is read from OUTPOST_AGENT_KEY and the name from OUTPOST_AGENT_NAME
(default: the hostname), as outpost reads them. Debian: apt-get install
python3-psutil, and run it with /usr/bin/python3.
"""

import argparse
import json
import os
import platform
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid

import psutil

VERSION = "0.1"


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def r2(x):
    return round(x, 2)


class Collector:
    """One metrics snapshot per call; keeps the previous counters for rates."""

    def __init__(self):
        self.prev_at = None
        self.prev_disks = {}
        self.prev_nics = {}
        # Start the CPU counters now: psutil measures from the previous call.
        psutil.cpu_times_percent(interval=None)
        psutil.cpu_percent(interval=None, percpu=True)

    def snapshot(self):
        now = time.monotonic()
        dt = now - self.prev_at if self.prev_at is not None else None
        snap = {"at": rfc3339(time.time())}

        t = psutil.cpu_times_percent(interval=None)
        per_core = psutil.cpu_percent(interval=None, percpu=True)
        if dt is not None:
            snap["cpu"] = {
                "usage_percent": r2(max(0.0, 100.0 - t.idle - t.iowait)),
                "user_percent": r2(t.user + t.nice),
                "system_percent": r2(t.system + t.irq + t.softirq),
                "iowait_percent": r2(t.iowait),
                "steal_percent": r2(t.steal),
                "idle_percent": r2(t.idle),
                "per_core_usage_percent": [r2(c) for c in per_core],
            }

        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        snap["memory"] = {
            "total_bytes": vm.total,
            "available_bytes": vm.available,
            "used_bytes": vm.total - vm.available,
            "usage_percent": r2(vm.percent),
            "buffers_bytes": vm.buffers,
            "cached_bytes": vm.cached,
            "swap_total_bytes": swap.total,
            "swap_used_bytes": swap.used,
        }

        one, five, fifteen = psutil.getloadavg()
        snap["load"] = {"one": r2(one), "five": r2(five), "fifteen": r2(fifteen)}

        filesystems = []
        devices = set()
        for part in psutil.disk_partitions(all=False):
            if part.device in devices:  # a bind mount of one already seen
                continue
            devices.add(part.device)
            try:
                u = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            filesystems.append({
                "mount": part.mountpoint,
                "fs_type": part.fstype,
                "total_bytes": u.total,
                "free_bytes": u.total - u.used,
                "available_bytes": u.free,
                "usage_percent": r2(u.percent),
            })
        snap["filesystems"] = filesystems

        # perdisk=True lists partitions and loop/ram devices too: keep whole
        # disks (those in /sys/block), as outpost does.
        whole = set(os.listdir("/sys/block"))
        disks = []
        counters = psutil.disk_io_counters(perdisk=True)
        for name, c in counters.items():
            if name not in whole or name.startswith(("loop", "ram", "zram")):
                continue
            d = {"device": name}
            p = self.prev_disks.get(name)
            if p is not None and dt:
                d["read_bytes_per_s"] = r2((c.read_bytes - p.read_bytes) / dt)
                d["write_bytes_per_s"] = r2((c.write_bytes - p.write_bytes) / dt)
                d["reads_per_s"] = r2((c.read_count - p.read_count) / dt)
                d["writes_per_s"] = r2((c.write_count - p.write_count) / dt)
            disks.append(d)
        self.prev_disks = counters
        snap["disks"] = disks

        network = []
        nics = psutil.net_io_counters(pernic=True)
        for name, c in nics.items():
            if name == "lo":
                continue
            n = {"interface": name}
            p = self.prev_nics.get(name)
            if p is not None and dt:
                n["rx_bytes_per_s"] = r2((c.bytes_recv - p.bytes_recv) / dt)
                n["tx_bytes_per_s"] = r2((c.bytes_sent - p.bytes_sent) / dt)
                n["rx_packets_per_s"] = r2((c.packets_recv - p.packets_recv) / dt)
                n["tx_packets_per_s"] = r2((c.packets_sent - p.packets_sent) / dt)
            n.update(rx_errors=c.errin, tx_errors=c.errout,
                     rx_dropped=c.dropin, tx_dropped=c.dropout)
            network.append(n)
        self.prev_nics = nics
        snap["network"] = network

        # psutil has no running/blocked counts short of reading every
        # /proc/<pid>/stat; the kernel keeps both in /proc/stat.
        running = blocked = 0
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running "):
                    running = int(line.split()[1])
                elif line.startswith(b"procs_blocked "):
                    blocked = int(line.split()[1])
        snap["processes"] = {"total": len(psutil.pids()),
                             "running": running, "blocked": blocked}

        temperatures = []
        for chip, entries in psutil.sensors_temperatures().items():
            for e in entries:
                temperatures.append({
                    "sensor": f"{chip}/{e.label}" if e.label else chip,
                    "celsius": r2(e.current),
                })
        snap["temperatures"] = temperatures

        snap["uptime_s"] = r2(time.time() - psutil.boot_time())
        self.prev_at = now
        return snap


class Client:
    """The manager: the common headers, one POST per call, JSON answers."""

    def __init__(self, base, name, key):
        self.base = base.rstrip("/")
        self.headers = {
            "X-Agent-Name": name,
            "X-Agent-Key": key,
            "X-API-Version": "1",
            "User-Agent": f"psutil-heartbeat/{VERSION}",
            "Content-Type": "application/json",
        }

    def post(self, path, body, idempotency_key):
        data = json.dumps(body, separators=(",", ":")).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method="POST",
            headers={**self.headers, "Idempotency-Key": idempotency_key})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = resp.read()
        return (json.loads(answer) if answer else {}), len(data)


class HeartbeatAgent:
    def __init__(self, client, name, interval):
        self.client = client
        self.name = name
        self.interval = interval
        self.instance_id = str(uuid.uuid4())
        self.started = time.monotonic()
        self.agent_id = None
        self.registrations = 0
        self.seq = 0
        self.collector = Collector()
        self.last_body_bytes = 0
        self.snapshot_cpu = 0.0

    def register(self):
        self.registrations += 1
        vm = psutil.virtual_memory()
        body = {
            "name": self.name,
            "agent_version": f"psutil-heartbeat/{VERSION}",
            "instance_id": self.instance_id,
            "agent_id": self.agent_id,
            "system": {
                "hostname": socket.gethostname(), "os": "linux",
                "kernel": platform.release(), "arch": platform.machine(),
                "boot_time": rfc3339(psutil.boot_time()),
                "cpu_count": psutil.cpu_count(), "mem_total_bytes": vm.total,
            },
            "capabilities": {"task_types": [], "max_concurrent_tasks": 0},
            "tasks": [],
        }
        answer, _ = self.client.post(
            "/v1/agent/register", body,
            f"register:{self.instance_id}:{self.registrations}")
        self.agent_id = answer["agent_id"]
        self.interval = float(answer.get("heartbeat_interval_s") or self.interval)

    def beat(self):
        """One collection: snapshot, JSON body, POST, answer."""
        t = time.process_time()
        snap = self.collector.snapshot()
        self.snapshot_cpu += time.process_time() - t
        self.seq += 1
        body = {
            "agent_id": self.agent_id,
            "instance_id": self.instance_id,
            "seq": self.seq,
            "sent_at": rfc3339(time.time()),
            "uptime_s": r2(time.monotonic() - self.started),
            "metrics": snap,
            "tasks": [],
            "pending_updates": 0,
        }
        answer, self.last_body_bytes = self.client.post(
            "/v1/agent/heartbeat", body,
            f"heartbeat:{self.instance_id}:{self.seq}")
        if answer.get("heartbeat_interval_s"):
            self.interval = float(answer["heartbeat_interval_s"])

    def run_forever(self):
        next_due = time.monotonic()
        while True:
            try:
                if self.agent_id is None:
                    self.register()
                self.beat()
            except urllib.error.HTTPError as e:
                print(f"psutil-heartbeat: manager answered {e.code}", file=sys.stderr)
                if e.code in (401, 403, 404):
                    self.agent_id = None
            except (OSError, ValueError, KeyError) as e:
                print(f"psutil-heartbeat: {e}", file=sys.stderr)
            # Fixed rate, like outpost: a late beat does not shift the rest.
            next_due += self.interval
            now = time.monotonic()
            if next_due < now:
                next_due = now
            time.sleep(next_due - now)

    def measure(self, count):
        """`count` collections back to back: CPU time of each, on average."""
        self.register()
        self.beat()  # warm-up: first CPU and rate readings, lazy imports
        self.snapshot_cpu = 0.0
        t0, w0 = time.process_time(), time.monotonic()
        for _ in range(count):
            self.beat()
        cpu = (time.process_time() - t0) / count
        wall = (time.monotonic() - w0) / count
        print(json.dumps({
            "collections": count,
            "cpu_ms": round(cpu * 1000, 3),
            "snapshot_cpu_ms": round(self.snapshot_cpu / count * 1000, 3),
            "wall_ms": round(wall * 1000, 3),
            "body_bytes": self.last_body_bytes,
            "psutil": psutil.__version__,
            "python": platform.python_version(),
        }))

def main():
    parser = argparse.ArgumentParser(description="psutil heartbeat loop (benchmark peer)")
    parser.add_argument("url", help="manager base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("interval", type=float, help="heartbeat interval in seconds")
    parser.add_argument("--count", type=int, default=0,
                        help="run N collections back to back and print CPU per collection")
    args = parser.parse_args()
    name = os.environ.get("OUTPOST_AGENT_NAME") or socket.gethostname()
    key = os.environ.get("OUTPOST_AGENT_KEY", "")
    agent = HeartbeatAgent(Client(args.url, name, key), name, args.interval)
    if args.count > 0:
        agent.measure(args.count)
    else:
        agent.run_forever()


if __name__ == "__main__":
    main()
