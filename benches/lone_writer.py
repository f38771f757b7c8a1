#!/usr/bin/env python3
"""Bytes written to disk per run for a lone writer: one trigger at a time at a steady rate.

Starts the release binary on its defaults (durable store) with a fake admin on 127.0.0.1 that
acknowledges every callback, sends RUNS triggers of `demoJobHandler` at RATE per second (each
waits for its HTTP answer), waits until every callback arrived, and reads `write_bytes` from
/proc/PID/io before and after. The executor's own log goes to /dev/null (journald's under
systemd).

    cargo build --release && python3 benches/lone_writer.py [--rate 10] [--runs 300] [--bin PATH]
"""
import argparse, http.server, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def write_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0

def flushes(url):
    """Group-commit flushes so far, from the executor's /metrics."""
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    except Exception:
        return 0
    for line in text.splitlines():
        if line.startswith("xxl_edge_store_flush_duration_seconds_count"):
            return int(float(line.split()[-1]))
    return 0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--bin", default="target/release/xxl-edge")
    a = ap.parse_args()
    done = set(); lock = threading.Lock()

    class Admin(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.endswith("/callback"):
                with lock:
                    for item in json.loads(body or b"[]"):
                        done.add(item.get("logId"))
            b = b'{"code":200,"msg":null}'
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
        def log_message(self, *args):
            pass

    admin_port, port = free_port(), free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", admin_port), Admin)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    data = tempfile.mkdtemp()
    proc = subprocess.Popen([a.bin, "serve", "--listen", "127.0.0.1", "--port", str(port),
                             "--data-dir", os.path.join(data, "data"),
                             "--admin", f"http://127.0.0.1:{admin_port}/xxl-job-admin"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/beat", data=b"{}", method="POST"), timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    time.sleep(2)
    before, flushes_before = write_bytes(proc.pid), flushes(url)
    start = time.time()
    for i in range(a.runs):
        due = start + i / a.rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        body = json.dumps({"jobId": 1, "executorHandler": "demoJobHandler", "logId": i + 1,
                           "logDateTime": int(time.time() * 1000), "glueType": "BEAN",
                           "executorBlockStrategy": "SERIAL_EXECUTION"}).encode()
        r = json.load(urllib.request.urlopen(urllib.request.Request(url + "/run", data=body, method="POST"), timeout=10))
        if r.get("code") != 200:
            print("refused:", r, file=sys.stderr); break
    deadline = time.time() + 60
    while time.time() < deadline:
        with lock:
            if len(done) >= a.runs:
                break
        time.sleep(0.05)
    time.sleep(1.5)  # the run-log flusher's bound, so the last lines are counted too
    after, flushes_after = write_bytes(proc.pid), flushes(url)
    proc.terminate(); proc.wait(timeout=30); srv.shutdown()
    with lock:
        n = len(done)
    print(f"lone writer at {a.rate:g} runs/s: {n} of {a.runs} runs called back, "
          f"{(after - before) / max(n, 1):.0f} bytes written to disk per run, "
          f"{(flushes_after - flushes_before) / max(n, 1):.2f} flushes per run")

if __name__ == "__main__":
    main()
