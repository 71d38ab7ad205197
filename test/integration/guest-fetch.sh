#!/usr/bin/env bash
# guest-fetch.sh DIR — fetch what the guest tests boot (vhost-user-blk, and
# the kernel nbd attach): Debian's current amd64 kernel image package and
# busybox-static, downloaded with apt-get (never installed) and unpacked
# into DIR/root. Idempotent: a complete DIR has a "ready-2" file (the
# version of the module list below) and the nbd module. It also leaves the
# "ready" marker of the first version, whose module list is a subset, so
# an older checkout sharing the cache does not unpack over it.
set -euo pipefail
DIR=${1:?usage: guest-fetch.sh DIR}
if [ -f "$DIR/ready-2" ] && [ -n "$(find "$DIR/root/lib/modules" -name nbd.ko 2>/dev/null | head -1)" ]; then
  exit 0
fi
rm -rf "$DIR/root" "$DIR/ready" "$DIR/ready-2"
mkdir -p "$DIR/debs" "$DIR/root"
cd "$DIR/debs"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$KPKG" ]; then
  apt-get update -qq
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$KPKG" ] || { echo "cannot resolve the kernel package behind linux-image-amd64"; exit 1; }
apt-get download "$KPKG" busybox-static >/dev/null 2>&1 || { apt-get update -qq; apt-get download "$KPKG" busybox-static; }
for d in *.deb; do dpkg-deb -x "$d" "$DIR/root"; done
rm -f "$DIR"/debs/*.deb
# Keep only what a boot needs: the kernel, the virtio-blk modules, the nbd
# driver with ext4 (which mounts ext2 too) and its dependencies, busybox.
find "$DIR/root/lib/modules" -name '*.ko' \
  ! -name virtio_ring.ko ! -name virtio.ko ! -name virtio_pci_modern_dev.ko \
  ! -name virtio_pci_legacy_dev.ko ! -name virtio_pci.ko ! -name virtio_blk.ko \
  ! -name nbd.ko ! -name crc16.ko ! -name mbcache.ko ! -name jbd2.ko ! -name ext4.ko \
  ! -name crc32c_generic.ko -delete
rm -rf "$DIR/root/usr/share" "$DIR/root/usr/lib"
touch "$DIR/ready" "$DIR/ready-2"
