#!/usr/bin/env bash
# .ci/deb-test.sh --amd64 BIN [--arm64 BIN] [--armhf BIN] — build the Debian packages with
# .ci/deb.sh and check them; install, upgrade, remove and purge the amd64 one on this machine.
#
# Every package: dpkg-deb --info (fields, conffiles, maintainer scripts) and --contents (the
# exact file list, modes, root ownership); the packaged binary is the given one, of the right
# ELF architecture, and its --version names the version, a target of that architecture and
# this checkout's commit (ARM binaries run under qemu-user, as .ci/cross.sh runs them).
#
# amd64, installed with dpkg -i (needs root): /usr/bin/xxl-edge --version, the conffile and its
# permissions, the unit (enabled, not started), the user and the data directory, man pages and
# completions, `systemd-analyze verify` and `security` (whose score the README must quote);
# `serve` run as the service user against the installed config and data directory; an upgrade
# that keeps the operator's config edit and the data; remove (data, config and user stay);
# purge (nothing stays). The machine is left as it was found: the script refuses to start if
# any trace of xxl-edge is installed, and purges on any exit. Tools it installs (systemd for
# systemd-analyze, curl) stay.
#
# A binary that is not stripped (a debug build) is stripped into a temporary copy first.
# Output: one line per check and "deb-test: N passed, N failed".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=.ci/elf.sh
. "$REPO/.ci/elf.sh"
say() { printf '[deb-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

declare -A BIN=()
while [ $# -gt 0 ]; do
  case $1 in
    --amd64|--arm64|--armhf) [ $# -ge 2 ] || die "$1 needs a path"; BIN[${1#--}]=$2; shift 2 ;;
    *) die "usage: .ci/deb-test.sh --amd64 BIN [--arm64 BIN] [--armhf BIN]" ;;
  esac
done
[ -n "${BIN[amd64]:-}" ] || die "--amd64 BIN is required (the package installed on this machine)"
[ "$(id -u)" = 0 ] || die "run as root: the amd64 package is installed with dpkg -i"

passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok   $*"; }
bad()  { failed=$((failed + 1)); echo "FAIL $*"; }
check() { local d=$1; shift; if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi; }
same() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: want '$2', got '$3'"; fi; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/xxl-edge-deb-test.XXXXXX")
SERVE_PID=""
INSTALLED_BY_US=0
cleanup() {
  [ -z "$SERVE_PID" ] || kill -KILL "$SERVE_PID" 2>/dev/null || true
  if [ $INSTALLED_BY_US = 1 ] && dpkg-query -W -f='${db:Status-Status}' xxl-edge 2>/dev/null | grep -qv '^not-installed$'; then
    say "purging xxl-edge after a failure"; dpkg --purge xxl-edge >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Tools: systemd-analyze (Debian's systemd package), curl; dpkg-deb and qemu-user are there
# (dpkg is essential; .ci/cross.sh installs qemu-user).
need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -q >"$tmp/apt.log" 2>&1 || { tail -5 "$tmp/apt.log" >&2; die "apt-get update failed"; }
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}" >>"$tmp/apt.log" 2>&1 \
    || { tail -20 "$tmp/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi

# ---------------------------------------------------------------------------------------------
# Build the packages.
version=$(awk -F'"' '/^\[/{p=($0=="[package]")} p && /^version *=/{print $2; exit}' "$REPO/Cargo.toml")
head=$(git -C "$REPO" rev-parse --short=12 HEAD)
declare -A TRIPLE_RE=([amd64]='x86_64-unknown-linux-(gnu|musl)' [arm64]='aarch64-unknown-linux-(musl|gnu)'
                      [armhf]='armv7-unknown-linux-(musleabihf|gnueabihf)')
declare -A QEMU=([amd64]="" [arm64]=qemu-aarch64 [armhf]=qemu-arm)
declare -A DEB=()
for arch in amd64 arm64 armhf; do
  [ -n "${BIN[$arch]:-}" ] || continue
  b=${BIN[$arch]}
  [ -f "$b" ] || die "no $arch binary at $b"
  if [ "$arch" = amd64 ] && readelf -S "$b" 2>/dev/null | grep -q '\.debug_info'; then
    strip -o "$tmp/xxl-edge-amd64" "$b"; b=$tmp/xxl-edge-amd64; BIN[$arch]=$b
    comp=gzip   # a throwaway package of a debug build: compress fast
  else
    comp=xz
  fi
  t=$(date +%s)
  DEB[$arch]=$(XXL_EDGE_DEB_COMPRESSION=$comp "$REPO/.ci/deb.sh" "$b" "$arch" "$tmp/out")
  say "built ${DEB[$arch]##*/} ($(stat -c %s "${DEB[$arch]}") bytes, $(( $(date +%s) - t )) s)"
done

# The files every package holds, whatever the architecture.
expected_contents() {
  cat <<'EOF'
drwxr-x--- etc/xxl-edge/
-rw-r----- etc/xxl-edge/xxl-edge.toml
-rw-r--r-- lib/systemd/system/xxl-edge.service
-rwxr-xr-x usr/bin/xxl-edge
-rw-r--r-- usr/lib/sysusers.d/xxl-edge.conf
-rw-r--r-- usr/share/bash-completion/completions/xxl-edge
-rw-r--r-- usr/share/doc/xxl-edge/README.md
-rw-r--r-- usr/share/doc/xxl-edge/changelog.Debian.gz
-rw-r--r-- usr/share/doc/xxl-edge/copyright
-rw-r--r-- usr/share/fish/vendor_completions.d/xxl-edge.fish
-rw-r--r-- usr/share/man/man1/xxl-edge-check-config.1.gz
-rw-r--r-- usr/share/man/man1/xxl-edge-serve.1.gz
-rw-r--r-- usr/share/man/man1/xxl-edge-state.1.gz
-rw-r--r-- usr/share/man/man1/xxl-edge-trigger.1.gz
-rw-r--r-- usr/share/man/man1/xxl-edge.1.gz
-rw-r--r-- usr/share/zsh/vendor-completions/_xxl-edge
EOF
}

# ---------------------------------------------------------------------------------------------
# Inspect each package.
for arch in amd64 arm64 armhf; do
  [ -n "${DEB[$arch]:-}" ] || continue
  deb=${DEB[$arch]}
  field() { dpkg-deb --field "$deb" "$1"; }
  same "$arch: Package" xxl-edge "$(field Package)"
  same "$arch: Architecture" "$arch" "$(field Architecture)"
  same "$arch: Version" "$version-1" "$(field Version)"
  case "$(elf_arch "${BIN[$arch]}")" in
    amd64) if readelf -d "${BIN[$arch]}" | grep -q 'Shared library: \[libc.so.6\]'; then
             check "$arch: Depends names libc6 for a glibc build" grep -q 'libc6 (>= 2\.' <<<"$(field Depends)"
           else same "$arch: no Depends for a static build" "" "$(field Depends)"; fi ;;
    *) same "$arch: no Depends for a static build" "" "$(field Depends)" ;;
  esac
  same "$arch: conffiles" /etc/xxl-edge/xxl-edge.toml "$(dpkg-deb --info "$deb" conffiles)"
  for s in postinst prerm postrm; do
    check "$arch: $s is a valid sh script" sh -n <(dpkg-deb --info "$deb" "$s")
  done
  # --contents: mode and path of every file and non-trivial directory, all root/root.
  contents=$(dpkg-deb --contents "$deb")
  got=$(awk '{p=$6; sub(/^\.\//, "", p); if (p == "" ) next;
              if ($1 ~ /^d/ && $1 != "drwxr-x---") next; print $1, p}' <<<"$contents" | LC_ALL=C sort)
  same "$arch: --contents lists exactly the expected files and modes" \
    "$(expected_contents | LC_ALL=C sort)" "$got"
  same "$arch: every entry is root/root" "" "$(awk '$2 != "root/root"' <<<"$contents")"
  # The packaged binary: the given one, of this architecture, and it runs.
  x=$tmp/x-$arch; dpkg-deb -x "$deb" "$x"
  check "$arch: the packaged binary is the one given" cmp "${BIN[$arch]}" "$x/usr/bin/xxl-edge"
  same "$arch: ELF architecture" "$arch" "$(elf_arch "$x/usr/bin/xxl-edge")"
  # shellcheck disable=SC2086  # QEMU is empty for amd64
  v=$(timeout 60 ${QEMU[$arch]} "$x/usr/bin/xxl-edge" --version 2>&1 || true)
  if [[ $v =~ ^xxl-edge\ ${version//./\\.}\ \((${TRIPLE_RE[$arch]}),\ commit\ ${head}\)$ ]]; then
    ok "$arch: --version${QEMU[$arch]:+ under ${QEMU[$arch]}}: $v"
  else bad "$arch: --version${QEMU[$arch]:+ under ${QEMU[$arch]}} printed '$v'; want xxl-edge $version (${TRIPLE_RE[$arch]}, commit $head)"; fi
done

# ---------------------------------------------------------------------------------------------
# Install the amd64 package here, only on a machine without any trace of xxl-edge.
state_snapshot() {
  {
    dpkg-query -W -f='${db:Status-Status}\n' xxl-edge 2>/dev/null || echo not-installed
    getent passwd xxl-edge || true
    getent group xxl-edge || true
    dpkg-statoverride --list | grep xxl-edge || true
    find /etc/xxl-edge /var/lib/xxl-edge /usr/bin/xxl-edge /lib/systemd/system/xxl-edge.service \
         /usr/lib/sysusers.d/xxl-edge.conf /usr/share/doc/xxl-edge 2>/dev/null || true
    find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
         /var/lib/systemd/deb-systemd-helper-masked -name '*xxl-edge*' 2>/dev/null || true
  } | LC_ALL=C sort
}
before=$(state_snapshot)
[ "$before" = not-installed ] || die "this machine already has traces of xxl-edge; the test would not leave it as found:
$before"

deb=${DEB[amd64]}
INSTALLED_BY_US=1
dpkg -i "$deb" >"$tmp/dpkg-i.log" 2>&1 || { cat "$tmp/dpkg-i.log" >&2; die "dpkg -i failed"; }
ok "amd64: dpkg -i"
same "installed" installed "$(dpkg-query -W -f='${db:Status-Status}' xxl-edge)"
v=$(/usr/bin/xxl-edge --version 2>&1 || true)
check "/usr/bin/xxl-edge --version: $v" grep -Eq "^xxl-edge ${version//./\\.} \(x86_64-unknown-linux-(gnu|musl), commit ${head}\)$" <<<"$v"
check "the conffile is registered" grep -q '/etc/xxl-edge/xxl-edge.toml [0-9a-f]' <<<"$(dpkg-query -W -f='${Conffiles}' xxl-edge)"
check "the conffile is the shipped config" cmp "$REPO/dist/xxl-edge.toml" /etc/xxl-edge/xxl-edge.toml
same "/etc/xxl-edge: root:xxl-edge 750" "root:xxl-edge 750" "$(stat -c '%U:%G %a' /etc/xxl-edge)"
same "the conffile: root:xxl-edge 640 (it holds the token)" "root:xxl-edge 640" "$(stat -c '%U:%G %a' /etc/xxl-edge/xxl-edge.toml)"
check "the unit is the one in dist/" cmp "$REPO/dist/xxl-edge.service" /lib/systemd/system/xxl-edge.service
same "the unit is enabled (multi-user.target.wants)" /lib/systemd/system/xxl-edge.service \
  "$(readlink /etc/systemd/system/multi-user.target.wants/xxl-edge.service 2>/dev/null)"
IFS=: read -r _ _ uid _ _ home shell <<<"$(getent passwd xxl-edge)"
check "user xxl-edge: a system user (uid $uid)" test "${uid:-1000}" -lt 1000
same "user xxl-edge: home and shell" "/var/lib/xxl-edge /usr/sbin/nologin" "$home $shell"
check "group xxl-edge" getent group xxl-edge
same "/var/lib/xxl-edge: xxl-edge:xxl-edge 700" "xxl-edge:xxl-edge 700" "$(stat -c '%U:%G %a' /var/lib/xxl-edge 2>&1)"
if command -v man >/dev/null; then
  same "man -w xxl-edge finds the page" /usr/share/man/man1/xxl-edge.1.gz "$(man -w xxl-edge 2>&1)"
else check "man page in place" test -s /usr/share/man/man1/xxl-edge.1.gz; fi
check "man pages are valid gzip" gzip -t /usr/share/man/man1/xxl-edge.1.gz /usr/share/man/man1/xxl-edge-serve.1.gz
check "bash completion registers xxl-edge" bash -c '. /usr/share/bash-completion/completions/xxl-edge && complete -p xxl-edge'
check "zsh and fish completions in place" test -s /usr/share/zsh/vendor-completions/_xxl-edge -a -s /usr/share/fish/vendor_completions.d/xxl-edge.fish

# systemd-analyze on the installed unit (offline: no systemd needs to run here).
man_opt=(); command -v man >/dev/null || man_opt=(--man=no)
if out=$(systemd-analyze verify "${man_opt[@]}" /lib/systemd/system/xxl-edge.service 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify: clean"
else bad "systemd-analyze verify: $out"; fi
score=$(systemd-analyze security --offline=true /lib/systemd/system/xxl-edge.service 2>/dev/null \
  | sed -n 's/.*Overall exposure level for xxl-edge.service: \([0-9.]*\) .*/\1/p')
if [ -n "$score" ] && grep -q "systemd-analyze security.*: $score " "$REPO/README.md"; then
  ok "systemd-analyze security: $score, as the README says"
else bad "systemd-analyze security: ${score:-no score}; the README must quote it as 'systemd-analyze security …: $score '"; fi

# The service's command, as the service's user, with the installed config and data directory.
# (A command prefix, not a function: `… &` of a function would fork a shell, and SIGTERM would
# go to that shell instead of xxl-edge.)
AS_SERVICE=(setpriv --reuid=xxl-edge --regid=xxl-edge --init-groups
            env -i PATH=/usr/bin:/bin XXL_EDGE_DATA_DIR=/var/lib/xxl-edge)
st=0; msg=$("${AS_SERVICE[@]}" /usr/bin/xxl-edge check-config --config /etc/xxl-edge/xxl-edge.toml 2>&1) || st=$?
if [ $st = 64 ] && grep -q 'invalid admin.addresses: "SET-ME' <<<"$msg"; then
  ok "as shipped, the config stops the service with exit 64 and says to set admin.addresses"
else bad "as shipped, check-config exited $st: $msg"; fi
# Every commented key of the conffile is a real one (unknown keys are errors).
sed -e 's#^addresses = .*#addresses = ["http://127.0.0.1:9/xxl-job-admin"]#' \
    -e 's/^# \([a-z_]* = \)/\1/' -e 's/^# \(\[handlers\.\)/\1/' "$REPO/dist/xxl-edge.toml" >"$tmp/all.toml"
check "the conffile with every commented key set passes check-config" /usr/bin/xxl-edge check-config --config "$tmp/all.toml"
# The operator's edit: an admin address (nothing listens on port 9).
sed -i 's#^addresses = .*#addresses = ["http://127.0.0.1:9/xxl-job-admin"]#' /etc/xxl-edge/xxl-edge.toml
edited=$(md5sum </etc/xxl-edge/xxl-edge.toml)
check "the edited config is readable by the service user and valid" "${AS_SERVICE[@]}" /usr/bin/xxl-edge check-config --config /etc/xxl-edge/xxl-edge.toml

port=18300; while (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
"${AS_SERVICE[@]}" /usr/bin/xxl-edge serve --config /etc/xxl-edge/xxl-edge.toml --listen 127.0.0.1 --port "$port" \
  >"$tmp/serve.log" 2>&1 &
SERVE_PID=$!
beat=""
for _ in $(seq 1 300); do   # at most ~30 s until /beat answers
  kill -0 "$SERVE_PID" 2>/dev/null || break
  beat=$(curl -sS --noproxy '*' --max-time 2 -X POST "http://127.0.0.1:$port/beat" 2>/dev/null || true)
  grep -q '"code":200' <<<"$beat" && break
  sleep 0.1
done
check "serve as xxl-edge answers /beat" grep -q '"code":200' <<<"$beat"
kill -TERM "$SERVE_PID" 2>/dev/null || true
for _ in $(seq 1 300); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done   # <= 30 s
if kill -0 "$SERVE_PID" 2>/dev/null; then
  kill -KILL "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; st="still running 30 s after SIGTERM"
else st=0; wait "$SERVE_PID" || st=$?; fi
SERVE_PID=""
same "serve stops on SIGTERM with exit 0" 0 "$st"
[ "$st" = 0 ] || tail -20 "$tmp/serve.log" >&2
check "the store is in /var/lib/xxl-edge, owned by xxl-edge" \
  test -n "$(find /var/lib/xxl-edge -mindepth 1 -user xxl-edge -print -quit)" -a \
       -z "$(find /var/lib/xxl-edge -mindepth 1 ! -user xxl-edge -print -quit)"
data=$(find /var/lib/xxl-edge -type f | LC_ALL=C sort | xargs md5sum)

# Upgrade: a newer version of the package over the installed one.
up=$(XXL_EDGE_DEB_VERSION="$version-1+upgrade" XXL_EDGE_DEB_COMPRESSION=gzip \
     "$REPO/.ci/deb.sh" "${BIN[amd64]}" amd64 "$tmp/up")
dpkg -i "$up" >"$tmp/dpkg-up.log" 2>&1 || { cat "$tmp/dpkg-up.log" >&2; die "dpkg -i (upgrade) failed"; }
same "upgrade: the new version is installed" "$version-1+upgrade" "$(dpkg-query -W -f='${Version}' xxl-edge)"
same "upgrade: the operator's config edit is kept" "$edited" "$(md5sum </etc/xxl-edge/xxl-edge.toml)"
same "upgrade: config permissions kept" "root:xxl-edge 640" "$(stat -c '%U:%G %a' /etc/xxl-edge/xxl-edge.toml)"
same "upgrade: the data is kept" "$data" "$(find /var/lib/xxl-edge -type f | LC_ALL=C sort | xargs md5sum)"

# Remove: the program goes; config, data and user stay.
dpkg --remove xxl-edge >"$tmp/dpkg-r.log" 2>&1 || { cat "$tmp/dpkg-r.log" >&2; die "dpkg --remove failed"; }
same "remove: package state config-files" config-files "$(dpkg-query -W -f='${db:Status-Status}' xxl-edge)"
check "remove: binary and unit are gone" test ! -e /usr/bin/xxl-edge -a ! -e /lib/systemd/system/xxl-edge.service
same "remove: the edited config stays" "$edited" "$(md5sum </etc/xxl-edge/xxl-edge.toml)"
same "remove: the data stays" "$data" "$(find /var/lib/xxl-edge -type f | LC_ALL=C sort | xargs md5sum)"
check "remove: the user stays" getent passwd xxl-edge

# Purge: nothing of xxl-edge stays.
dpkg --purge xxl-edge >"$tmp/dpkg-p.log" 2>&1 || { cat "$tmp/dpkg-p.log" >&2; die "dpkg --purge failed"; }
after=$(state_snapshot)
same "purge: no package, user, group, statoverride, file or unit state is left" "$before" "$after"
INSTALLED_BY_US=0

echo "deb-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
