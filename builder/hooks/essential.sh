#!/bin/sh
# mmdebstrap --essential-hook: runs after Debian's essential packages, before the rest.
# Usage: essential.sh ROOT INITRAMFS_MODULES
#
# Under qemu-user emulation the base build's time goes to mkinitramfs: package triggers run it
# several times, and MODULES=most collects thousands of modules one process each. Here the
# initramfs is deferred (update-initramfs is a no-op until customize.sh builds it once) and limited
# to the module folders the supported boards boot from.
set -eu
root=$1
modules=$2

chroot "$root" dpkg-divert --quiet --local --rename \
    --divert /usr/sbin/update-initramfs.picluster --add /usr/sbin/update-initramfs
printf '#!/bin/sh\n# picluster: the initramfs is built once, at the end of the base build\nexit 0\n' \
    > "$root/usr/sbin/update-initramfs"
chmod 0755 "$root/usr/sbin/update-initramfs"

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
