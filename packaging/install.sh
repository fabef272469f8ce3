#!/bin/sh
# Install the system side of a pip-installed pictofs: links that mount(8) and the systemd
# units expect, the units themselves, bash completion and the man page.
#
#   sudo packaging/install.sh [--bindir DIR] [--uninstall] [PART...]
#
# PART is any of (default: all):
#   bin         PREFIX/bin/pictofs -> BINDIR/pictofs       (the path the units run)
#   helpers     /sbin/mount.fuse.pictofs, /sbin/mount.pictofs -> BINDIR/...  (mount -t, fstab)
#   units       /etc/systemd/system/ and /etc/systemd/user/ pictofs-*.service
#   completion  PREFIX/share/bash-completion/completions/pictofs
#   man         PREFIX/share/man/man1/pictofs.1
#
# BINDIR is where pip put the pictofs commands (a virtualenv's bin/); by default the folder
# of the `pictofs` found on PATH. PREFIX defaults to /usr/local; DESTDIR (empty by default)
# stages everything under another root, as package builds do. The units run
# /usr/local/bin/pictofs; with another PREFIX their ExecStart lines are rewritten to match.
# --uninstall removes what the same PARTs install (links only when they are links).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_root=$(dirname "$here")
destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
bindir=""
action=install
parts=""

usage() {
    sed -n '2,19s/^# \{0,1\}//p' "$0"
}

while [ $# -gt 0 ]; do
    case $1 in
        --bindir) [ $# -ge 2 ] || { echo "install.sh: --bindir needs a folder" >&2; exit 2; }
                  bindir=$2; shift 2 ;;
        --bindir=*) bindir=${1#*=}; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h|--help) usage; exit 0 ;;
        bin|helpers|units|completion|man) parts="$parts $1"; shift ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$parts" ] || parts="bin helpers units completion man"

if [ "$action" = install ] && [ -z "$bindir" ]; then
    found=$(command -v pictofs || true)
    if [ -z "$found" ]; then
        echo "install.sh: pictofs is not on PATH; pass --bindir (the bin/ folder pip installed it into)" >&2
        exit 1
    fi
    bindir=$(dirname "$(readlink -f "$found")")
fi

# link TARGET PATH: PATH (under DESTDIR) becomes a symbolic link to TARGET.
link() {
    if [ "$action" = uninstall ]; then
        if [ -L "$destdir$2" ]; then rm -f "$destdir$2" && echo "removed $destdir$2"; fi
        return 0
    fi
    if [ ! -x "$1" ]; then
        echo "install.sh: $1 is missing: is pictofs installed in $bindir?" >&2
        exit 1
    fi
    mkdir -p "$(dirname "$destdir$2")"
    ln -sfn "$1" "$destdir$2"
    echo "linked $destdir$2 -> $1"
}

# put SOURCE PATH MODE: copy SOURCE to PATH (under DESTDIR).
put() {
    if [ "$action" = uninstall ]; then
        if [ -e "$destdir$2" ]; then rm -f "$destdir$2" && echo "removed $destdir$2"; fi
        return 0
    fi
    mkdir -p "$(dirname "$destdir$2")"
    if [ "$prefix" != /usr/local ] && [ "${2%.service}" != "$2" ]; then
        sed "s#/usr/local/bin/pictofs#$prefix/bin/pictofs#g" "$1" > "$destdir$2"
        chmod "$3" "$destdir$2"
    else
        install -m "$3" "$1" "$destdir$2"
    fi
    echo "installed $destdir$2"
}

for part in $parts; do
    case $part in
        bin)
            if [ "$action" = install ] && [ "$bindir/pictofs" -ef "$destdir$prefix/bin/pictofs" ] \
                    && [ ! -L "$destdir$prefix/bin/pictofs" ]; then
                echo "$prefix/bin/pictofs is pip's own: nothing to link"
            else
                link "$bindir/pictofs" "$prefix/bin/pictofs"
            fi ;;
        helpers)
            link "$bindir/mount.fuse.pictofs" /sbin/mount.fuse.pictofs
            link "$bindir/mount.pictofs" /sbin/mount.pictofs ;;
        units)
            for unit in "$here"/systemd/*.service; do
                put "$unit" "/etc/systemd/system/$(basename "$unit")" 0644
            done
            for unit in "$here"/systemd/user/*.service; do
                put "$unit" "/etc/systemd/user/$(basename "$unit")" 0644
            done
            if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
                systemctl daemon-reload
            fi ;;
        completion)
            put "$here/completion/pictofs.bash" "$prefix/share/bash-completion/completions/pictofs" 0644 ;;
        man)
            put "$source_root/docs/pictofs.1" "$prefix/share/man/man1/pictofs.1" 0644 ;;
    esac
done
