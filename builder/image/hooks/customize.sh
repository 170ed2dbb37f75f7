#!/bin/sh
# mmdebstrap --customize-hook: runs once every package is installed.
# Usage: customize.sh ROOT
#
# Puts back what essential.sh deferred, makes the module index, the one initramfs and the
# certificate store, lays out the boot partition the way config.txt expects it (vmlinuz,
# initrd.img, firmware blobs and device trees under /boot/firmware), and removes what
# must differ between cards (SSH host keys, which each node makes on first boot; mmdebstrap
# empties /etc/machine-id itself, and each card carries "uninitialized" there).
set -eu
root=$1

python=$(cat "$root/etc/picluster-deferred-python")
rm "$root/etc/picluster-deferred-python"
for deferred in /usr/sbin/update-initramfs /usr/bin/py3compile /usr/bin/systemd-hwdb /usr/sbin/depmod \
    /usr/sbin/update-ca-certificates "$python"; do
    rm "$root$deferred"
    chroot "$root" dpkg-divert --quiet --local --rename --remove "$deferred"
done

set -- "$root"/lib/modules/*
[ $# -eq 1 ] || { echo "expected one kernel in the base, found: $*" >&2; exit 1; }
version=${1##*/}
# This machine's depmod writes the same index the image's would, in seconds (-b: the image's tree).
depmod -b "$root" "$version"
chroot "$root" update-initramfs -c -k "$version"

# The image's own update-ca-certificates, run by this machine's shell and openssl. Its links must
# name the certificates where the node sees them, so in a private mount namespace the image's
# certificate folders are mounted where the script looks. Hooks (ca-certificates-java, say) are
# the image's programs: with any present, the store is made in the image instead.
if [ -n "$(ls -A "$root/etc/ca-certificates/update.d")" ]; then
    chroot "$root" update-ca-certificates --fresh
else
    unshare --mount sh -eu -c '
        mount --bind "$1/usr/share/ca-certificates" /usr/share/ca-certificates
        mount --bind "$1/usr/local/share/ca-certificates" /usr/local/share/ca-certificates
        sh "$1/usr/sbin/update-ca-certificates" --fresh --hooksdir "" \
            --certsconf "$1/etc/ca-certificates.conf" --etccertsdir "$1/etc/ssl/certs"
    ' update-ca-certificates "$root"
fi

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

# mmdebstrap leaves its dpkg options in the image: the path filters stay, so upgrades on the node
# keep leaving out what the base left out; force-unsafe-io goes, since it sped up this build but
# on a card would let a power cut during an upgrade leave empty or truncated files behind dpkg.
sed -i '/^force-unsafe-io$/d' "$root/etc/dpkg/dpkg.cfg.d/99mmdebstrap"

systemctl --root="$root" enable systemd-networkd.service systemd-timesyncd.service
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_* "$root/etc/hostname"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
