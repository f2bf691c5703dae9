#!/usr/bin/env bash
# provision.sh - fetch a vfio-user capable QEMU and a Debian 7.x guest kernel
# into a private cache directory, without touching the host's apt sources.
#
# What it does (unattended, idempotent):
#   1. sets up a private apt configuration (own apt.conf, EMPTY dpkg status,
#      sources trixie + trixie-backports) under $CACHE/apt;
#   2. resolves the trixie-backports candidates of qemu-system-x86 and
#      linux-image-$FLAVOUR (or takes pinned versions from the environment);
#   3. downloads qemu-system-x86 + busybox-static with their whole dependency
#      closure (download-only) and the kernel's real payload packages
#      (linux-binary-*, linux-modules-*, linux-base-*);
#   4. unpacks every .deb with dpkg-deb -x into $CACHE/root, turns absolute
#      symlinks in it into relative ones;
#   5. writes $CACHE/bin/qemu-system-x86_64 (runs QEMU through the root's own
#      dynamic loader), $CACHE/provisioned.env (KEY=VALUE), $CACHE/env.sh
#      (the same, exported) and a stamp file, so that a rerun is instant.
#
# Environment (all optional):
#   TRUSTDEV_CACHE           cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/trustdev)
#   TRUSTDEV_QEMU_VERSION    pin the qemu-system-x86 package version
#                            (e.g. 1:11.1.3+ds-1~bpo13+1); default: trixie-backports candidate
#   TRUSTDEV_KERNEL_VERSION  pin the linux-image-$FLAVOUR package version
#                            (e.g. 7.3.4-1~bpo13+1); default: trixie-backports candidate
#   TRUSTDEV_KERNEL_FLAVOUR  amd64 (default) or cloud-amd64 (smaller, but has
#                            no PCI_TSM / PCI_IDE and builds nvme in)
#   TRUSTDEV_MIRROR          Debian mirror (default http://deb.debian.org/debian)
#   TRUSTDEV_REFRESH=1       ignore the stamp: re-resolve candidates, reprovision
#                            if they changed
#   TRUSTDEV_KEEP_DEBS=1     keep the downloaded .debs in $CACHE/apt/archives
#
# Exit status: 0 on success; non-zero with an "provision.sh: error:" line otherwise.

set -euo pipefail

readonly STAMP_FORMAT=1
readonly PROG=${0##*/}

CACHE=${TRUSTDEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustdev}
FLAVOUR=${TRUSTDEV_KERNEL_FLAVOUR:-amd64}
MIRROR=${TRUSTDEV_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BACKPORTS=trixie-backports

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (exit $?): $BASH_COMMAND"' ERR

case $FLAVOUR in
    amd64 | cloud-amd64) ;;
    *) die "TRUSTDEV_KERNEL_FLAVOUR must be amd64 or cloud-amd64 (got '$FLAVOUR')" ;;
esac

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
ROOT=$CACHE/root
APTDIR=$CACHE/apt
STAMP=$CACHE/stamp
ENVFILE=$CACHE/provisioned.env

# One provisioning at a time per cache (parallel CI jobs share the cache).
exec 9>"$CACHE/.lock"
flock 9

# ---------------------------------------------------------------- fast path
# The stamp records what was provisioned; if it satisfies the request, print
# the versions and stop without touching the network.
stamp_value() { [[ -f $STAMP ]] && awk -v k="$1" 'index($0, k "=") == 1 { print substr($0, length(k) + 2); exit }' "$STAMP"; }

print_summary() {
    # shellcheck disable=SC1090
    (. "$ENVFILE"
     printf 'trustdev guest toolchain in %s\n' "$TRUSTDEV_CACHE"
     printf '  QEMU     %s (package qemu-system-x86 %s)\n' \
         "$TRUSTDEV_QEMU_UPSTREAM_VERSION" "$TRUSTDEV_QEMU_PKG_VERSION"
     printf '  kernel   %s (package linux-image-%s %s)\n' \
         "$TRUSTDEV_KERNEL_RELEASE" "$TRUSTDEV_KERNEL_FLAVOUR" "$TRUSTDEV_KERNEL_PKG_VERSION"
     printf '  busybox  %s\n' "$TRUSTDEV_BUSYBOX_VERSION"
     printf '  wrapper  %s\n' "$TRUSTDEV_QEMU"
     printf '  env      %s (source %s)\n' "$ENVFILE" "$TRUSTDEV_CACHE/env.sh")
}

if [[ ${TRUSTDEV_REFRESH:-0} != 1 && -f $STAMP && -f $ENVFILE && -x $CACHE/bin/qemu-system-x86_64 ]] &&
   [[ $(stamp_value format) == "$STAMP_FORMAT" && $(stamp_value flavour) == "$FLAVOUR" ]] &&
   [[ -z ${TRUSTDEV_QEMU_VERSION:-} || $(stamp_value qemu) == "$TRUSTDEV_QEMU_VERSION" ]] &&
   [[ -z ${TRUSTDEV_KERNEL_VERSION:-} || $(stamp_value kernel) == "$TRUSTDEV_KERNEL_VERSION" ]]; then
    log "already provisioned (stamp $STAMP); TRUSTDEV_REFRESH=1 re-resolves"
    print_summary
    exit 0
fi

# ---------------------------------------------------------------- host prerequisites
command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian-like host"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

host_apt_updated=0
host_install() {
    # Installs ordinary packages from the host's OWN (bookworm) sources.
    [[ $(id -u) == 0 ]] || die "need root to install host package(s) $*; install them and rerun"
    if [[ $host_apt_updated == 0 ]]; then
        log "host: apt-get update"
        apt-get update -qq || die "host apt-get update failed"
        host_apt_updated=1
    fi
    log "host: apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "host apt-get install $* failed"
}

[[ -s $KEYRING ]] || host_install debian-archive-keyring
[[ -s $KEYRING ]] || die "$KEYRING still missing after installing debian-archive-keyring"

# ---------------------------------------------------------------- private apt
# shellcheck source=qemu-configs/private-apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/private-apt.sh"
private_apt_config "$APTDIR" "$KEYRING" \
    "deb [signed-by=$KEYRING] $MIRROR trixie main" \
    "deb [signed-by=$KEYRING] $MIRROR $BACKPORTS main"
# Prefer trixie-backports wherever it has a package (qemu and its closure).
PAPT=(-o "APT::Default-Release=$BACKPORTS")

log "private apt: update (trixie, $BACKPORTS from $MIRROR)"
if ! apt-get -qq update >"$APTDIR/update.log" 2>&1 || grep -q '^[WE]:.*NO_PUBKEY' "$APTDIR/update.log"; then
    if grep -q 'NO_PUBKEY\|not signed\|EXPKEYSIG' "$APTDIR/update.log" && [[ $host_apt_updated == 0 ]]; then
        log "archive key problem; upgrading the host's debian-archive-keyring"
        host_install debian-archive-keyring
        apt-get -qq update >"$APTDIR/update.log" 2>&1 || { cat "$APTDIR/update.log" >&2; die "private apt-get update failed"; }
    else
        cat "$APTDIR/update.log" >&2
        die "private apt-get update failed (is $MIRROR reachable?)"
    fi
fi

# The package lists and apt's binary caches (~150 MB) are only needed to
# resolve again, which TRUSTDEV_REFRESH=1 does after a fresh update anyway.
clean_apt_state() {
    rm -rf "$APTDIR"/lists/* "$APTDIR"/*.bin
    mkdir -p "$APTDIR/lists/partial"
    if [[ ${TRUSTDEV_KEEP_DEBS:-0} != 1 ]]; then
        rm -f "$APTDIR"/archives/*.deb "$APTDIR"/debs/*.deb
    fi
}

# Candidate version of a package with trixie-backports preferred.
candidate() {
    apt-cache "${PAPT[@]}" policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'
}
# True if package=version exists in the lists.
# (apt-cache show pkg=ver exits 0 even for an unknown version: use madison)
have_version() {
    apt-cache madison "$1" 2>/dev/null | awk -F'|' -v v="$2" '{ gsub(/ /, "", $2) } $2 == v { f = 1 } END { exit !f }'
}

QEMU_PKG_VERSION=${TRUSTDEV_QEMU_VERSION:-$(candidate qemu-system-x86)}
[[ -n $QEMU_PKG_VERSION && $QEMU_PKG_VERSION != "(none)" ]] || die "no qemu-system-x86 candidate found"
have_version qemu-system-x86 "$QEMU_PKG_VERSION" ||
    die "qemu-system-x86 version '$QEMU_PKG_VERSION' not available (available: $(apt-cache madison qemu-system-x86 | awk -F'|' '{gsub(/ /,"",$2); printf "%s ", $2}'))"

KMETA=linux-image-$FLAVOUR
KERNEL_PKG_VERSION=${TRUSTDEV_KERNEL_VERSION:-$(candidate "$KMETA")}
[[ -n $KERNEL_PKG_VERSION && $KERNEL_PKG_VERSION != "(none)" ]] || die "no $KMETA candidate found"
have_version "$KMETA" "$KERNEL_PKG_VERSION" ||
    die "$KMETA version '$KERNEL_PKG_VERSION' not available (available: $(apt-cache madison "$KMETA" | awk -F'|' '{gsub(/ /,"",$2); printf "%s ", $2}'))"

# The metapackage depends on linux-image-<release> (= version); <release> is
# what `uname -r` prints in the guest, e.g. 7.3.4+deb13-amd64.
# (awk reads everything: no early pipe close, no SIGPIPE under pipefail)
KERNEL_RELEASE=$(apt-cache show "$KMETA=$KERNEL_PKG_VERSION" | awk -v fl="-$FLAVOUR" '
    /^Depends: / && !found {
        n = split(substr($0, 10), deps, /, */)
        for (i = 1; i <= n; i++) {
            split(deps[i], w, " ")
            if (w[1] ~ /^linux-image-/ && substr(w[1], length(w[1]) - length(fl) + 1) == fl) {
                print substr(w[1], 13); found = 1; break
            }
        }
    }')
[[ -n $KERNEL_RELEASE ]] || die "cannot find the kernel release in the dependencies of $KMETA=$KERNEL_PKG_VERSION"

# 7.x splits the payload into linux-binary/linux-modules/linux-base; older
# kernels (6.12 in trixie) ship everything in linux-image-<release> itself.
if have_version "linux-binary-$KERNEL_RELEASE" "$KERNEL_PKG_VERSION"; then
    KERNEL_PKGS=("linux-binary-$KERNEL_RELEASE" "linux-modules-$KERNEL_RELEASE" "linux-base-$KERNEL_RELEASE")
else
    KERNEL_PKGS=("linux-image-$KERNEL_RELEASE")
fi

if [[ -f $STAMP && -f $ENVFILE && -x $CACHE/bin/qemu-system-x86_64 &&
      $(stamp_value format) == "$STAMP_FORMAT" && $(stamp_value flavour) == "$FLAVOUR" &&
      $(stamp_value qemu) == "$QEMU_PKG_VERSION" && $(stamp_value kernel) == "$KERNEL_PKG_VERSION" ]]; then
    log "candidates unchanged; nothing to do"
    clean_apt_state
    print_summary
    exit 0
fi

log "resolved: qemu-system-x86 $QEMU_PKG_VERSION, $KMETA $KERNEL_PKG_VERSION ($KERNEL_RELEASE: ${KERNEL_PKGS[*]})"

# ---------------------------------------------------------------- download
log "downloading qemu-system-x86 + busybox-static closure"
apt-get -qq "${PAPT[@]}" --download-only -y install \
    "qemu-system-x86=$QEMU_PKG_VERSION" busybox-static >"$APTDIR/install.log" 2>&1 ||
    { cat "$APTDIR/install.log" >&2; die "apt-get --download-only install failed"; }

log "downloading kernel packages: ${KERNEL_PKGS[*]}"
kspecs=()
for p in "${KERNEL_PKGS[@]}"; do kspecs+=("$p=$KERNEL_PKG_VERSION"); done
(cd "$APTDIR/debs" && apt-get -qq download "${kspecs[@]}") >"$APTDIR/download.log" 2>&1 ||
    { cat "$APTDIR/download.log" >&2; die "apt-get download of kernel packages failed"; }

# Exactly the .debs of this resolution: the closure apt just computed (the
# "Inst pkg (version ...)" lines of a simulated install) plus the kernel's.
mapfile -t closure < <(apt-get -s "${PAPT[@]}" install "qemu-system-x86=$QEMU_PKG_VERSION" busybox-static |
    awk '$1 == "Inst" { sub(/^\(/, "", $3); print $2 " " $3 }')
((${#closure[@]} > 0)) || die "empty dependency closure for qemu-system-x86"
debs=()
for entry in "${closure[@]}"; do
    p=${entry%% *} ver=${entry#* }
    # In .deb file names the epoch's ':' is escaped as %3a.
    f=$(compgen -G "$APTDIR/archives/${p}_${ver/:/%3a}_*.deb" | head -n1 || true)
    [[ -n $f ]] || die "downloaded .deb for $p $ver not found in $APTDIR/archives"
    debs+=("$f")
done
for p in "${KERNEL_PKGS[@]}"; do
    f=$(compgen -G "$APTDIR/debs/${p}_${KERNEL_PKG_VERSION/:/%3a}_*.deb" | head -n1 || true)
    [[ -n $f ]] || die "downloaded .deb for $p not found"
    debs+=("$f")
done

# ---------------------------------------------------------------- unpack
NEWROOT=$CACHE/root.new
rm -rf "$NEWROOT"
log "unpacking ${#debs[@]} packages into $ROOT"
unpack_root "$NEWROOT" "${debs[@]}" || die "unpacking into $NEWROOT failed"

# ---------------------------------------------------------------- locate pieces
first_existing() { local f; for f in "$@"; do [[ -e $f ]] && { printf '%s\n' "$f"; return 0; }; done; return 1; }

LDSO=$(first_existing "$NEWROOT/usr/lib64/ld-linux-x86-64.so.2" \
    "$NEWROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$NEWROOT/lib64/ld-linux-x86-64.so.2") ||
    die "no ld-linux-x86-64.so.2 in the unpacked root"
[[ -x $NEWROOT/usr/bin/qemu-system-x86_64 ]] || die "no usr/bin/qemu-system-x86_64 in the unpacked root"
BUSYBOX_NEW=$(first_existing "$NEWROOT/usr/bin/busybox" "$NEWROOT/bin/busybox") || die "no busybox in the unpacked root"
KIMG_NEW=$(first_existing "$NEWROOT/usr/lib/modules/$KERNEL_RELEASE/vmlinuz" \
    "$NEWROOT/boot/vmlinuz-$KERNEL_RELEASE") || die "no vmlinuz for $KERNEL_RELEASE in the unpacked root"
MODDIR_NEW=$(first_existing "$NEWROOT/usr/lib/modules/$KERNEL_RELEASE" "$NEWROOT/lib/modules/$KERNEL_RELEASE") ||
    die "no modules dir for $KERNEL_RELEASE"
KCONFIG_NEW=$(first_existing "$MODDIR_NEW/config" "$NEWROOT/boot/config-$KERNEL_RELEASE") ||
    die "no kernel config for $KERNEL_RELEASE"

# Swap the new root in (paths recorded below refer to $ROOT).
rm -rf "$ROOT.old"
[[ -e $ROOT ]] && mv "$ROOT" "$ROOT.old"
mv "$NEWROOT" "$ROOT"
rm -rf "$ROOT.old"
rel() { printf '%s\n' "$ROOT/${1#"$NEWROOT"/}"; }
LDSO=$(rel "$LDSO"); BUSYBOX=$(rel "$BUSYBOX_NEW"); KIMG=$(rel "$KIMG_NEW")
MODDIR=$(rel "$MODDIR_NEW"); KCONFIG=$(rel "$KCONFIG_NEW")
LIBDIR=$ROOT/usr/lib/x86_64-linux-gnu

# ---------------------------------------------------------------- wrapper
mkdir -p "$CACHE/bin"
WRAPPER=$CACHE/bin/qemu-system-x86_64
cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# Generated by trustdev qemu-configs/provision.sh: runs the provisioned QEMU
# ($QEMU_PKG_VERSION) through its own dynamic loader and libraries.
ROOT='$ROOT'
export QEMU_MODULE_DIR="\$ROOT/usr/lib/x86_64-linux-gnu/qemu"
export GIO_MODULE_DIR="\$ROOT/usr/lib/x86_64-linux-gnu/gio/modules"
exec "$LDSO" --library-path "\$ROOT/usr/lib/x86_64-linux-gnu:\$ROOT/usr/lib" \\
    "\$ROOT/usr/bin/qemu-system-x86_64" \\
    -L "\$ROOT/usr/share/qemu" -L "\$ROOT/usr/share/seabios" -L "\$ROOT/usr/lib/ipxe/qemu" \\
    "\$@"
EOF
chmod 755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"

# ---------------------------------------------------------------- verify
QEMU_UPSTREAM_VERSION=$("$WRAPPER" -version | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')
[[ -n $QEMU_UPSTREAM_VERSION ]] || die "the provisioned QEMU does not run: $("$WRAPPER" -version 2>&1 | head -n3)"
"$WRAPPER" -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
    die "QEMU $QEMU_UPSTREAM_VERSION has no vfio-user-pci device (need QEMU >= 10.1; 11.x recommended)"
if [[ ${QEMU_UPSTREAM_VERSION%%.*} -lt 11 ]]; then
    log "warning: QEMU $QEMU_UPSTREAM_VERSION < 11: 10.x puts DMA_READ/DMA_WRITE data at the wrong offset"
fi
BUSYBOX_VERSION=$("$BUSYBOX" 2>&1 | sed -n '1s/^BusyBox \(v[^ ]*\).*/\1/p')
[[ -n $BUSYBOX_VERSION ]] || die "busybox does not run"
[[ -f $KIMG ]] || die "kernel image missing"

# ---------------------------------------------------------------- env + stamp
{
    printf '# trustdev guest toolchain, written by qemu-configs/provision.sh\n'
    for kv in \
        "TRUSTDEV_CACHE=$CACHE" \
        "TRUSTDEV_ROOT=$ROOT" \
        "TRUSTDEV_QEMU=$WRAPPER" \
        "TRUSTDEV_QEMU_BIN=$ROOT/usr/bin/qemu-system-x86_64" \
        "TRUSTDEV_QEMU_PKG_VERSION=$QEMU_PKG_VERSION" \
        "TRUSTDEV_QEMU_UPSTREAM_VERSION=$QEMU_UPSTREAM_VERSION" \
        "TRUSTDEV_KERNEL=$KIMG" \
        "TRUSTDEV_KERNEL_RELEASE=$KERNEL_RELEASE" \
        "TRUSTDEV_KERNEL_PKG_VERSION=$KERNEL_PKG_VERSION" \
        "TRUSTDEV_KERNEL_FLAVOUR=$FLAVOUR" \
        "TRUSTDEV_KERNEL_CONFIG=$KCONFIG" \
        "TRUSTDEV_MODULES_DIR=$MODDIR" \
        "TRUSTDEV_BUSYBOX=$BUSYBOX" \
        "TRUSTDEV_BUSYBOX_VERSION=$BUSYBOX_VERSION" \
        "TRUSTDEV_LDSO=$LDSO" \
        "TRUSTDEV_LIBDIR=$LIBDIR"; do
        # %q keeps the file both sourceable and trivially parseable
        # (plain KEY=VALUE as long as values have no special characters).
        printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
} >"$ENVFILE.tmp"
mv "$ENVFILE.tmp" "$ENVFILE"
{
    printf '# source this file: exports the trustdev guest toolchain variables\n'
    sed -n 's/^\(TRUSTDEV_[A-Z_]*=\)/export \1/p' "$ENVFILE"
} >"$CACHE/env.sh"

clean_apt_state

printf 'format=%s\nflavour=%s\nqemu=%s\nkernel=%s\nkernel_release=%s\n' \
    "$STAMP_FORMAT" "$FLAVOUR" "$QEMU_PKG_VERSION" "$KERNEL_PKG_VERSION" "$KERNEL_RELEASE" >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"

log "done"
print_summary
