#!/usr/bin/env bash
# provision-qemu-patched.sh - build QEMU from source with trustdev's patch
# series (qemu-configs/patches/) and cache the result.
#
# What it does (unattended, idempotent):
#   1. reads the series: qemu-configs/patches/BASE (the Debian source version
#      of `qemu` the series is written against) and qemu-configs/patches/series
#      (patch file names, in order; every *.patch must be listed);
#   2. computes a key from the source version, the patches' contents and this
#      script's build recipe; if $CACHE/qemu-patched/builds/KEY exists, prints
#      where it is and stops (no network, no build);
#   3. otherwise: makes sure the stock toolchain is provisioned (provision.sh:
#      the patched QEMU borrows its firmware: SeaBIOS, option ROMs); installs
#      missing build dependencies from the HOST's own Debian 12 sources
#      (libglib2.0-dev libpixman-1-dev libfdt-dev ninja-build python3-venv
#      pkg-config gcc); downloads the source package through a PRIVATE apt
#      configuration (deb-src sid, Check-Valid-Until off: the host's apt
#      sources are never touched) and the meson/pycotap wheels QEMU's configure
#      needs from PyPI (hash-pinned);
#   4. unpacks the pristine upstream tarball into a git tree, applies Debian's
#      two build fixes for its blob-stripped (+ds) tarball, commits that as
#      the base, applies the series with `git am`, configures x86_64-softmmu
#      only and builds qemu-system-x86_64;
#   5. installs the stripped binary and a wrapper into builds/KEY, writes
#      builds/KEY/env (KEY=VALUE) and builds/KEY/info (build time, sizes).
#
# Output: the last line on stdout is TRUSTDEV_QEMU_PATCHED_ENV=<path of the env
# file>; everything else goes to stderr. The env file holds:
#   TRUSTDEV_QEMU_PATCHED           the wrapper (run it like qemu-system-x86_64)
#   TRUSTDEV_QEMU_PATCHED_BIN       the binary itself
#   TRUSTDEV_QEMU_PATCHED_VERSION   what `-version` prints (e.g. 10.2.2)
#   TRUSTDEV_QEMU_PATCHED_SOURCE    Debian source version (e.g. 1:10.2.2+ds-1)
#   TRUSTDEV_QEMU_PATCHED_SERIES    sha256 of the series (patch names + contents)
#   TRUSTDEV_QEMU_PATCHED_KEY       the cache key
#
# Environment (all optional):
#   TRUSTDEV_CACHE                  cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/trustdev)
#   TRUSTDEV_QEMU_SRC_VERSION       Debian source version to build instead of BASE, or
#                                   "newest": the newest version whose files download
#   TRUSTDEV_MIRROR                 Debian mirror (default http://deb.debian.org/debian)
#   TRUSTDEV_QEMU_PATCHED_JOBS      parallel compile jobs (default: number of CPUs)
#   TRUSTDEV_QEMU_PATCHED_KEEP_TREE=1  keep the source + build tree in
#                                   $CACHE/qemu-patched/tree (~700 MB): the next
#                                   build after a patch change is incremental
#   TRUSTDEV_QEMU_PATCHED_LIST=1    only list the qemu source versions the mirror
#                                   has and whether each downloads; build nothing
#
# Exit status: 0 on success; non-zero with a "provision-qemu-patched.sh: error:" line.

set -euo pipefail
# The whole script is one compound command: bash reads it completely before
# running it, so editing the file during a (long) build cannot derail it.
{

readonly RECIPE=1            # bump when the build recipe below changes
readonly PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
PATCHES=$HERE/patches

CACHE=${TRUSTDEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustdev}
MIRROR=${TRUSTDEV_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
JOBS=${TRUSTDEV_QEMU_PATCHED_JOBS:-$(nproc)}

# QEMU's configure installs meson (and pycotap) into its own venv from
# python/wheels; bookworm's meson (1.0.1) is too old for QEMU >= 9.
readonly WHEELS=(
    "meson==1.9.0 --hash=sha256:45e51ddc41e37d961582d06e78c48e0f9039011587f3495c4d6b0781dad92357"
    "pycotap==1.3.1 --hash=sha256:1c3a25b3ff89e48f4e00f1f71dbbc1642b4f65c65d416524d07e73492fff25ea"
)
# Debian strips firmware blobs from its orig tarball (+ds); these two Debian
# patches make the build skip them. Not part of our series (upstream
# tarballs do not need them).
readonly DEBIAN_BUILD_FIXES=(skip-unpack-edk2-blobs.patch skip-install-dtb.patch)
readonly CONFIGURE_FLAGS=(
    --target-list=x86_64-softmmu
    --without-default-features
    --enable-fdt=system
    --disable-docs --disable-werror --disable-debug-info
    --disable-user --disable-tools --disable-guest-agent
    --disable-install-blobs --disable-rust --disable-download
)
readonly HOST_BUILD_DEPS=(libglib2.0-dev libpixman-1-dev libfdt-dev ninja-build python3-venv pkg-config gcc)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO (exit $?): $BASH_COMMAND"' ERR

mkdir -p "$CACHE/qemu-patched"
CACHE=$(cd "$CACHE" && pwd -P)
Q=$CACHE/qemu-patched
APTDIR=$Q/apt

# ---------------------------------------------------------------- private apt (deb-src)
# shellcheck source=qemu-configs/private-apt.sh
. "$HERE/private-apt.sh"
private_apt() {
    private_apt_config "$APTDIR" "$KEYRING" \
        "deb-src [signed-by=$KEYRING] $MIRROR sid main" \
        "deb-src [signed-by=$KEYRING] $MIRROR experimental main" \
        "deb-src [signed-by=$KEYRING] $MIRROR trixie-backports main"
    # Sources only (no binary indices). The mirror's sid Release is often
    # past its Valid-Until; its signature is still checked.
    printf 'Acquire::Check-Valid-Until "false";\n' >"$APTDIR/etc/apt.conf.d/50trustdev-sid"
    log "private apt: update (deb-src sid, experimental, trixie-backports from $MIRROR)"
    apt-get -qq update >"$APTDIR/update.log" 2>&1 ||
        { cat "$APTDIR/update.log" >&2; die "private apt-get update failed (is $MIRROR reachable?)"; }
}
clean_apt() { rm -rf "$APTDIR"/lists/* "$APTDIR"/*.bin; mkdir -p "$APTDIR/lists/partial"; }

# All qemu source versions in the indices, newest first.
source_versions() {
    apt-cache showsrc qemu 2>/dev/null |
        awk '$1 == "Package:" { p = $2 } p == "qemu" && $1 == "Version:" { print $2 }' | sort -u -r -V
}
# Downloads qemu=$1 into $2 (apt checks the files against the signed index).
download_source() {
    (cd "$2" && apt-get -qq source -d --only-source "qemu=$1") >"$APTDIR/source.log" 2>&1
}

if [[ ${TRUSTDEV_QEMU_PATCHED_LIST:-0} == 1 ]]; then
    private_apt
    tmp=$(mktemp -d)
    while read -r v; do
        if download_source "$v" "$tmp"; then s=downloads; else s="not downloadable ($(grep -m1 -o '[0-9]\{3\}  *[A-Za-z ]*' "$APTDIR/source.log" || echo failed))"; fi
        printf '%s %s\n' "$v" "$s"
        rm -f "$tmp"/*
    done < <(source_versions)
    rm -rf "$tmp"
    clean_apt
    exit 0
fi

# ---------------------------------------------------------------- the series and the key
[[ -f $PATCHES/BASE ]] || die "$PATCHES/BASE missing (the Debian source version the series applies to)"
[[ -f $PATCHES/series ]] || die "$PATCHES/series missing"
BASE=$(grep -v '^#' "$PATCHES/BASE" | head -n1 | tr -d '[:space:]')
SRC_VERSION=${TRUSTDEV_QEMU_SRC_VERSION:-$BASE}
mapfile -t SERIES < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$PATCHES/series" | grep -v '^$' || true)
declare -A listed=()
for p in "${SERIES[@]}"; do
    [[ $p == */* ]] && die "series entry '$p': plain file names only"
    [[ -f $PATCHES/$p ]] || die "series lists $p, which is not in $PATCHES"
    [[ -z ${listed[$p]:-} ]] || die "series lists $p twice"
    listed[$p]=1
done
for f in "$PATCHES"/*.patch; do
    [[ -e $f ]] || continue
    [[ -n ${listed[${f##*/}]:-} ]] || die "${f##*/} is not listed in $PATCHES/series"
done

series_hash() {
    {
        printf 'recipe %s\nflags %s\n' "$RECIPE" "${CONFIGURE_FLAGS[*]}"
        for p in "${SERIES[@]}"; do printf 'patch %s\n' "$p"; cat "$PATCHES/$p"; done
    } | sha256sum | cut -c1-64
}
SERIES_HASH=$(series_hash)
key_for() { # source version -> cache key (file-name safe)
    printf '%s-%s' "$(printf '%s' "$1" | tr -c 'A-Za-z0-9.+-' '_')" "${SERIES_HASH:0:16}"
}

# One build at a time per cache.
exec 9>"$Q/.lock"
flock 9

# Prints the env file of build dir $1 and marks the build as recently used.
print_env() {
    touch "$1" "$1/env"
    printf 'TRUSTDEV_QEMU_PATCHED_ENV=%s\n' "$1/env"
}
# Keeps the KEEP_BUILDS most recently used builds (worktrees with different
# series share the cache; every series change leaves one ~26 MB build).
readonly KEEP_BUILDS=4
prune_builds() {
    local n=0 d
    while read -r d; do
        n=$((n + 1))
        ((n > KEEP_BUILDS)) || continue
        log "removing the least recently used build $d"
        rm -rf "$d"
    done < <(ls -1dt "$Q"/builds/*/ 2>/dev/null | sed 's:/$::')
}

if [[ $SRC_VERSION != newest ]]; then
    KEY=$(key_for "$SRC_VERSION")
    if [[ -f $Q/builds/$KEY/env && -x $Q/builds/$KEY/bin/qemu-system-x86_64 ]]; then
        log "cached: $Q/builds/$KEY (qemu $SRC_VERSION, ${#SERIES[@]} patches)"
        print_env "$Q/builds/$KEY"
        exit 0
    fi
fi

# ---------------------------------------------------------------- prerequisites
log "building the patched QEMU (one-time; about 20 minutes on 2 cores)"
bash "$HERE/provision.sh" >&2 || die "provision.sh failed (the patched QEMU uses its firmware)"
# shellcheck disable=SC1091
. "$CACHE/provisioned.env"
FIRMWARE_ROOT=$TRUSTDEV_ROOT

host_install() {
    [[ $(id -u) == 0 ]] || die "need root to install the build dependencies $*; run: apt-get install $*"
    log "host: apt-get update; apt-get install $* (Debian 12's own sources)"
    apt-get update -qq >&2 || die "host apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        die "host apt-get install $* failed"
}
missing=()
for p in "${HOST_BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
((${#missing[@]} == 0)) || host_install "${missing[@]}"
PY=/usr/bin/python3
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "$PY lacks venv/ensurepip (python3-venv)"
command -v git >/dev/null || host_install git

# ---------------------------------------------------------------- source
SRCDIR=$Q/src
mkdir -p "$SRCDIR"
have_source() { compgen -G "$SRCDIR/$1/*.orig.tar.*" >/dev/null && compgen -G "$SRCDIR/$1/*.debian.tar.*" >/dev/null; }
srcdir_for() { printf '%s/%s' "$SRCDIR" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9.+-' '_')"; }

if [[ $SRC_VERSION == newest ]] || ! have_source "$(basename "$(srcdir_for "$SRC_VERSION")")"; then
    private_apt
    if [[ $SRC_VERSION == newest ]]; then
        mapfile -t candidates < <(source_versions)
        ((${#candidates[@]} > 0)) || die "the mirror lists no qemu source package"
    else
        candidates=("$SRC_VERSION")
        if [[ -z ${TRUSTDEV_QEMU_SRC_VERSION:-} ]]; then
            # Debian's mirror serves only current source versions: when the
            # one the series is written against has gone, try what it has
            # now, newest first (the patches must still apply, or the build
            # stops at `patch` with the failing hunk).
            mapfile -t -O 1 candidates < <(source_versions | grep -vxF -- "$SRC_VERSION")
        fi
    fi
    got=''
    for v in "${candidates[@]}"; do
        d=$(srcdir_for "$v")
        if have_source "$(basename "$d")"; then got=$v; break; fi
        rm -rf "$d.part"; mkdir -p "$d.part"
        log "downloading qemu $v source"
        if download_source "$v" "$d.part"; then
            rm -rf "$d"; mv "$d.part" "$d"; got=$v; break
        fi
        log "qemu $v: $(grep -m1 -E '^E:' "$APTDIR/source.log" || echo 'download failed')"
        rm -rf "$d.part"
    done
    clean_apt
    [[ -n $got ]] || die "no qemu source could be downloaded (tried: ${candidates[*]}; TRUSTDEV_QEMU_PATCHED_LIST=1 lists what the mirror has)"
    SRC_VERSION=$got
fi
KEY=$(key_for "$SRC_VERSION")
OUT=$Q/builds/$KEY
if [[ -f $OUT/env && -x $OUT/bin/qemu-system-x86_64 ]]; then
    log "cached: $OUT"
    print_env "$OUT"
    exit 0
fi
SRC=$(srcdir_for "$SRC_VERSION")
ORIG=$(compgen -G "$SRC/*.orig.tar.*" | head -n1)
DEBTAR=$(compgen -G "$SRC/*.debian.tar.*" | head -n1)
[[ $SRC_VERSION == "$BASE" ]] || log "warning: building qemu $SRC_VERSION; the series is written against $BASE"

# ---------------------------------------------------------------- wheels
WHEELDIR=$Q/wheels
if ! compgen -G "$WHEELDIR/meson-*.whl" >/dev/null || ! compgen -G "$WHEELDIR/pycotap-*.whl" >/dev/null; then
    log "PyPI: downloading the meson and pycotap wheels (hash-pinned)"
    rm -rf "$Q/pip-venv" "$WHEELDIR.part"
    "$PY" -m venv "$Q/pip-venv" >&2
    printf '%s\n' "${WHEELS[@]}" >"$Q/wheels.txt"
    "$Q/pip-venv/bin/pip" -q download --no-deps --require-hashes --only-binary=:all: \
        -r "$Q/wheels.txt" -d "$WHEELDIR.part" >&2 || die "pip download of the meson/pycotap wheels failed"
    rm -rf "$WHEELDIR" "$Q/pip-venv"
    mv "$WHEELDIR.part" "$WHEELDIR"
fi

# ---------------------------------------------------------------- tree: base + series
TREE=$Q/tree
GIT=(git -C "$TREE/src" -c user.name=trustdev -c user.email=trustdev@localhost -c commit.gpgsign=false)
if [[ ! -f $TREE/base-version || $(cat "$TREE/base-version") != "$SRC_VERSION" ]]; then
    log "unpacking $(basename "$ORIG")"
    rm -rf "$TREE"
    mkdir -p "$TREE/src" "$TREE/debian"
    tar -xf "$ORIG" -C "$TREE/src" --strip-components=1
    tar -xf "$DEBTAR" -C "$TREE/debian"
    "${GIT[@]}" init -q
    "${GIT[@]}" add -A -f .
    "${GIT[@]}" commit -q -m "QEMU $SRC_VERSION (pristine $(basename "$ORIG"))"
    for fix in "${DEBIAN_BUILD_FIXES[@]}"; do
        f=$TREE/debian/debian/patches/$fix
        if [[ -f $f ]]; then
            patch -s -p1 -d "$TREE/src" <"$f" || die "Debian build fix $fix does not apply"
        else
            log "warning: Debian build fix $fix not in this source package"
        fi
    done
    "${GIT[@]}" commit -q -a --allow-empty -m "Debian build fixes for the +ds tarball: ${DEBIAN_BUILD_FIXES[*]}"
    "${GIT[@]}" tag -f trustdev-base >/dev/null
    printf '%s\n' "$SRC_VERSION" >"$TREE/base-version"
fi
# Back to the base, then the series on top - unless the tree already has
# exactly this series (a kept tree: leave the files and their mtimes alone).
# git touches only files that differ, so a kept build tree rebuilds
# incrementally either way.
"${GIT[@]}" am --abort >/dev/null 2>&1 || true
if [[ -n $("${GIT[@]}" status --porcelain --untracked-files=no) ]]; then
    die "$TREE/src has uncommitted changes; commit them (and format-patch them into $PATCHES) or discard them (git -C $TREE/src reset --hard)"
fi
applied_hash='' applied_head=''
[[ -f $TREE/applied-series ]] && read -r applied_hash applied_head <"$TREE/applied-series"
head=$("${GIT[@]}" rev-parse HEAD)
if [[ -n $applied_head && $head != "$applied_head" ]]; then
    # Commits made in the kept tree: fine once they are in the series
    # (format-patched into $PATCHES: the series changed), else refuse.
    [[ $applied_hash != "$SERIES_HASH" ]] ||
        die "$TREE/src has commits that are not in $PATCHES: format-patch them into it first, or drop them (git -C $TREE/src reset --hard $applied_head)"
    log "the kept tree's commits are replaced by the series in $PATCHES (old HEAD $head: git reflog)"
fi
if [[ $applied_hash != "$SERIES_HASH" ]]; then
    rm -f "$TREE/applied-series"
    "${GIT[@]}" reset -q --hard trustdev-base
    "${GIT[@]}" clean -q -fdx -e build -e python/wheels
    for p in "${SERIES[@]}"; do
        "${GIT[@]}" am -q --keep-cr "$PATCHES/$p" >"$TREE/am.log" 2>&1 ||
            { cat "$TREE/am.log" >&2; "${GIT[@]}" am --abort >/dev/null 2>&1 || true
              die "patch $p does not apply to qemu $SRC_VERSION"; }
        log "applied $p"
    done
    printf '%s %s\n' "$SERIES_HASH" "$("${GIT[@]}" rev-parse HEAD)" >"$TREE/applied-series"
fi
mkdir -p "$TREE/src/python/wheels"
cp "$WHEELDIR"/*.whl "$TREE/src/python/wheels/"

# ---------------------------------------------------------------- configure + build
BUILD=$TREE/src/build
mkdir -p "$BUILD"
t0=$SECONDS
if [[ ! -f $BUILD/build.ninja || ! -f $BUILD/trustdev-flags || $(cat "$BUILD/trustdev-flags") != "${CONFIGURE_FLAGS[*]}" ]]; then
    log "configure ${CONFIGURE_FLAGS[*]}"
    rm -rf "$BUILD"; mkdir -p "$BUILD"
    (cd "$BUILD" && ../configure --python="$PY" "${CONFIGURE_FLAGS[@]}") >"$TREE/configure.log" 2>&1 ||
        { tail -n 30 "$TREE/configure.log" >&2; die "configure failed (log: $TREE/configure.log)"; }
    printf '%s\n' "${CONFIGURE_FLAGS[*]}" >"$BUILD/trustdev-flags"
fi
t1=$SECONDS
log "ninja -j$JOBS qemu-system-x86_64 (log: $TREE/build.log)"
nice -n 5 ninja -C "$BUILD" -j "$JOBS" qemu-system-x86_64 >"$TREE/build.log" 2>&1 ||
    { grep -E -B2 -A8 'error:|FAILED' "$TREE/build.log" | head -n 60 >&2; die "build failed (log: $TREE/build.log)"; }
t2=$SECONDS

# ---------------------------------------------------------------- install
rm -rf "$OUT.new"
mkdir -p "$OUT.new/bin"
strip -o "$OUT.new/bin/qemu-system-x86_64.real" "$BUILD/qemu-system-x86_64"
cat >"$OUT.new/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
# Generated by trustdev qemu-configs/provision-qemu-patched.sh: QEMU $SRC_VERSION
# with trustdev's patch series (sha256 $SERIES_HASH). Firmware (SeaBIOS, option
# ROMs) comes from the stock toolchain's root.
ROOT='$FIRMWARE_ROOT'
exec "$OUT/bin/qemu-system-x86_64.real" \\
    -L "\$ROOT/usr/share/qemu" -L "\$ROOT/usr/share/seabios" -L "\$ROOT/usr/lib/ipxe/qemu" \\
    "\$@"
EOF
chmod 755 "$OUT.new/bin/qemu-system-x86_64"
"${GIT[@]}" format-patch -q -o "$OUT.new/applied" trustdev-base >/dev/null
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
VERSION=$("$OUT/bin/qemu-system-x86_64" -version | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')
[[ -n $VERSION ]] || die "the built QEMU does not run: $("$OUT/bin/qemu-system-x86_64" -version 2>&1 | head -n3)"
"$OUT/bin/qemu-system-x86_64" -device help 2>/dev/null | grep -q '"vfio-user-pci"' ||
    die "the built QEMU has no vfio-user-pci"
{
    for kv in \
        "TRUSTDEV_QEMU_PATCHED=$OUT/bin/qemu-system-x86_64" \
        "TRUSTDEV_QEMU_PATCHED_BIN=$OUT/bin/qemu-system-x86_64.real" \
        "TRUSTDEV_QEMU_PATCHED_VERSION=$VERSION" \
        "TRUSTDEV_QEMU_PATCHED_SOURCE=$SRC_VERSION" \
        "TRUSTDEV_QEMU_PATCHED_SERIES=$SERIES_HASH" \
        "TRUSTDEV_QEMU_PATCHED_KEY=$KEY"; do
        printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
} >"$OUT/env"
{
    printf 'source %s\nseries %s\npatches %s\n' "$SRC_VERSION" "$SERIES_HASH" "${SERIES[*]}"
    printf 'configure_seconds %s\nbuild_seconds %s\njobs %s\n' "$((t1 - t0))" "$((t2 - t1))" "$JOBS"
    printf 'binary_bytes %s\n' "$(stat -c %s "$OUT/bin/qemu-system-x86_64.real")"
} >"$OUT/info"

if [[ ${TRUSTDEV_QEMU_PATCHED_KEEP_TREE:-0} != 1 ]]; then
    rm -rf "$TREE"
fi
prune_builds
log "built QEMU $VERSION ($SRC_VERSION + ${#SERIES[@]} patches) in $((t2 - t0)) s: $OUT"
print_env "$OUT"
exit 0
}
