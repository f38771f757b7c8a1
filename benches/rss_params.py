#!/usr/bin/env python3
"""Resident memory of a real xxl-edge process around runs with large params or GLUE sources.

Issue 9 item 16: after runs with 4 MiB params (or many 1 MiB GLUE versions) the process must
return near its idle footprint. This starts the binary (debug or release) with a temp data dir,
a fake admin on 127.0.0.1 that accepts every callback, and a command handler `true`; posts
`/run` one trigger at a time, waiting for each callback; and prints VmRSS/VmHWM from
/proc/PID/status before, during and after.

    python3 benches/rss_params.py [--bin target/debug/xxl-edge] [--runs 100] [--mib 4]
        [--glue] [--jobs 1] [--settle 5] [--env NAME=VALUE ...] [--wrap "heaptrack -o F"]

`--glue` sends a new GLUE_SHELL version of `--mib` MiB source per run instead of params.
`--jobs N` spreads the runs over N jobIds (N workers). `--env` passes an environment variable
to the executor (e.g. MALLOC_ARENA_MAX=2, GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072).
Loopback only; every loop is bounded in count and time. Python 3 standard library only.
"""

import argparse
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

GUARD = 60.0  # seconds any single wait may take


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[k] = v.strip()
    return out


def executor_pid(proc, cfg):
    """The executor's own pid: the child itself, or the process a --wrap tool started."""
    for _ in range(200):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and cfg.encode() in argv and not argv[0].endswith(b"sh"):
                if b"heaptrack" not in argv[0]:
                    return int(d)
        time.sleep(0.05)
    return proc.pid


def kb(s):
    return int(s.split()[0]) if s else 0


class Admin(http.server.BaseHTTPRequestHandler):
    calls = {}
    cond = threading.Condition()

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n)
        if self.path.endswith("/callback"):
            items = json.loads(body or b"[]")
            with Admin.cond:
                for it in items:
                    Admin.calls[it["logId"]] = it
                Admin.cond.notify_all()
        reply = b'{"code":200,"msg":null,"content":null}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *a):
        pass


def wait_callback(log_id):
    deadline = time.monotonic() + GUARD
    with Admin.cond:
        while log_id not in Admin.calls:
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit(f"no callback for logId {log_id} within {GUARD} s")
            Admin.cond.wait(left)
        return Admin.calls[log_id]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"XXL-JOB-ACCESS-TOKEN": "t", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=GUARD) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug/xxl-edge")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--mib", type=float, default=4)
    ap.add_argument("--glue", action="store_true")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--env", action="append", default=[])
    # e.g. --wrap "heaptrack -o /tmp/ht": the numbers are then the wrapper's, its report is the point.
    ap.add_argument("--wrap", default="")
    a = ap.parse_args()

    admin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    port = free_port()
    data = tempfile.TemporaryDirectory(prefix="rss-params-")
    cfg = os.path.join(data.name, "xxl-edge.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""
[admin]
addresses = ["http://127.0.0.1:{admin.server_address[1]}/xxl-job-admin"]
access_token = "t"
[executor]
app_name = "rss"
ip = "127.0.0.1"
listen = "127.0.0.1"
port = {port}
data_dir = "{data.name}/data"
[store]
min_free_bytes = 0
[glue]
enabled = ["shell"]
[handlers.big]
command = ["true"]
"""
        )
    env = dict(os.environ)
    for e in a.env:
        k, _, v = e.partition("=")
        env[k] = v
    proc = subprocess.Popen(
        a.wrap.split() + [a.bin, "serve", "-c", cfg],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(data.name, "stderr.log"), "w"),
    )
    pid = proc.pid
    try:
        deadline = time.monotonic() + GUARD
        while True:
            try:
                post(port, "/beat", b"{}")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("executor did not start")
                time.sleep(0.05)
        time.sleep(1)
        pid = executor_pid(proc, cfg)
        idle = status(pid)
        size = int(a.mib * 1024 * 1024)
        what = "GLUE source" if a.glue else "params"
        print(f"binary {a.bin}; {a.runs} runs of {a.mib} MiB {what} over {a.jobs} job(s); env {a.env}")
        print(f"idle:   VmRSS {idle['VmRSS']:>10}  VmHWM {idle['VmHWM']:>10}  RssAnon {idle['RssAnon']}  threads {idle['Threads']}")
        peak_rss = 0
        t0 = time.monotonic()
        for i in range(1, a.runs + 1):
            # Each run's big text differs, as real params would.
            big = (f"{i:08d}" * (size // 8 + 1))[:size]
            job = 1 + (i - 1) % a.jobs
            t = {
                "jobId": job, "executorHandler": "big", "executorParams": big,
                "executorBlockStrategy": "SERIAL_EXECUTION", "executorTimeout": 0,
                "logId": i, "logDateTime": 1717171717000, "glueType": "BEAN",
                "glueSource": "", "glueUpdatetime": 1, "broadcastIndex": 0, "broadcastTotal": 1,
            }
            if a.glue:
                t.update(executorHandler="", executorParams="x", glueType="GLUE_SHELL",
                         glueSource="#!/bin/bash\nexit 0\n#" + big, glueUpdatetime=1000 + i)
            body = json.dumps(t).encode()
            del big, t
            r = post(port, "/run", body)
            del body
            if r.get("code") != 200:
                sys.exit(f"/run {i} refused: {r}")
            c = wait_callback(i)
            if c.get("handleCode") != 200:
                print(f"run {i}: {c.get('handleCode')} {c.get('handleMsg')}")
            s = status(pid)
            peak_rss = max(peak_rss, kb(s["VmRSS"]))
            if i in (1, 2, 5, 12) or i % 25 == 0 or i == a.runs:
                print(f"run {i:>4}: VmRSS {s['VmRSS']:>10}  VmHWM {s['VmHWM']:>10}  RssAnon {s['RssAnon']}")
        dt = time.monotonic() - t0
        time.sleep(a.settle)
        after = status(pid)
        print(f"after {a.settle:g} s idle: VmRSS {after['VmRSS']:>10}  VmHWM {after['VmHWM']:>10}  RssAnon {after['RssAnon']}")
        print(f"summary: idle {kb(idle['VmRSS'])} kB, peak sampled {peak_rss} kB, after {kb(after['VmRSS'])} kB, HWM {kb(after['VmHWM'])} kB, {a.runs / dt:.1f} runs/s")
    finally:
        if pid != proc.pid:
            # Stop the executor itself, so a wrapper (heaptrack) sees it exit and writes its report.
            os.kill(pid, 15)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        admin.shutdown()


if __name__ == "__main__":
    main()
