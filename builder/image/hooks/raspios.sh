#!/bin/sh
# Customises an unpacked Raspberry Pi OS root for a Kubernetes node: installs PACKAGEs from the
# image's own apt sources (and the pinned Kubernetes tools when KUBERNETES names a folder with
# kubernetes.sources and kubernetes.pref, else "-"). Its arm64 programs run through qemu-user.
# Run in a private mount namespace (unshare --mount): the mounts below end with it.
# Usage: raspios.sh ROOT KUBERNETES PACKAGE...
set -eu
root=$1
kubernetes=$2
shift 2

mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs tmpfs "$root/tmp"
# apt needs a resolver; the image's own resolv.conf (NetworkManager's) is put back afterwards
if [ -e "$root/etc/resolv.conf" ] || [ -L "$root/etc/resolv.conf" ]; then
    mv "$root/etc/resolv.conf" "$root/etc/resolv.conf.picluster"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# no service starts inside the chroot
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

if [ "$kubernetes" != - ]; then
    mkdir -p "$root/etc/apt/sources.list.d" "$root/etc/apt/preferences.d"
    cp "$kubernetes/kubernetes.sources" "$root/etc/apt/sources.list.d/kubernetes.sources"
    cp "$kubernetes/kubernetes.pref" "$root/etc/apt/preferences.d/kubernetes"
fi
echo "picluster: apt-get update"
chroot "$root" apt-get update -q
echo "picluster: apt-get install $*"
# etcd-server's own server is left out, as in the Debian base (builder/image/debian.py ETCD_EXCLUDED)
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends \
    -o DPkg::Options::=--path-exclude=/usr/bin/etcd "$@"
if [ "$kubernetes" != - ]; then
    chroot "$root" apt-mark hold kubeadm kubelet kubectl
fi
chroot "$root" apt-get clean

rm "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
if [ -e "$root/etc/resolv.conf.picluster" ] || [ -L "$root/etc/resolv.conf.picluster" ]; then
    mv "$root/etc/resolv.conf.picluster" "$root/etc/resolv.conf"
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/apt/*
# what must differ between cards: each node makes its SSH host keys on first boot
rm -f "$root"/etc/ssh/ssh_host_*
echo "picluster: customised"
