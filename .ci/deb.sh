#!/usr/bin/env bash
# .ci/deb.sh BINARY ARCH [OUTDIR] — build the Debian package of xxl-edge around a binary that is
# already built (the static musl ones from .ci/cross.sh, or a native one), with dpkg-deb alone.
#
#   ARCH     the Debian architecture: amd64, arm64 or armhf; checked against the binary's ELF
#            header, so a binary cannot be packaged under the wrong label.
#   OUTDIR   where xxl-edge_<version>_<arch>.deb goes (default target/deb); its path is printed.
#
# The man pages and shell completions come from `cargo run --example dist-docs` (native, any
# profile: they do not depend on the target). The rest is in dist/: the unit, the commented
# config (a conffile), the sysusers entry, the copyright file and the maintainer scripts.
#
# Environment knobs:
#   XXL_EDGE_DEB_VERSION      full package version (default: Cargo.toml's version, then -1)
#   XXL_EDGE_DEB_MAINTAINER   Maintainer field
#   XXL_EDGE_DEB_COMPRESSION  dpkg-deb -Z type (default xz; gzip is faster for throwaway test
#                             packages)
#
# Why not cargo-deb: installing it is a 1 min 43 s build on this 2-core machine for every fresh
# CI machine, and what it adds over dpkg-deb (control fields from Cargo.toml, dpkg-shlibdeps)
# does not apply to static binaries; the maintainer scripts are ours either way.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "deb.sh: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: .ci/deb.sh BINARY ARCH [OUTDIR]"
BIN=$1 ARCH=$2 OUT=${3:-$REPO/target/deb}
[ -f "$BIN" ] || die "no binary at $BIN"
case $ARCH in amd64|arm64|armhf) ;; *) die "ARCH must be amd64, arm64 or armhf (got '$ARCH')" ;; esac
command -v dpkg-deb >/dev/null || die "dpkg-deb is required (package dpkg)"

# shellcheck source=.ci/elf.sh
. "$REPO/.ci/elf.sh"
got=$(elf_arch "$BIN")
case "$ARCH:$got" in
  "$ARCH:$ARCH") ;;
  armhf:arm) echo "deb.sh: warning: $BIN does not mark its float ABI; packaging it as armhf" >&2 ;;
  *) die "$BIN is a $got binary, not $ARCH" ;;
esac

# ---------------------------------------------------------------------------------------------
# Version and dependencies.
cargo_version=$(awk -F'"' '/^\[/{p=($0=="[package]")} p && /^version *=/{print $2; exit}' "$REPO/Cargo.toml")
[ -n "$cargo_version" ] || die "cannot read the version from Cargo.toml"
VERSION=${XXL_EDGE_DEB_VERSION:-$cargo_version-1}

# Static binaries (the musl builds) need nothing. A glibc build needs the glibc it was linked
# against: the highest GLIBC_x.y symbol version it references.
depends=()
command -v readelf >/dev/null || die "readelf is required (package binutils, there with any Rust toolchain)"
needed=$(readelf -d "$BIN" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\].*/\1/p')
need_libc=0
for lib in $needed; do
  case $lib in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) need_libc=1 ;;
    libgcc_s.so.1) depends+=("libgcc-s1") ;;
    *) die "$BIN needs $lib: add its Debian package to deb.sh" ;;
  esac
done
if [ $need_libc = 1 ]; then
  glibc=$(readelf -V "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  depends=("libc6 (>= ${glibc:-2.17})" "${depends[@]}")
fi

# ---------------------------------------------------------------------------------------------
# Stage the tree.
work=$(mktemp -d "${TMPDIR:-/tmp}/xxl-edge-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
docs=$work/docs
(cd "$REPO" && cargo run --quiet --locked --example dist-docs -- "$docs") >/dev/null \
  || die "cargo run --example dist-docs failed"

put() {   # MODE SRC DEST (DEST relative to the package root)
  install -D -m "$1" "$2" "$root/$3"
}
put 0755 "$BIN"                          usr/bin/xxl-edge
put 0640 "$REPO/dist/xxl-edge.toml"      etc/xxl-edge/xxl-edge.toml
chmod 0750 "$root/etc/xxl-edge"
put 0644 "$REPO/dist/xxl-edge.service"   lib/systemd/system/xxl-edge.service
put 0644 "$REPO/dist/xxl-edge.sysusers"  usr/lib/sysusers.d/xxl-edge.conf
put 0644 "$REPO/README.md"               usr/share/doc/xxl-edge/README.md
put 0644 "$REPO/dist/copyright"          usr/share/doc/xxl-edge/copyright
put 0644 "$docs/completions/xxl-edge.bash" usr/share/bash-completion/completions/xxl-edge
put 0644 "$docs/completions/_xxl-edge"     usr/share/zsh/vendor-completions/_xxl-edge
put 0644 "$docs/completions/xxl-edge.fish" usr/share/fish/vendor_completions.d/xxl-edge.fish
for page in "$docs"/man/*.1; do
  put 0644 "$page" "usr/share/man/man1/$(basename "$page")"
  gzip -9n "$root/usr/share/man/man1/$(basename "$page")"
done

# Debian wants a changelog in every binary package; the project's history is its git log.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
MAINTAINER=${XXL_EDGE_DEB_MAINTAINER:-xxl-edge developers <xxl-edge@example.invalid>}
commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
{
  echo "xxl-edge ($VERSION) unstable; urgency=medium"
  echo
  echo "  * Package of xxl-edge $cargo_version, commit $commit; the changes are in the"
  echo "    project's git history."
  echo
  echo " -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$work/changelog.Debian.gz"
put 0644 "$work/changelog.Debian.gz"     usr/share/doc/xxl-edge/changelog.Debian.gz

mkdir -p "$root/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "$REPO/dist/debian/$s" "$root/DEBIAN/$s"; done
echo /etc/xxl-edge/xxl-edge.toml >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's#^\./##' | LC_ALL=C sort \
  | xargs md5sum) >"$root/DEBIAN/md5sums"
installed_kb=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
{
  echo "Package: xxl-edge"
  echo "Version: $VERSION"
  echo "Architecture: $ARCH"
  echo "Maintainer: $MAINTAINER"
  echo "Installed-Size: $installed_kb"
  if [ ${#depends[@]} -gt 0 ]; then dep=$(printf '%s, ' "${depends[@]}"); echo "Depends: ${dep%, }"; fi
  echo "Section: admin"
  echo "Priority: optional"
  echo "Description: durable, observable XXL-JOB executor for edge devices"
  echo " xxl-edge runs the jobs of an XXL-JOB admin on a device: commands, GLUE scripts"
  echo " and built-in handlers, with a journal on disk so that a crash or power cut"
  echo " neither loses nor repeats a run, Prometheus metrics and OTLP traces."
  echo " ."
  echo " The package installs the xxl-edge.service systemd unit (hardened, enabled, not"
  echo " started until admin.addresses is set in /etc/xxl-edge/xxl-edge.toml), the"
  echo " xxl-edge system user and its data directory /var/lib/xxl-edge."
} >"$root/DEBIAN/control"

mkdir -p "$OUT"
deb=$OUT/xxl-edge_${VERSION}_${ARCH}.deb
# Reproducible: every file dated at the commit's time (dpkg-deb dates the archive members by
# SOURCE_DATE_EPOCH too), so the same inputs give the same package.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Z"${XXL_EDGE_DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
