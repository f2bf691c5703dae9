# private-apt.sh - sourced by the provisioning scripts (provision.sh,
# provision-kmod.sh): a private apt configuration and unpacked package roots,
# never touching the host's apt sources or dpkg database.

# private_apt_config DIR KEYRING SOURCE_LINE...
#   Writes DIR/apt.conf (Dir* into DIR, an EMPTY dpkg status so apt computes
#   whole closures, amd64, no recommends/suggests, no locking) and
#   DIR/etc/sources.list with the given lines, and exports APT_CONFIG.
#   APT_CONFIG is read first, then Dir::Etc::Parts -> our (empty) private dir,
#   so the host's /etc/apt/apt.conf.d is not consulted.
private_apt_config() {
    local dir=$1
    shift 2
    mkdir -p "$dir"/{lists/partial,archives/partial,etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,debs}
    : >"$dir/status"
    printf '%s\n' "$@" >"$dir/etc/sources.list"
    cat >"$dir/apt.conf" <<EOF
Dir "$dir/";
Dir::State "$dir/";
Dir::State::Lists "$dir/lists/";
Dir::State::status "$dir/status";
Dir::Cache "$dir/";
Dir::Cache::archives "$dir/archives/";
Dir::Etc "$dir/etc/";
Dir::Etc::SourceList "$dir/etc/sources.list";
Dir::Etc::SourceParts "$dir/etc/sources.list.d/";
Dir::Etc::Parts "$dir/etc/apt.conf.d/";
Dir::Etc::Preferences "$dir/etc/preferences";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d/";
Dir::Log "$dir/log/";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT::Sandbox::User "root";
Debug::NoLocking "true";
Acquire::Languages "none";
Acquire::Retries "3";
EOF
    export APT_CONFIG=$dir/apt.conf
}

# unpack_root ROOT DEB...
#   dpkg-deb -x every .deb into ROOT (created), turns absolute symlinks inside
#   it into relative ones, drops set-id bits, docs, manuals and translations.
unpack_root() {
    local root=$1 f link target rel
    shift
    mkdir -p "$root"
    for f in "$@"; do
        dpkg-deb -x "$f" "$root" || { printf 'dpkg-deb -x %s failed\n' "$f" >&2; return 1; }
    done
    # Absolute symlinks point into the host; make them relative to the root.
    while IFS= read -r -d '' link; do
        target=$(readlink "$link")
        [[ $target == /* ]] || continue
        rel=$(realpath -s -m --relative-to="$(dirname "$link")" "$root$target")
        ln -snf "$rel" "$link"
    done < <(find "$root" -type l -print0)
    # Hygiene: no set-id binaries in a cache dir; no docs, manuals, translations.
    find "$root" -type f -perm /6000 -exec chmod ug-s {} +
    rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bug}
}
