#!/bin/sh
# mmdebstrap --essential-hook: runs after Debian's essential packages, before the rest.
# Usage: essential.sh ROOT INITRAMFS_MODULES
#
# Under qemu-user emulation every program a package runs while it is configured is slow. The
# initramfs is the worst: package triggers build it several times, and MODULES=most collects
# thousands of modules one process each. Here it is deferred (update-initramfs is a no-op until
# customize.sh builds it once) and limited to the module folders the supported boards boot from.
set -eu
root=$1
modules=$2

# Stand-ins until customize.sh puts the real ones back: the initramfs is built once, at the end;
# Python modules are byte-compiled on the Pi at first import instead of under emulation here;
# the hardware database is compiled by systemd-hwdb-update.service on the first boot (it runs
# when /usr/lib/udev/hwdb.bin is missing), natively, in seconds instead of 40 s here. The module
# index (depmod decompresses all 4,000 modules: 44 s here) and the certificate store (a few
# programs per certificate: 50 s here) are made once, at the end, by this machine's own tools.
defer() {
    chroot "$root" dpkg-divert --quiet --local --rename --divert "$1.picluster" --add "$1"
    printf '#!/bin/sh\n# picluster: deferred during the base build\n%s\n' "$2" > "$root$1"
    chmod 0755 "$root$1"
}
defer /usr/sbin/update-initramfs 'exit 0'
defer /usr/bin/py3compile 'exit 0'
defer /usr/bin/systemd-hwdb 'exit 0'
defer /usr/sbin/depmod 'exit 0'
defer /usr/sbin/update-ca-certificates 'exit 0'
# python3.X-minimal and python3.X byte-compile the whole standard library in their postinst
# (45 s each here); the interpreter itself must keep working for every other package.
# (read from apt's lists here, natively: apt-cache under emulation takes half a minute)
python=$(sed -n '/^Package: python3-minimal$/,/^$/s/^Pre-Depends: \(python3\.[0-9]*\)-minimal.*/\1/p' \
    "$root"/var/lib/apt/lists/*_Packages | head -n 1)
[ -n "$python" ] || { echo "essential.sh: python3-minimal names no python3.X-minimal" >&2; exit 1; }
defer "/usr/bin/$python" "case \"\$*\" in *\" /usr/lib/$python/py_compile.py \"*) exit 0 ;; esac
exec /usr/bin/$python.picluster \"\$@\""
echo "/usr/bin/$python" > "$root/etc/picluster-deferred-python"

mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$root/etc/initramfs-tools/conf.d/picluster"
grep -v -e '^#' -e '^$' "$modules" > "$root/etc/initramfs-tools/picluster-modules"
cat > "$root/etc/initramfs-tools/hooks/picluster" <<'HOOK'
#!/bin/sh
# picluster: the kernel modules listed in /etc/initramfs-tools/picluster-modules.
[ "${1:-}" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
while read -r entry; do
    case "$entry" in
        */*) copy_modules_dir "kernel/$entry" ;;
        *) manual_add_modules "$entry" ;;
    esac
done < /etc/initramfs-tools/picluster-modules
HOOK
chmod 0755 "$root/etc/initramfs-tools/hooks/picluster"
