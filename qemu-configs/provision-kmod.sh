#!/usr/bin/env bash
# provision-kmod.sh - build out-of-tree kernel modules for the trustdev guest
# kernel, on a Debian 12 host, without touching the host's apt sources.
#
# Modules built (each cached under $CACHE/kmod/modules, keyed by a hash of its
# source, the kernel tree and the compiler; a rebuild happens only when one
# of them changes):
#   tsm       trustdev_tsm.ko: the test link TSM (guest/kmod/ in this repo)
#   uio-sva   uio_pci_generic_sva.ko: drivers/uio/uio_pci_generic_sva.c of
#             the guest kernel's own source (Debian does not build it)
#
# Kernel tree, one of:
#   - Debian's headers for the provisioned guest kernel (default): through a
#     private apt configuration in $CACHE/kmod/apt (sources trixie +
#     trixie-backports, EMPTY dpkg status), `apt-get --download-only install
#     linux-headers-<release>=<version>` computes the whole closure - the
#     headers, linux-kbuild, gcc-14 (the compiler Debian built the kernel
#     with), trixie's binutils, pahole and glibc - and every .deb is unpacked
#     into $CACHE/kmod/<release>/root. All of it is built against trixie's
#     glibc 2.41, so every ELF program in that root (gcc-14 and cc1, as, ld,
#     objtool, modpost, fixdep, ...) is replaced by a small script that runs
#     it through the root's own dynamic loader (--argv0 keeps the name the
#     program sees: Debian's objtool execs "<argv0>.real-x86").
#   - TRUSTDEV_KDIR=/path/to/your/kernel/build: your own kernel build tree
#     (`make -C $TRUSTDEV_KDIR M=...`), built with the host's tools or
#     TRUSTDEV_KMOD_CC; nothing is downloaded for the TSM module.
# uio_pci_generic_sva.c comes from $TRUSTDEV_KDIR (or its `source` link) when
# it has it, else from Debian's linux-source-<major.minor> package of the
# provisioned kernel version (167 MB download, only the one file is kept).
#
# Usage: provision-kmod.sh [--only tsm|uio-sva]... [--quiet]
# Prints KEY=VALUE lines on stdout (and writes them to $CACHE/kmod/kmod.env):
#   TRUSTDEV_KMOD_KDIR      the kernel tree modules were built against
#   TRUSTDEV_KMOD_RELEASE   its kernel release (vermagic of the modules)
#   TRUSTDEV_TSM_KO         path of trustdev_tsm.ko
#   TRUSTDEV_UIO_SVA_KO     path of uio_pci_generic_sva.ko
#
# Environment (all optional):
#   TRUSTDEV_CACHE          cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/trustdev)
#   TRUSTDEV_KDIR           kernel build tree to build against instead of Debian's headers
#   TRUSTDEV_KMOD_CC        compiler for TRUSTDEV_KDIR builds (default: the tree's own CC)
#   TRUSTDEV_KMOD_SRC       source of the TSM module (default: guest/kmod of this repo)
#   TRUSTDEV_MIRROR         Debian mirror (default http://deb.debian.org/debian)
#   TRUSTDEV_REFRESH=1      re-provision the toolchain even if its stamp matches
#
# Exit status: 0 on success; non-zero with a "provision-kmod.sh: error:" line.

set -euo pipefail

readonly STAMP_FORMAT=1
readonly PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
readonly SCRIPT_DIR
REPO=$(cd "$SCRIPT_DIR/.." && pwd -P)
readonly REPO

QUIET=0
ONLY=()
log() { [[ $QUIET == 1 ]] || printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (exit $?): $BASH_COMMAND"' ERR

while (($#)); do
    case $1 in
        --only)
            case ${2:-} in
                tsm | uio-sva) ONLY+=("$2") ;;
                *) die "--only takes tsm or uio-sva (got '${2:-}')" ;;
            esac
            shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
((${#ONLY[@]})) || ONLY=(tsm uio-sva)
want() { local w; for w in "${ONLY[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }

CACHE=${TRUSTDEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustdev}
MIRROR=${TRUSTDEV_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BACKPORTS=trixie-backports
TSM_SRC=${TRUSTDEV_KMOD_SRC:-$REPO/guest/kmod}

mkdir -p "$CACHE/kmod"
CACHE=$(cd "$CACHE" && pwd -P)
KCACHE=$CACHE/kmod

# One provisioning/build at a time per cache (parallel test runs share it).
exec 9>"$KCACHE/.lock"
flock 9

# Kbuild needs make (and, for uio-sva, xz or busybox xzcat) from the host.
if ! command -v make >/dev/null; then
    [[ $(id -u) == 0 ]] || die "make not found: install it (apt-get install make) and rerun"
    log "host: apt-get install make (the host's own sources)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make; } >&2 ||
        die "installing make failed"
fi

# ---------------------------------------------------------------- guest kernel
# The provisioned guest kernel (release and package version) from provision.sh.
ENVFILE=$CACHE/provisioned.env
if [[ ! -f $ENVFILE ]]; then
    log "no $ENVFILE: running provision.sh first"
    TRUSTDEV_CACHE=$CACHE bash "$SCRIPT_DIR/provision.sh" >&2
fi
# shellcheck disable=SC1090
. "$ENVFILE"
: "${TRUSTDEV_KERNEL_RELEASE:?missing in $ENVFILE}" "${TRUSTDEV_KERNEL_PKG_VERSION:?missing in $ENVFILE}"

# ---------------------------------------------------------------- private apt
# shellcheck source=qemu-configs/private-apt.sh
. "$SCRIPT_DIR/private-apt.sh"
APTDIR=$KCACHE/apt
apt_ready=0
private_apt() {
    ((apt_ready)) && return 0
    command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian-like host"
    command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
    [[ -s $KEYRING ]] || die "$KEYRING missing: run provision.sh (it installs debian-archive-keyring)"
    private_apt_config "$APTDIR" "$KEYRING" \
        "deb [signed-by=$KEYRING] $MIRROR trixie main" \
        "deb [signed-by=$KEYRING] $MIRROR $BACKPORTS main"
    # Prefer trixie-backports wherever it has a package (the kernel's).
    printf 'APT::Default-Release "%s";\n' "$BACKPORTS" >"$APTDIR/etc/apt.conf.d/default-release"
    log "private apt: update (trixie, $BACKPORTS from $MIRROR)"
    apt-get -qq update >"$APTDIR/update.log" 2>&1 ||
        { cat "$APTDIR/update.log" >&2; die "private apt-get update failed (is $MIRROR reachable?)"; }
    apt_ready=1
}
clean_apt() {
    rm -rf "$APTDIR"/lists/* "$APTDIR"/*.bin "$APTDIR"/archives/*.deb "$APTDIR"/debs/*.deb
    mkdir -p "$APTDIR/lists/partial"
    # The package lists are gone: the next private_apt must update again
    # (without this, a cold cache that fetched the headers first failed the
    # linux-source download: "'trixie-backports' is invalid for
    # APT::Default-Release").
    apt_ready=0
}

# ---------------------------------------------------------------- Debian toolchain
# Runs every ELF program under $1 through the root's loader: the ELF moves to
# .NAME.elf beside a script NAME that execs it with --argv0 NAME.
wrap_elves() {
    local root=$1 ldso=$2 f dir base
    local libs="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib"
    while IFS= read -r -d '' f; do
        [[ -L $f ]] && continue
        [[ $(head -c4 "$f" | od -An -c | tr -d ' ') == 177ELF ]] || continue
        # Shared objects (liblto_plugin.so, ...) stay; programs get wrapped.
        case ${f##*/} in *.so | *.so.*) continue ;; esac
        dir=$(dirname "$f") base=$(basename "$f")
        mv "$f" "$dir/.$base.elf"
        cat >"$f" <<EOF
#!/bin/sh
# trustdev provision-kmod.sh: run the trixie-built $base through trixie's loader.
exec '$ldso' --library-path '$libs' --argv0 "\$0" '$dir/.$base.elf' "\$@"
EOF
        chmod 755 "$f"
    done < <(find "$root/usr/bin" "$root/usr/libexec" "$root/usr/lib/linux-kbuild-"* "$root/usr/x86_64-linux-gnu" \
        -type f -perm -u+x -print0 2>/dev/null)
}

provision_debian_headers() {
    local krel=$TRUSTDEV_KERNEL_RELEASE kver=$TRUSTDEV_KERNEL_PKG_VERSION
    local dir=$KCACHE/$krel stamp root
    stamp=$dir/stamp root=$dir/root
    KDIR=$root/usr/src/linux-headers-$krel
    if [[ ${TRUSTDEV_REFRESH:-0} != 1 && -f $stamp && $(cat "$stamp") == "format=$STAMP_FORMAT kernel=$kver" && -d $KDIR ]]; then
        TOOLPATH=$root/usr/bin
        return 0
    fi
    private_apt
    local spec="linux-headers-$krel=$kver"
    log "downloading the closure of $spec (headers, kbuild, gcc-14, binutils, pahole, glibc)"
    rm -f "$APTDIR"/archives/*.deb
    apt-get -qq --download-only -y install "$spec" >"$APTDIR/install.log" 2>&1 ||
        { cat "$APTDIR/install.log" >&2; die "apt-get --download-only install $spec failed"; }
    local debs=("$APTDIR"/archives/*.deb)
    [[ -e ${debs[0]} ]] || die "no .debs downloaded for $spec"
    local new=$dir/root.new
    rm -rf "$new"
    log "unpacking ${#debs[@]} packages into $root"
    unpack_root "$new" "${debs[@]}" || die "unpacking into $new failed"
    # Record what was unpacked (package_version per line) for the report.
    (cd "$APTDIR/archives" && ls -- *.deb) | sed 's/_amd64\.deb$//; s/_all\.deb$//' >"$new/.packages"
    clean_apt
    # Not needed for kernel modules (-fno-lto, no sanitizer runtimes): ~100 MB less.
    rm -f "$new"/usr/libexec/gcc/x86_64-linux-gnu/*/lto1 "$new"/usr/bin/*lto-dump* \
        "$new"/usr/lib/x86_64-linux-gnu/lib{a,l,t,ub,hwa}san.so* "$new"/usr/lib/gcc/x86_64-linux-gnu/*/lib*san*

    # Swap in, then fix paths that name /usr/src or the root.
    rm -rf "$root.old"
    [[ -e $root ]] && mv "$root" "$root.old"
    mv "$new" "$root"
    rm -rf "$root.old"
    [[ -f $KDIR/Makefile ]] || die "no $KDIR/Makefile in the unpacked headers"
    sed -i "s#/usr/src/#$root/usr/src/#g" "$KDIR/Makefile"

    local ldso
    ldso=$root/usr/lib64/ld-linux-x86-64.so.2
    [[ -e $ldso ]] || ldso=$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    [[ -e $ldso ]] || die "no ld-linux-x86-64.so.2 in $root"
    wrap_elves "$root" "$(realpath "$ldso")"
    TOOLPATH=$root/usr/bin
    # gcc runs plain `as` (and kbuild plain `ld` for some checks) from PATH:
    # make them trixie's binutils, the ones Debian built the kernel with.
    local t
    for t in as ld ld.bfd objcopy objdump nm ar strip readelf; do
        [[ -e $TOOLPATH/$t || ! -e $TOOLPATH/x86_64-linux-gnu-$t ]] || ln -s "x86_64-linux-gnu-$t" "$TOOLPATH/$t"
    done
    # The compiler must run and be the one the kernel was built with.
    local cc_text want_cc
    cc_text=$(PATH=$TOOLPATH:$PATH x86_64-linux-gnu-gcc-14 --version | head -n1) ||
        die "the unpacked gcc-14 does not run"
    want_cc=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$KDIR/.config")
    if [[ $cc_text != "$want_cc" ]]; then
        log "warning: compiler is '$cc_text', the kernel was built with '$want_cc'"
    fi
    PATH=$TOOLPATH:$PATH x86_64-linux-gnu-ld --version >/dev/null || die "the unpacked binutils do not run"
    mkdir -p "$dir"
    printf 'format=%s kernel=%s\n' "$STAMP_FORMAT" "$kver" >"$stamp"
    log "toolchain ready: $cc_text, headers $KDIR"
}

# ---------------------------------------------------------------- kernel tree
TOOLPATH=''
MAKE_ARGS=()
if [[ -n ${TRUSTDEV_KDIR:-} ]]; then
    KDIR=$(cd "$TRUSTDEV_KDIR" && pwd -P) || die "TRUSTDEV_KDIR=$TRUSTDEV_KDIR is not a directory"
    [[ -f $KDIR/Makefile ]] || die "TRUSTDEV_KDIR=$KDIR has no Makefile (give a configured kernel build tree)"
    [[ -f $KDIR/Module.symvers ]] ||
        die "TRUSTDEV_KDIR=$KDIR has no Module.symvers: build the kernel first (make), then the modules build against it"
    [[ -z ${TRUSTDEV_KMOD_CC:-} ]] || MAKE_ARGS+=("CC=$TRUSTDEV_KMOD_CC")
else
    provision_debian_headers
    # No BTF for out-of-tree modules (it would need pahole against vmlinux;
    # the kernel loads modules without it).
    MAKE_ARGS+=("CONFIG_DEBUG_INFO_BTF_MODULES=")
fi
KRELEASE=$(cat "$KDIR/include/config/kernel.release" 2>/dev/null || true)
[[ -n $KRELEASE ]] || die "cannot tell the kernel release of $KDIR (no include/config/kernel.release)"
# What identifies the compiler in the cache key.
CC_ID=${TRUSTDEV_KMOD_CC:-$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\(.*\)"$/\1/p' "$KDIR/.config" 2>/dev/null || true)}
KTREE_ID=$(cat "$KDIR/.config" "$KDIR/Module.symvers" 2>/dev/null | sha256sum | cut -c1-16)

# ---------------------------------------------------------------- module builds
# build_module NAME SRCDIR: builds NAME.ko from the Kbuild/Makefile in SRCDIR
# (copied into a scratch dir: the source tree is never written to) and prints
# the cached .ko's path.
build_module() {
    local name=$1 src=$2 key out tmp
    key=$( {
        printf '%s\n' "$KRELEASE" "$KTREE_ID" "$CC_ID" "${MAKE_ARGS[*]}"
        (cd "$src" && find . -type f \( -name '*.c' -o -name '*.h' -o -name Makefile -o -name Kbuild \) -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-16)
    out=$KCACHE/modules/$KRELEASE/$name-$key/$name.ko
    if [[ -f $out ]]; then
        printf '%s\n' "$out"
        return 0
    fi
    tmp=$(mktemp -d "$KCACHE/build.XXXXXX")
    cp -r "$src/." "$tmp/"
    rm -f "$tmp"/*.o "$tmp"/*.ko "$tmp"/*.mod* "$tmp"/.*.cmd "$tmp"/Module.symvers "$tmp"/modules.order
    log "building $name.ko against $KDIR ($KRELEASE)"
    if ! PATH=${TOOLPATH:+$TOOLPATH:}$PATH make -C "$KDIR" M="$tmp" "${MAKE_ARGS[@]}" modules >"$tmp/build.log" 2>&1; then
        cat "$tmp/build.log" >&2
        rm -rf "$tmp"
        die "building $name.ko failed (log above)"
    fi
    # Warnings are errors for our own module (the kernel build shows them).
    if [[ $name == trustdev_tsm ]] && grep -E ': warning: ' "$tmp/build.log" >&2; then
        rm -rf "$tmp"
        die "$name.ko built with compiler warnings (above)"
    fi
    [[ -f $tmp/$name.ko ]] || { cat "$tmp/build.log" >&2; rm -rf "$tmp"; die "make produced no $name.ko"; }
    local vermagic
    vermagic=$(tr '\0' '\n' <"$tmp/$name.ko" | sed -n 's/^vermagic=\([^ ]*\).*/\1/p' | head -n1)
    [[ $vermagic == "$KRELEASE" ]] || { rm -rf "$tmp"; die "$name.ko has vermagic '$vermagic', expected '$KRELEASE'"; }
    PATH=${TOOLPATH:+$TOOLPATH:}$PATH x86_64-linux-gnu-strip --strip-debug "$tmp/$name.ko" 2>/dev/null ||
        strip --strip-debug "$tmp/$name.ko" 2>/dev/null || true
    mkdir -p "$(dirname "$out")"
    cp "$tmp/$name.ko" "$out.tmp"
    mv "$out.tmp" "$out"
    rm -rf "$tmp"
    log "built $out ($(du -h "$out" | cut -f1))"
    printf '%s\n' "$out"
}

# uio_pci_generic_sva.c of the guest kernel's own source.
uio_sva_source() {
    local f
    for f in "$KDIR/drivers/uio/uio_pci_generic_sva.c" "$KDIR/source/drivers/uio/uio_pci_generic_sva.c"; do
        [[ -f $f ]] && { printf '%s\n' "$f"; return 0; }
    done
    [[ -z ${TRUSTDEV_KDIR:-} ]] ||
        die "TRUSTDEV_KDIR=$KDIR has no drivers/uio/uio_pci_generic_sva.c (nor a 'source' link to a tree with it)"
    local kver=$TRUSTDEV_KERNEL_PKG_VERSION dir=$KCACHE/src/$TRUSTDEV_KERNEL_PKG_VERSION
    f=$dir/uio_pci_generic_sva.c
    if [[ ! -f $f ]]; then
        # linux-source-7.3 for release 7.3.4+deb13-amd64
        local majmin pkg deb
        majmin=$(sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p' <<<"$TRUSTDEV_KERNEL_RELEASE")
        pkg=linux-source-$majmin
        private_apt
        log "downloading $pkg=$kver for drivers/uio/uio_pci_generic_sva.c (~170 MB, once)"
        (cd "$APTDIR/debs" && apt-get -qq download "$pkg=$kver") >"$APTDIR/download.log" 2>&1 ||
            { cat "$APTDIR/download.log" >&2; die "apt-get download $pkg=$kver failed"; }
        deb=$(compgen -G "$APTDIR/debs/${pkg}_*.deb" | head -n1) || die "downloaded $pkg .deb not found"
        mkdir -p "$dir"
        local xzcat=(xz -dc)
        command -v xz >/dev/null || xzcat=("$TRUSTDEV_BUSYBOX" xzcat)
        dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$pkg.tar.xz" | "${xzcat[@]}" |
            tar -xO "$pkg/drivers/uio/uio_pci_generic_sva.c" >"$f.tmp" ||
            { rm -f "$f.tmp"; die "extracting drivers/uio/uio_pci_generic_sva.c from $deb failed"; }
        [[ -s $f.tmp ]] || { rm -f "$f.tmp"; die "$pkg has no drivers/uio/uio_pci_generic_sva.c"; }
        mv "$f.tmp" "$f"
        clean_apt
    fi
    printf '%s\n' "$f"
}

results=("TRUSTDEV_KMOD_KDIR=$KDIR" "TRUSTDEV_KMOD_RELEASE=$KRELEASE")
if want tsm; then
    [[ -f $TSM_SRC/Kbuild || -f $TSM_SRC/Makefile ]] || die "no Kbuild/Makefile in $TSM_SRC"
    results+=("TRUSTDEV_TSM_KO=$(build_module trustdev_tsm "$TSM_SRC")")
fi
if want uio-sva; then
    src=$(uio_sva_source)
    sdir=$(mktemp -d "$KCACHE/uio-src.XXXXXX")
    cp "$src" "$sdir/"
    printf 'obj-m := uio_pci_generic_sva.o\n' >"$sdir/Kbuild"
    ko=$(build_module uio_pci_generic_sva "$sdir") || { rm -rf "$sdir"; exit 1; }
    rm -rf "$sdir"
    results+=("TRUSTDEV_UIO_SVA_KO=$ko")
fi

# kmod.env: the latest results, for humans (tools use this script's stdout).
{
    printf '# written by qemu-configs/provision-kmod.sh\n'
    printf '%s\n' "${results[@]}"
} >"$KCACHE/kmod.env.tmp"
mv "$KCACHE/kmod.env.tmp" "$KCACHE/kmod.env"
printf '%s\n' "${results[@]}"
