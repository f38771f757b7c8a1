#!/usr/bin/env bash
# benches/idle-rss.sh BINARY [REPEATS] — idle resident memory of an xxl-edge binary, plain and with
# TLS on the executor port (issue 13: "idle RSS <= 8 MB with TLS on").
#
# Each run: a fresh data dir in a temp dir, `serve` on 127.0.0.1 (a free port from 18300 up), the
# admin at a closed port (http://127.0.0.1:9, so registration fails and retries, as on a device
# whose admin is away; ADMIN_URL overrides), one POST /beat with body {} (polled until it answers
# code 200, so only the first success is served; https with `curl -k` when TLS is on), 3 s of
# idle, then VmRSS/VmHWM from /proc/PID/status, Rss and Anonymous from /proc/PID/smaps_rollup
# (file-backed = Rss - Anonymous), the Rss of the binary's own mappings, and the thread count.
# Then SIGTERM.
#
# Knobs: MODES ("plain tls"), IDLE_SECS (3), ADMIN_URL, EXTRA_TOML (lines appended to the config,
# e.g. $'[store]\ncache_bytes = 1048576'), and the process environment is passed on, so
# XXL_EDGE_WORKER_THREADS=1 or MALLOC_ARENA_MAX=1 can be tried from outside. THREADS_DETAIL=1 prints
# the threads' names (/proc/PID/task/*/comm) of the first run of each mode. PAGEOUT=1 then pages
# out the process's file-backed pages (benches/pageout.py), sends one more /beat, waits IDLE_SECS
# and prints VmRSS/Anon/File again ("after pageout"): the pages idle serving keeps using, without
# those only the start touched. COLD=1 drops the binary's own pages from the page cache before
# each start (posix_fadvise DONTNEED on that one file; no process may be running it), so it starts
# as after a reboot: what is resident then depends on the kernel's readahead and fault-around.
set -euo pipefail

BIN=$(realpath "${1:?usage: benches/idle-rss.sh BINARY [REPEATS]}")
REPEATS=${2:-3}
MODES=${MODES:-plain tls}
IDLE_SECS=${IDLE_SECS:-3}
ADMIN_URL=${ADMIN_URL:-http://127.0.0.1:9/xxl-job-admin}
[ -x "$BIN" ] || { echo "not executable: $BIN" >&2; exit 1; }

WORK=$(mktemp -d /tmp/xxl-edge-idle-rss.XXXXXX)
PID=""
cleanup() { [ -z "$PID" ] || kill -KILL "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port_free() { ! (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=18300

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >"$WORK/openssl.log" 2>&1

echo "binary: $BIN ($(stat -c %s "$BIN") bytes; $(file -b "$BIN" | cut -d, -f1-2))"
echo "machine: $(nproc) cores, kernel $(uname -r); idle ${IDLE_SECS}s after one /beat"
printf '%-5s %3s %9s %9s %9s %9s %9s %8s\n' mode run VmRSS VmHWM Anon File BinRss threads

for mode in $MODES; do
  for run in $(seq 1 "$REPEATS"); do
    port=$((port + 1)); while ! port_free "$port"; do port=$((port + 1)); done
    d=$WORK/$mode-$run; mkdir -p "$d"
    scheme=http; tls=""
    if [ "$mode" = tls ]; then
      scheme=https
      tls=$(printf 'tls_cert = "%s"\ntls_key = "%s"' "$WORK/cert.pem" "$WORK/key.pem")
    fi
    cat >"$d/xxl-edge.toml" <<EOF
[admin]
addresses = ["$ADMIN_URL"]
timeout_secs = 1
[executor]
listen = "127.0.0.1"
port = $port
data_dir = "$d/data"
$tls
${EXTRA_TOML:-}
EOF
    if [ "${COLD:-0}" = 1 ]; then
      python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$BIN"
    fi
    env -u http_proxy -u https_proxy -u all_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY \
      NO_PROXY=127.0.0.1,localhost "$BIN" serve --config "$d/xxl-edge.toml" >"$d/log" 2>&1 &
    PID=$!
    beat() { curl -sk --noproxy '*' --max-time 5 -X POST -H 'Content-Type: application/json' \
               --data '{}' "$scheme://127.0.0.1:$port/beat" 2>/dev/null || true; }
    ok=0
    for _ in $(seq 1 300); do   # at most ~30 s until /beat answers
      kill -0 "$PID" 2>/dev/null || break
      r=$(beat)
      if grep -q '"code":200' <<<"$r"; then ok=1; break; fi
      sleep 0.1
    done
    if [ $ok = 0 ]; then echo "$mode run $run: /beat never answered 200; log:" >&2
      tail -20 "$d/log" >&2; exit 1; fi
    sleep "$IDLE_SECS"
    st=/proc/$PID/status
    rss=$(awk '/^VmRSS/{print $2}' "$st"); hwm=$(awk '/^VmHWM/{print $2}' "$st")
    thr=$(awk '/^Threads/{print $2}' "$st")
    r_rss=$(awk '/^Rss:/{print $2}' "/proc/$PID/smaps_rollup")
    anon=$(awk '/^Anonymous:/{print $2}' "/proc/$PID/smaps_rollup")
    binrss=$(awk -v b="$BIN" '/^[0-9a-f]+-[0-9a-f]+ /{cur=($6==b)} cur && /^Rss:/{s+=$2} END{print s+0}' "/proc/$PID/smaps")
    printf '%-5s %3s %6s kB %6s kB %6s kB %6s kB %6s kB %8s\n' \
      "$mode" "$run" "$rss" "$hwm" "$anon" "$((r_rss - anon))" "$binrss" "$thr"
    if [ "${THREADS_DETAIL:-0}" = 1 ] && [ "$run" = 1 ]; then
      echo "  threads: $(cat /proc/"$PID"/task/*/comm | sort | uniq -c | awk '{printf "%s%s ", $2, ($1>1?"x"$1:"")}')"
      echo "  largest mappings (Rss kB, of it Anonymous kB, name):"
      awk '/^[0-9a-f]+-[0-9a-f]+ /{name=($6==""?"[anon]":$6)} /^Rss:/{s[name]+=$2} /^Anonymous:/{a[name]+=$2}
           END{for(n in s) if(s[n]>0) printf "    %6d %6d %s\n", s[n], a[n], n}' \
        "/proc/$PID/smaps" | sort -rn | head -8
    fi
    if [ "${PAGEOUT:-0}" = 1 ]; then
      python3 "$(dirname "$0")/pageout.py" "$PID" >/dev/null
      grep -q '"code":200' <<<"$(beat)" || { echo "/beat after pageout failed" >&2; exit 1; }
      sleep "$IDLE_SECS"
      rss2=$(awk '/^Rss:/{print $2}' "/proc/$PID/smaps_rollup")
      anon2=$(awk '/^Anonymous:/{print $2}' "/proc/$PID/smaps_rollup")
      bin2=$(awk -v b="$BIN" '/^[0-9a-f]+-[0-9a-f]+ /{cur=($6==b)} cur && /^Rss:/{s+=$2} END{print s+0}' "/proc/$PID/smaps")
      printf '%-5s %3s %6s kB %9s %6s kB %6s kB %6s kB  (after pageout, 1 /beat, %ss)\n' \
        "$mode" "$run" "$rss2" "" "$anon2" "$((rss2 - anon2))" "$bin2" "$IDLE_SECS"
    fi
    kill -TERM "$PID"
    for _ in $(seq 1 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  done
done
