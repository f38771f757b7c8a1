#!/usr/bin/env bash
# .ci/version-test.sh — build.rs gives `xxl-edge --version` the right commit wherever the source
# comes from: a git work tree, an export without .git (also one unpacked inside another
# repository, which must not lend its commit), a `cargo package` tarball (.cargo_vcs_info.json),
# and the XXL_EDGE_GIT_COMMIT override. The real build.rs is compiled and run as cargo runs it.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/xxl-edge-version-test.XXXXXX")
inside=$REPO/target/tmp/version-test-export
trap 'rm -rf "$tmp" "$inside"' EXIT
rustc --edition 2021 -o "$tmp/build-script" "$REPO/build.rs"

passed=0 failed=0
expect() {   # DESC WANT GOT
  if [ "$2" = "$3" ]; then passed=$((passed + 1)); echo "ok   $1"
  else failed=$((failed + 1)); echo "FAIL $1: want '$2', got '$3'"; fi
}
script() {   # DIR [VAR=value...] -> the build script's output, run as cargo would
  local dir=$1; shift
  (cd "$tmp" && env -u XXL_EDGE_GIT_COMMIT "$@" CARGO_MANIFEST_DIR="$dir" \
     TARGET=aarch64-unknown-linux-musl "$tmp/build-script")
}
commit() { script "$@" | sed -n 's/^cargo:rustc-env=XXL_EDGE_GIT_COMMIT=//p'; }

head=$(git -C "$REPO" rev-parse --short=12 HEAD)
out=$(script "$REPO")
expect "work tree: the commit of HEAD" "$head" "$(sed -n 's/^cargo:rustc-env=XXL_EDGE_GIT_COMMIT=//p' <<<"$out")"
expect "the target triple" aarch64-unknown-linux-musl \
  "$(sed -n 's/^cargo:rustc-env=XXL_EDGE_BUILD_TARGET=//p' <<<"$out")"
missing=0
while read -r path; do [ -e "$path" ] || missing=$((missing + 1)); done \
  < <(sed -n 's/^cargo:rerun-if-changed=//p' <<<"$out" | grep '^/')
expect "work tree: watches HEAD and its branch, only files that exist" "0 2+" \
  "$missing $( [ "$(grep -c '^cargo:rerun-if-changed=/' <<<"$out")" -ge 2 ] && echo 2+)"

mkdir -p "$tmp/export" "$inside"
git -C "$REPO" archive HEAD | tar -x -C "$tmp/export"
expect "export without .git" unknown "$(commit "$tmp/export")"
git -C "$REPO" archive HEAD | tar -x -C "$inside"
expect "export unpacked inside another repository" unknown "$(commit "$inside")"
printf '{\n  "git": {\n    "sha1": "0123456789abcdef0123456789abcdef01234567"\n  },\n  "path_in_vcs": ""\n}\n' \
  >"$tmp/export/.cargo_vcs_info.json"
expect "cargo package tarball (.cargo_vcs_info.json)" 0123456789ab "$(commit "$tmp/export")"
expect "XXL_EDGE_GIT_COMMIT wins" 1a2b3c "$(commit "$tmp/export" XXL_EDGE_GIT_COMMIT=1a2b3c)"

echo "version-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
