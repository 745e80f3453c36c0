"""A small fake manager for the boot test's manager mode (PROTOCOL.md section 3).

Usage: fake-manager.py PORT KEY STATE_DIR TASKS_JSON

Answers register, heartbeat, claim (hands each task of TASKS_JSON, a JSON
list of Tasks, out once) and status; any other key than KEY gets 401. What it
saw goes to STATE_DIR: register.jsonl, heartbeat.count, status/<task>.jsonl,
headers.json (the last register's headers, names in lower case, without the key).
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

PORT, KEY, STATE, TASKS = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
LOCK = threading.Lock()
QUEUE = json.load(open(TASKS))
HEARTBEATS = [0]


def append(path, record):
    with LOCK, open(os.path.join(STATE, path), "a") as f:
        f.write(json.dumps(record) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self.answer(400, {"error": "bad json"})
        if self.headers.get("X-Agent-Key") != KEY:
            append("rejected.jsonl", {"path": self.path})
            return self.answer(401, {"error": "bad key"})
        path = urlparse(self.path).path
        if path == "/v1/agent/register":
            append("register.jsonl", body)
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "x-agent-key"}
            with LOCK, open(os.path.join(STATE, "headers.json"), "w") as f:
                json.dump(headers, f)
            return self.answer(200, {"agent_id": "boot-agent-1", "heartbeat_interval_s": 1, "poll_wait_s": 2})
        if path == "/v1/agent/heartbeat":
            with LOCK:
                HEARTBEATS[0] += 1
                with open(os.path.join(STATE, "heartbeat.count"), "w") as f:
                    f.write(str(HEARTBEATS[0]))
            return self.answer(200, {})
        if path == "/v1/agent/tasks/claim":
            with LOCK:
                take = QUEUE[: max(1, int(body.get("max_tasks") or 1))]
                del QUEUE[: len(take)]
            if take:
                return self.answer(200, {"tasks": take})
            threading.Event().wait(1)  # a short long poll
            return self.answer(204)
        prefix, suffix = "/v1/agent/tasks/", "/status"
        if path.startswith(prefix) and path.endswith(suffix):
            task = unquote(path[len(prefix) : -len(suffix)])
            os.makedirs(os.path.join(STATE, "status"), exist_ok=True)
            append(os.path.join("status", task + ".jsonl"), body)
            return self.answer(200, {})
        return self.answer(404, {"error": "no such endpoint"})


if __name__ == "__main__":
    os.makedirs(STATE, exist_ok=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
