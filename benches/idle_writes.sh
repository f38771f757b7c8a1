#!/usr/bin/env bash
# Bytes an idle executor writes to disk: the release binary on its defaults, registering with a
# reachable fake admin on 127.0.0.1 every 30 s, no trigger. Reads write_bytes from /proc/PID/io
# 10 s after the start (start-up writes excluded) and again after SECS (default 30) seconds.
# The executor's own log goes to /dev/null: under systemd it goes to journald, not to this
# process's writes.
#   cargo build --release && benches/idle_writes.sh [BINARY]
set -euo pipefail
BIN=${1:-target/release/xxl-edge}
SECS=${SECS:-30}
PORT=${ADMIN_PORT:-18080}
D=$(mktemp -d)
cat > "$D/admin.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        b = b'{"code":200,"msg":null}'
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
python3 "$D/admin.py" "$PORT" &
ADMIN=$!
trap 'kill $ADMIN 2>/dev/null || true; rm -rf "$D"' EXIT
"$BIN" serve --listen 127.0.0.1 --port 0 --data-dir "$D/data" \
  --admin "http://127.0.0.1:$PORT/xxl-job-admin" >/dev/null 2>&1 &
PID=$!
sleep 10
a=$(awk '/^write_bytes/ {print $2}' "/proc/$PID/io")
sleep "$SECS"
b=$(awk '/^write_bytes/ {print $2}' "/proc/$PID/io")
kill -TERM "$PID"
wait "$PID" || true
echo "idle: $((b - a)) bytes written in $SECS s ($(( (b - a) / SECS )) B/s)"
