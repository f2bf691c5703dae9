#!/usr/bin/env bash
# mkinitramfs.sh - build the gzip'd newc cpio initramfs of a trustdev test guest.
#
# Base archive (default): busybox-static with its applet links, the requested
# kernel modules plus their dependencies (decompressed, in dependency order,
# listed in /lib/modules/$KVER/load.list), guest programs with the shared
# libraries they need, and /init (guest-init.sh beside this script).
#
# Overlay archive (--overlay): only the files given with --bin/--file/
# --script/--init, to be appended to a base archive; concatenated cpio
# archives (each gzip'd or not) form one initramfs, later files win:
#     mkinitramfs.sh --out base.cpio.gz                       # once, cache it
#     mkinitramfs.sh --overlay --out t.cpio.gz --script t.sh  # per test (~10 ms)
#     cat base.cpio.gz t.cpio.gz > t.initrd
#
# Needs the cache written by provision.sh (for busybox, the modules, the kernel
# release); an --overlay build only needs a cpio (busybox from the cache, or
# the host's cpio).

set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
readonly SCRIPT_DIR
readonly DEFAULT_MODULES="vfio-pci vfio_iommu_type1 uio_pci_generic qemu_fw_cfg"

log() { [[ $QUIET == 1 ]] || printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (exit $?): $BASH_COMMAND"' ERR

usage() {
    cat <<EOF
Usage: $PROG --out FILE [options]

  --out FILE          write the gzip'd newc cpio here (required)
  --modules "M ..."   kernel modules to include with their dependencies
                      (space or comma separated, '-' = '_'; repeatable; the
                      first use replaces the default "$DEFAULT_MODULES";
                      --modules "" includes none). Built-in ones are skipped.
  --bin SRC[:DEST]    a program (default DEST /usr/local/bin/NAME) plus the
                      shared libraries ldd reports for it, the loader included
  --file SRC[:DEST]   a plain file, copied as is (default DEST: same path)
  --script FILE       install FILE as /test.sh (run by the default /init)
  --init FILE         use FILE as /init instead of $SCRIPT_DIR/guest-init.sh
  --overlay           build only the given files (no busybox, modules, /init)
  --env FILE          provisioned.env of provision.sh (default
                      \${TRUSTDEV_CACHE:-\${XDG_CACHE_HOME:-\$HOME/.cache}/trustdev}/provisioned.env)
  --quiet             no progress messages
  -h, --help          this text
EOF
}

OUT='' ENVFILE='' INIT='' OVERLAY=0 QUIET=0 MODULES_SET=0
MODULE_ARGS=() BINS=() FILES=() SCRIPT=''
while (($#)); do
    case $1 in
        --out) OUT=${2:?--out needs a file}; shift 2 ;;
        --modules)
            ((MODULES_SET)) || MODULE_ARGS=()
            MODULES_SET=1
            read -r -a words <<<"${2//,/ }" || true
            MODULE_ARGS+=("${words[@]}")
            shift 2 ;;
        --bin) BINS+=("${2:?--bin needs SRC[:DEST]}"); shift 2 ;;
        --file) FILES+=("${2:?--file needs SRC[:DEST]}"); shift 2 ;;
        --script) SCRIPT=${2:?--script needs a file}; shift 2 ;;
        --init) INIT=${2:?--init needs a file}; shift 2 ;;
        --overlay) OVERLAY=1; shift ;;
        --env) ENVFILE=${2:?--env needs a file}; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n $OUT ]] || { usage >&2; die "--out is required"; }
((MODULES_SET)) || read -r -a MODULE_ARGS <<<"$DEFAULT_MODULES"

# ---------------------------------------------------------------- toolchain
ENVFILE=${ENVFILE:-${TRUSTDEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustdev}/provisioned.env}
TRUSTDEV_BUSYBOX='' TRUSTDEV_MODULES_DIR='' TRUSTDEV_KERNEL_RELEASE=''
if [[ -f $ENVFILE ]]; then
    # shellcheck disable=SC1090 # written by provision.sh
    . "$ENVFILE"
elif ((!OVERLAY)); then
    die "$ENVFILE not found: run provision.sh first (or pass --env)"
fi
BUSYBOX=$TRUSTDEV_BUSYBOX
if [[ -n $BUSYBOX && -x $BUSYBOX ]]; then
    mkcpio() { "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null; }
elif ((OVERLAY)) && command -v cpio >/dev/null; then
    mkcpio() { cpio -o -H newc -R 0:0 --quiet; }
else
    die "no busybox from provision.sh and no host cpio"
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/trustdev-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# ---------------------------------------------------------------- helpers
# Copy SRC to DEST inside the stage, replacing whatever (e.g. an applet link) is there.
put() {
    local src=$1 dest=$2 mode=$3
    [[ $dest == /* ]] || die "guest path must be absolute: $dest"
    mkdir -p "$STAGE$(dirname "$dest")"
    rm -f "$STAGE$dest"
    cp -L "$src" "$STAGE$dest"
    chmod "$mode" "$STAGE$dest"
}

split_spec() { # SRC[:DEST] -> SPEC_SRC SPEC_DEST (DEST empty if absent)
    SPEC_SRC=${1%%:*}
    SPEC_DEST=
    [[ $1 == *:* ]] && SPEC_DEST=${1#*:}
    [[ -e $SPEC_SRC ]] || die "no such file: $SPEC_SRC"
    return 0
}

# A program plus its shared libraries at the paths ldd resolves on this host
# (the guest's loader finds /lib/x86_64-linux-gnu etc. without ld.so.cache).
add_bin() {
    split_spec "$1"
    local src=$SPEC_SRC dest=${SPEC_DEST:-/usr/local/bin/${SPEC_SRC##*/}} out lib
    put "$src" "$dest" 755
    if out=$(LC_ALL=C ldd "$src" 2>/dev/null); then
        if grep -q 'not found' <<<"$out"; then
            die "$src: missing libraries on the host: $(grep 'not found' <<<"$out" | tr -s '\t\n' '  ')"
        fi
        while read -r lib; do
            [[ -e $STAGE$lib ]] || put "$lib" "$lib" 755
        done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
        log "bin $src -> $dest (+ $(awk '$2 == "=>" && $3 ~ /^\// { n++ } $1 ~ /^\// { n++ } END { print n + 0 }' <<<"$out") libs)"
    else
        log "bin $src -> $dest (static or not an ELF program)"
    fi
}

add_file() {
    split_spec "$1"
    local dest=${SPEC_DEST:-$SPEC_SRC}
    [[ $dest == /* ]] || dest=/$dest
    put "$SPEC_SRC" "$dest" "$( [[ -x $SPEC_SRC ]] && echo 755 || echo 644)"
    log "file $SPEC_SRC -> $dest"
}

decompress() { # FILE -> stdout
    case $1 in
        *.ko) cat "$1" ;;
        *.ko.xz) if command -v xz >/dev/null; then xz -dc "$1"; else "$BUSYBOX" xzcat "$1"; fi ;;
        *.ko.gz) gzip -dc "$1" ;;
        *.ko.zst) command -v zstd >/dev/null || die "zstd needed for $1"; zstd -qdc "$1" ;;
        *) die "unknown module file type: $1" ;;
    esac
}

# One field of a module's .modinfo section ("key=value" strings, NUL-separated).
# (awk reads all of its input: no early exit, no SIGPIPE under pipefail)
modinfo_field() {
    tr '\0' '\n' <"$1" | awk -v k="$2=" 'index($0, k) == 1 && !seen { print substr($0, length(k) + 1); seen = 1 }'
}

# ---------------------------------------------------------------- base content
declare -A MODPATH=() BUILTIN=() STATE=()
ORDER=()

# Depth-first: dependencies are staged (and listed) before the module itself.
resolve_module() {
    local want=${1//-/_} rel plain deps d vermagic
    case ${STATE[$want]:-} in
        loaded) return 0 ;;
        busy) die "module dependency cycle at $want" ;;
    esac
    rel=${MODPATH[$want]:-}
    if [[ -z $rel ]]; then
        [[ -n ${BUILTIN[$want]:-} ]] || die "module '$1' not found in $MODDIR (nor built in)"
        log "module $want is built into $KVER"
        STATE[$want]=loaded
        return 0
    fi
    STATE[$want]=busy
    plain=${rel%.ko*}.ko
    mkdir -p "$(dirname "$STAGE/lib/modules/$KVER/$plain")"
    decompress "$MODDIR/$rel" >"$STAGE/lib/modules/$KVER/$plain"
    vermagic=$(modinfo_field "$STAGE/lib/modules/$KVER/$plain" vermagic)
    [[ ${vermagic%% *} == "$KVER" ]] || die "$rel: vermagic '$vermagic' does not match $KVER"
    deps=$(modinfo_field "$STAGE/lib/modules/$KVER/$plain" depends)
    for d in ${deps//,/ }; do
        resolve_module "$d"
    done
    STATE[$want]=loaded
    ORDER+=("$plain")
}

build_base() {
    KVER=$TRUSTDEV_KERNEL_RELEASE
    MODDIR=$TRUSTDEV_MODULES_DIR
    [[ -n $KVER && -d $MODDIR ]] || die "kernel release / modules dir missing from $ENVFILE"

    # busybox and its applet links
    mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,proc,sys,dev,tmp,run,root,etc,lib/modules/"$KVER"}
    put "$BUSYBOX" /bin/busybox 755
    local applet
    while read -r applet; do
        case $applet in linuxrc | init | bin/busybox | '') continue ;; esac
        mkdir -p "$STAGE/$(dirname "$applet")"
        [[ -e $STAGE/$applet || -L $STAGE/$applet ]] || ln -s /bin/busybox "$STAGE/$applet"
    done < <("$BUSYBOX" --list-full)
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
    printf 'root:x:0:\n' >"$STAGE/etc/group"
    printf 'trustdev-guest\n' >"$STAGE/etc/hostname"

    # modules
    local f rel n
    while IFS= read -r -d '' f; do
        rel=${f#"$MODDIR"/}
        n=${rel##*/}
        n=${n%%.ko*}
        MODPATH[${n//-/_}]=$rel
    done < <(find "$MODDIR" -type f -name '*.ko*' -print0)
    if [[ -f $MODDIR/modules.builtin ]]; then
        while read -r rel; do
            n=${rel##*/}
            n=${n%%.ko*}
            BUILTIN[${n//-/_}]=1
        done <"$MODDIR/modules.builtin"
        cp "$MODDIR/modules.builtin" "$STAGE/lib/modules/$KVER/"
    fi
    for n in "${MODULE_ARGS[@]}"; do
        resolve_module "$n"
    done
    printf '%s\n' "${ORDER[@]}" | sed '/^$/d' >"$STAGE/lib/modules/$KVER/load.list"
    ((${#ORDER[@]} == 0)) || log "modules (load order): $(printf '%s ' "${ORDER[@]##*/}")"
    # modules.dep etc. so that busybox modprobe works in the guest too
    if ((${#ORDER[@]})); then
        "$BUSYBOX" depmod -b "$STAGE" "$KVER" 2>/dev/null || log "warning: busybox depmod failed; guest modprobe unavailable"
    fi

    put "${INIT:-$SCRIPT_DIR/guest-init.sh}" /init 755
}

((OVERLAY)) || build_base
((OVERLAY)) && [[ -n $INIT ]] && put "$INIT" /init 755
for b in "${BINS[@]}"; do add_bin "$b"; done
for f in "${FILES[@]}"; do add_file "$f"; done
[[ -z $SCRIPT ]] || put "$SCRIPT" /test.sh 755

# ---------------------------------------------------------------- archive
# Reproducible: fixed mtimes, sorted names (parents before children), gzip -n.
find "$STAGE" -mindepth 1 -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
mkdir -p "$(dirname "$OUT")"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | mkcpio) | gzip -9n >"$OUT.tmp.$$"
mv "$OUT.tmp.$$" "$OUT"
log "wrote $OUT ($(du -h "$OUT" | cut -f1))"
