#!/usr/bin/env bash
# .ci/cross.sh [TRIPLE...] — cross-build xxl-edge for ARM and smoke-test it under qemu-user.
#
# For a Debian 12 (bookworm) x86_64 machine, run as root, no Docker. The script installs what it
# needs itself (see docs/cross-build.md for the full list):
#   * Debian's rustc-web/cargo-web 1.96 (bookworm-security) with its std source (rust-web-src),
#     used through `-Zbuild-std` (RUSTC_BOOTSTRAP=1; compiler and source are the same Debian build);
#   * zig + cargo-zigbuild from PyPI in /opt/zig-venv, the linker for the static musl targets;
#   * Debian's cross gcc for the glibc targets; qemu-user to run the results.
#
# Default targets: aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf (static, the device
# artifacts). Also accepted: aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, and the
# zig glibc-pinned forms such as aarch64-unknown-linux-gnu.2.17.
#
# Environment knobs:
#   CROSS_TARGET_DIR    cargo target dir (default: $REPO/target/cross; kept apart from target/ so
#                       this never waits on, or invalidates, a concurrent native build)
#   CROSS_SKIP_INSTALL  1 = skip apt/pip/rustup steps (the version floor is still checked)
#   CROSS_UNWIND_PROBE  0 = skip the panic=unwind probe (default 1)
#   CROSS_KEEP          1 = keep smoke-test data dirs and configs
#
# Output: one line per target (triple, size of the stripped binary in bytes, smoke ok/FAIL, the
# https smoke ok/FAIL, and informational timings), a summary, and a non-zero exit if any target
# failed. The https smoke test makes its certificate with openssl at run time (installed with the
# rest; a key committed to the repository would be one more secret-looking file to explain).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=xxl-edge
RUSTC_FLOOR=1.88.0          # highest rust-version in Cargo.lock (icu_* 2.4.0); bookworm main has 1.85
# zig 0.15.2, not 0.17.1: from 0.16 zig links its own malloc instead of musl's, and its calloc
# writes zeros over every byte it returns, so the ~28 MB that sled calloc's at start (41
# statistics histograms of 516 KiB, its page table) all became resident: idle RSS 34.7 MB
# instead of 7.2 MB (x86_64 musl, TLS on; benches/idle-rss.md).
ZIGLANG_VERSION=0.15.2
ZIGBUILD_VERSION=0.24.0
ZIG_VENV=/opt/zig-venv

if [ $# -gt 0 ]; then TARGETS=("$@"); else
  TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf); fi
export CARGO_TARGET_DIR=${CROSS_TARGET_DIR:-$REPO/target/cross}
mkdir -p "$CARGO_TARGET_DIR/logs"
LOGDIR=$CARGO_TARGET_DIR/logs

say() { printf '[cross %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Targets: validate, and work out which packages they need.
base_triple() { echo "${1%%.[0-9]*}"; }   # aarch64-unknown-linux-gnu.2.17 -> aarch64-unknown-linux-gnu
need_zig=0; need_gcc_a64=0; need_gcc_arm=0
for T in "${TARGETS[@]}"; do
  B=$(base_triple "$T")
  case $B in
    aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf|x86_64-unknown-linux-musl) need_zig=1 ;;
    aarch64-unknown-linux-gnu)     need_gcc_a64=1; [ "$B" = "$T" ] || need_zig=1 ;;
    armv7-unknown-linux-gnueabihf) need_gcc_arm=1; [ "$B" = "$T" ] || need_zig=1 ;;
    *) die "unsupported target '$T' (aarch64/armv7 musl or gnu only)" ;;
  esac
done

# ---------------------------------------------------------------------------------------------
# Install.
t_install=$(date +%s)
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
if [ "${CROSS_SKIP_INSTALL:-0}" != 1 ]; then
  [ "$(id -u)" = 0 ] || die "run as root (apt-get), or set CROSS_SKIP_INSTALL=1 on a prepared machine"
  export DEBIAN_FRONTEND=noninteractive
  apt() { apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 "$@"; }
  # Do NOT `dpkg --add-architecture armhf/arm64` here: the mirror's armhf index for
  # bookworm-security has been seen stale, which makes apt drop the whole security suite
  # (silently falling back to rustc-web 1.85); multiarch libc6:arm64 also breaks `qemu -L`.
  ok=0
  for i in 1 2 3 4 5; do
    if apt update -q >"$LOGDIR/apt-update.log" 2>&1; then ok=1; break; fi
    say "apt-get update failed (try $i/5), retrying in 10 s"; tail -3 "$LOGDIR/apt-update.log" >&2; sleep 10
  done
  [ $ok = 1 ] || die "apt-get update kept failing; see $LOGDIR/apt-update.log"
  pkgs=(rustc-web cargo-web rust-web-src qemu-user curl openssl python3-venv ca-certificates)
  [ $need_gcc_a64 = 1 ] && pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  [ $need_gcc_arm = 1 ] && pkgs+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
  say "apt-get install ${pkgs[*]}"
  apt install -y -q --no-install-recommends "${pkgs[@]}" >"$LOGDIR/apt-install.log" 2>&1 \
    || { tail -20 "$LOGDIR/apt-install.log" >&2; die "apt-get install failed"; }

  if [ $need_zig = 1 ]; then
    have=$("$ZIG_VENV/bin/pip" freeze 2>/dev/null || true)
    if ! grep -qx "ziglang==$ZIGLANG_VERSION" <<<"$have" || ! grep -qx "cargo-zigbuild==$ZIGBUILD_VERSION" <<<"$have"; then
      say "creating $ZIG_VENV (ziglang==$ZIGLANG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION)"
      [ -x "$ZIG_VENV/bin/pip" ] || python3 -m venv "$ZIG_VENV"
      ok=0
      for i in 1 2 3; do
        "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check \
          "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" && { ok=1; break; }
        say "pip install failed (try $i/3)"; sleep 10
      done
      [ $ok = 1 ] || die "pip install of ziglang/cargo-zigbuild failed"
    fi
  fi
  if command -v rustup >/dev/null; then
    rustup toolchain list | grep -q '^debian-web' || rustup toolchain link debian-web /usr
  fi
fi
t_install=$(( $(date +%s) - t_install ))

# ---------------------------------------------------------------------------------------------
# Toolchain environment.
if command -v rustup >/dev/null; then
  rustup toolchain list | grep -q '^debian-web' || die "rustup toolchain debian-web is not linked"
  export RUSTUP_TOOLCHAIN=debian-web     # rustup's own stable cannot build Debian's std source
else
  export PATH="/usr/bin:$PATH"           # no rustup: Debian's /usr/bin/{rustc,cargo} directly
fi
[ $need_zig = 1 ] && export PATH="$ZIG_VENV/bin:$PATH"   # cargo-zigbuild finds zig via `python -m ziglang`
export RUSTC_BOOTSTRAP=1                  # unlocks -Zbuild-std on the stable Debian compiler

v=$(rustc -V | awk '{print $2}')
[ "$(printf '%s\n' "$RUSTC_FLOOR" "$v" | sort -V | head -1)" = "$RUSTC_FLOOR" ] \
  || die "rustc $v is older than $RUSTC_FLOOR: bookworm-security was probably not read (apt fell back to bookworm main's rustc-web)"
[ -d "$(rustc --print sysroot)/lib/rustlib/src/rust/library" ] || die "std source missing (rust-web-src)"
say "rustc $v ($(command -v rustc) -> $(rustc --print sysroot)), target dir $CARGO_TARGET_DIR"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
# build-std never creates rustlib/<musl>/lib/self-contained; zig provides crt*.o, musl libc.a
# and libunwind instead.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C link-self-contained=no"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no"
# The device build for an x86_64 host, run natively: what benches/idle-rss.sh measures.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C link-self-contained=no"
if [ -n "${RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
  say "warning: RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS would override the per-target flags; unsetting them"
  unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
fi
# The release profile keeps panic = "unwind" (a panicking handler fails its run, not the process),
# so std is rebuilt with the unwinding runtime.
BUILD_STD=-Zbuild-std=std,panic_unwind
LOCKED=(); git -C "$REPO" ls-files --error-unmatch Cargo.lock >/dev/null 2>&1 && LOCKED=(--locked)

# No proxy for anything the smoke tests start: all their traffic stays on 127.0.0.1.
NOPROXY_ENV=(env -u http_proxy -u https_proxy -u all_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY
             NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost)

qemu_for() {   # qemu command line for a (base) triple
  case $1 in x86_64-*) echo ""; return ;; esac   # native on an x86_64 host
  local a=qemu-arm; case $1 in aarch64-*) a=qemu-aarch64 ;; esac
  case $1 in
    *-gnu|*-gnueabihf)
      local sys=/usr/aarch64-linux-gnu mark=libc6:arm64
      case $1 in armv7-*) sys=/usr/arm-linux-gnueabihf mark=libc6:armhf ;; esac
      # With multiarch libc6 installed, `-L sysroot` mixes two ld.so/libc builds and hangs in
      # pthread_create: run without -L then.
      if dpkg -s "$mark" >/dev/null 2>&1; then echo "$a"; else echo "$a -L $sys"; fi ;;
    *) echo "$a" ;;
  esac
}

cargo_build() {   # T (full triple) [extra cargo args...]
  local T=$1; shift
  case $T in
    *musl*|*.[0-9]*) cargo zigbuild --release --target "$T" "$BUILD_STD" "$@" ;;
    *)               cargo build    --release --target "$T" "$BUILD_STD" "$@" ;;
  esac
}

LIVE_PID=""   # the qemu process of the smoke test in progress, killed if the script dies
cleanup() { [ -z "$LIVE_PID" ] || kill -KILL "$LIVE_PID" 2>/dev/null || true; }
trap cleanup EXIT

stop_kill() { kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; LIVE_PID=""; }

# SIGTERM, then at most 30 s for an exit with status 0. On failure STOP_MSG says why (and a
# process still running is killed). Not in a subshell: `wait` needs the process as its child.
stop_term() {
  local pid=$1 st=0 i
  STOP_MSG=""
  kill -TERM "$pid"
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done   # <= 30 s
  if kill -0 "$pid" 2>/dev/null; then
    STOP_MSG="did not exit within 30 s of SIGTERM"
    stop_kill "$pid"; return 1
  fi
  wait "$pid" || st=$?; LIVE_PID=""
  [ "$st" = 0 ] || { STOP_MSG="exit status $st after SIGTERM"; return 1; }
}

port_free() { ! (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

post() {   # PORT PATH BODY -> prints response body
  curl -sS --noproxy '*' --max-time 5 -X POST -H 'XXL-JOB-ACCESS-TOKEN: smoke' \
    -H 'Content-Type: application/json' --data "$3" "http://127.0.0.1:$1$2" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Unwind probe: proves that panic=unwind really unwinds with this std + linker on the target
# (catch_unwind, and a panicking thread joined as Err), under the same release profile.
PROBE=$CARGO_TARGET_DIR/unwind-probe
write_probe() {
  mkdir -p "$PROBE/src"
  cat >"$PROBE/Cargo.toml" <<'EOF'
[package]
name = "unwind-probe"
version = "0.0.0"
edition = "2021"
publish = false
[workspace]
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "unwind"
EOF
  cat >"$PROBE/src/main.rs" <<'EOF'
struct Guard;
impl Drop for Guard { fn drop(&mut self) { println!("drop-ran"); } }
fn main() {
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| { let _g = Guard; panic!("probe") });
    assert!(r.is_err());
    let j = std::thread::spawn(|| -> u32 { panic!("thread probe") }).join();
    assert!(j.is_err());
    println!("unwind-ok");
}
EOF
}

probe_unwind() {   # T B QEMU -> echo ok/FAIL
  local T=$1 B=$2 Q=$3 out
  [ -f "$PROBE/Cargo.toml" ] || write_probe
  if ! (cd "$PROBE" && cargo_build "$T") >"$LOGDIR/probe-$T.log" 2>&1; then echo FAIL; return; fi
  out=$(timeout 60 $Q "$CARGO_TARGET_DIR/$B/release/unwind-probe" 2>&1 || true)
  echo "$out" >>"$LOGDIR/probe-$T.log"
  if grep -q drop-ran <<<"$out" && grep -q unwind-ok <<<"$out"; then echo ok; else echo FAIL; fi
}

# ---------------------------------------------------------------------------------------------
# Smoke test: serve on 127.0.0.1, /beat, /run of a command handler, /log until it ended, SIGTERM.
SMOKE_MSG=""; FIRST_BEAT=""; RSS=""
smoke_config() {   # PORT DATA_DIR -> the [admin] and [executor] tables both smoke tests start with
  cat <<EOF
[admin]
addresses = ["http://127.0.0.1:9/xxl-job-admin"]
access_token = "smoke"
timeout_secs = 1
[executor]
listen = "127.0.0.1"
port = $1
data_dir = "$2"
EOF
}

smoke() {   # T B QEMU PORT BINARY -> returns 0/1, sets SMOKE_MSG FIRST_BEAT RSS
  local T=$1 B=$2 Q=$3 port=$4 bin=$5
  local data=/tmp/xxl-edge-smoke-$T cfg=/tmp/xxl-edge-smoke-$T.toml log=$LOGDIR/smoke-$T.log
  local pid t0 r i st
  SMOKE_MSG=""; FIRST_BEAT="-"; RSS="-"
  rm -rf "$data"
  { smoke_config "$port" "$data"; cat <<EOF
[handlers.echo]
command = ["/bin/sh", "-c", "echo smoke-\$XXL_JOB_PARAM"]
EOF
  } >"$cfg"
  t0=$(date +%s%N)
  # shellcheck disable=SC2086  # $Q is a word list on purpose
  "${NOPROXY_ENV[@]}" $Q "$bin" serve --config "$cfg" >"$log" 2>&1 &
  pid=$!; LIVE_PID=$pid

  r=""
  for i in $(seq 1 600); do           # at most ~60 s (+ curl time) until /beat answers
    kill -0 "$pid" 2>/dev/null || { SMOKE_MSG="exited before answering /beat"; break; }
    r=$(post "$port" /beat '')
    if grep -q '"code":200' <<<"$r"; then
      FIRST_BEAT=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.2fs", (b-a)/1e9}'); break
    fi
    sleep 0.1
  done
  if [ "$FIRST_BEAT" = - ]; then
    [ -n "$SMOKE_MSG" ] || SMOKE_MSG="/beat never answered code 200 (last: ${r:-none})"
    stop_kill "$pid"; return 1
  fi

  r=$(post "$port" /run '{"jobId":1,"executorHandler":"echo","executorParams":"ok","logId":1,"logDateTime":1717171717000,"glueType":"BEAN","executorBlockStrategy":"SERIAL_EXECUTION","executorTimeout":0,"broadcastIndex":0,"broadcastTotal":1}')
  if ! grep -q '"code":200' <<<"$r"; then
    SMOKE_MSG="/run answered: ${r:-nothing}"
    stop_kill "$pid"; return 1
  fi
  local logok=0
  for i in $(seq 1 120); do           # at most ~60 s until the run's log has ended with 200
    r=$(post "$port" /log '{"logId":1,"logDateTim":1717171717000,"fromLineNum":1}')
    if grep -q 'smoke-ok' <<<"$r" && grep -q 'Result: handleCode=200' <<<"$r"; then logok=1; break; fi
    sleep 0.5
  done
  RSS=$(awk '/^VmHWM/{print $2" kB"}' "/proc/$pid/status" 2>/dev/null || echo -)
  if [ $logok = 0 ]; then
    SMOKE_MSG="/log never showed smoke-ok + handleCode=200 (last: ${r:-nothing})"
    stop_kill "$pid"; return 1
  fi

  stop_term "$pid" || { SMOKE_MSG=$STOP_MSG; return 1; }
  [ "${CROSS_KEEP:-0}" = 1 ] || rm -rf "$data" "$cfg"
  return 0
}

# ---------------------------------------------------------------------------------------------
# TLS smoke test: the same binary with executor.tls_cert/tls_key (a self-signed certificate for
# 127.0.0.1 made here), one https /beat verified against that certificate, then SIGTERM.
TLS_MSG=""; TLS_RSS=""
smoke_tls() {   # T QEMU PORT BINARY -> returns 0/1, sets TLS_MSG TLS_RSS
  local T=$1 Q=$2 port=$3 bin=$4
  local dir=/tmp/xxl-edge-smoke-tls-$T log=$LOGDIR/smoke-tls-$T.log
  local pid r i st beat=0
  TLS_MSG=""; TLS_RSS="-"
  command -v openssl >/dev/null || { TLS_MSG="openssl not found (it is installed unless CROSS_SKIP_INSTALL=1)"; return 1; }
  rm -rf "$dir"; mkdir -p "$dir"
  if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
      -keyout "$dir/key.pem" -out "$dir/cert.pem" >"$log" 2>&1; then
    TLS_MSG="openssl could not make the test certificate (see $log)"; return 1
  fi
  { smoke_config "$port" "$dir/data"; cat <<EOF
tls_cert = "$dir/cert.pem"
tls_key = "$dir/key.pem"
EOF
  } >"$dir/xxl-edge.toml"
  # shellcheck disable=SC2086  # $Q is a word list on purpose
  "${NOPROXY_ENV[@]}" $Q "$bin" serve --config "$dir/xxl-edge.toml" >>"$log" 2>&1 &
  pid=$!; LIVE_PID=$pid
  r=""
  for i in $(seq 1 600); do           # at most ~60 s (+ curl time) until https /beat answers
    kill -0 "$pid" 2>/dev/null || { TLS_MSG="exited before answering https /beat"; break; }
    r=$(curl -sS --noproxy '*' --max-time 5 --cacert "$dir/cert.pem" -X POST \
          -H 'XXL-JOB-ACCESS-TOKEN: smoke' "https://127.0.0.1:$port/beat" 2>&1 || true)
    if grep -q '"code":200' <<<"$r"; then beat=1; break; fi
    sleep 0.1
  done
  if [ $beat = 0 ]; then
    [ -n "$TLS_MSG" ] || TLS_MSG="https /beat never answered code 200 (last: ${r:-none})"
    stop_kill "$pid"; return 1
  fi
  TLS_RSS=$(awk '/^VmHWM/{print $2" kB"}' "/proc/$pid/status" 2>/dev/null || echo -)
  stop_term "$pid" || { TLS_MSG=$STOP_MSG; return 1; }
  [ "${CROSS_KEEP:-0}" = 1 ] || rm -rf "$dir"
  return 0
}

# ---------------------------------------------------------------------------------------------
say "install/check step: ${t_install}s; targets: ${TARGETS[*]}"
cd "$REPO"
fail=0; port=18100; RESULTS=()
for T in "${TARGETS[@]}"; do
  B=$(base_triple "$T"); Q=$(qemu_for "$B"); bin=$CARGO_TARGET_DIR/$B/release/$BIN
  say "building $T (log: $LOGDIR/build-$T.log)"
  t=$(date +%s)
  if ! cargo_build "$T" "${LOCKED[@]}" --bin "$BIN" >"$LOGDIR/build-$T.log" 2>&1; then
    tail -40 "$LOGDIR/build-$T.log" >&2
    RESULTS+=("$T size=- build=FAIL smoke=FAIL"); fail=1; continue
  fi
  bt=$(( $(date +%s) - t ))
  size=$(stat -c %s "$bin")
  unwind=skipped
  if [ "${CROSS_UNWIND_PROBE:-1}" = 1 ]; then
    t=$(date +%s); unwind=$(probe_unwind "$T" "$B" "$Q"); pt=$(( $(date +%s) - t ))
    say "unwind probe $T: $unwind (${pt}s, log: $LOGDIR/probe-$T.log)"
    [ "$unwind" = ok ] || fail=1
  fi
  port=$((port + 1)); while ! port_free "$port"; do port=$((port + 1)); done
  say "smoke-testing $T under '$Q' on 127.0.0.1:$port"
  if smoke "$T" "$B" "$Q" "$port" "$bin"; then s=ok; else s=FAIL; fail=1
    say "smoke $T FAILED: $SMOKE_MSG"; tail -20 "$LOGDIR/smoke-$T.log" >&2; fi
  port=$((port + 1)); while ! port_free "$port"; do port=$((port + 1)); done
  say "https smoke-testing $T on 127.0.0.1:$port"
  if smoke_tls "$T" "$Q" "$port" "$bin"; then ts=ok; else ts=FAIL; fail=1
    say "https smoke $T FAILED: $TLS_MSG"; tail -20 "$LOGDIR/smoke-tls-$T.log" >&2; fi
  line="$T size=$size bytes smoke=$s https-smoke=$ts build=${bt}s first-beat=$FIRST_BEAT qemu-VmHWM=$RSS https-VmHWM=$TLS_RSS unwind=$unwind"
  echo "$line"; RESULTS+=("$line")
done

echo "---- cross summary (rustc $v, install ${t_install}s) ----"
printf '%s\n' "${RESULTS[@]}"
[ $fail = 0 ] || { echo "cross: FAILED" >&2; exit 1; }
echo "cross: all targets ok"
