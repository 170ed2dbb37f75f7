#!/bin/sh
# mmdebstrap --customize-hook: runs once every package is installed.
# Usage: customize.sh ROOT
#
# Puts back what essential.sh deferred, builds the one initramfs, lays out the boot partition the way config.txt expects it
# (vmlinuz, initrd.img, firmware blobs and device trees under /boot/firmware), and removes what
# must differ between cards (SSH host keys, which each node makes on first boot; mmdebstrap
# empties /etc/machine-id itself, and each card carries "uninitialized" there).
set -eu
root=$1

python=$(cat "$root/etc/picluster-deferred-python")
rm "$root/etc/picluster-deferred-python"
for deferred in /usr/sbin/update-initramfs /usr/bin/py3compile /usr/bin/systemd-hwdb "$python"; do
    rm "$root$deferred"
    chroot "$root" dpkg-divert --quiet --local --rename --remove "$deferred"
done

set -- "$root"/lib/modules/*
[ $# -eq 1 ] || { echo "expected one kernel in the base, found: $*" >&2; exit 1; }
version=${1##*/}
chroot "$root" update-initramfs -c -k "$version"

firmware="$root/boot/firmware"
mkdir -p "$firmware"
rm -f "$firmware"/vmlinuz-* "$firmware"/initrd.img-*
cp -r "$root"/usr/lib/raspi-firmware/. "$firmware"/
cp "$root/boot/vmlinuz-$version" "$firmware/vmlinuz"
cp "$root/boot/initrd.img-$version" "$firmware/initrd.img"
dtbs="$root/usr/lib/linux-image-$version/broadcom"
if [ -d "$dtbs" ]; then
    cp "$dtbs"/bcm*rpi*.dtb "$firmware"/
fi

cat > "$root/etc/fstab" <<'FSTAB'
LABEL=RASPIROOT  /               ext4  rw,noatime  0  1
LABEL=RASPIFIRM  /boot/firmware  vfat  rw,noatime  0  2
FSTAB

systemctl --root="$root" enable systemd-networkd.service systemd-timesyncd.service
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_* "$root/etc/hostname"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
