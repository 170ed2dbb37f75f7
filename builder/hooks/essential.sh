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
# Python modules are byte-compiled on the Pi at first import instead of under emulation here.
for deferred in /usr/sbin/update-initramfs /usr/bin/py3compile; do
    chroot "$root" dpkg-divert --quiet --local --rename \
        --divert "$deferred.picluster" --add "$deferred"
    printf '#!/bin/sh\n# picluster: deferred during the base build\nexit 0\n' > "$root$deferred"
    chmod 0755 "$root$deferred"
done

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
