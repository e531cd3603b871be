#!/usr/bin/env bash
# Stock Debian kernels for the VM tests (tests/test_stock_kernels.py), idempotently: qemu, kmod and
# busybox-static from apt; Debian's 6.1 (what bookworm's linux-image-amd64 depends on) and 6.12
# (bookworm's security 6.12) kernel images and header packages fetched with `apt-get download` and
# unpacked with `dpkg-deb -x` (never installed on this host); one small initramfs per kernel.
# Everything lives under /var/cache/tetrapipe-build/vmkernels/<release>/:
#   root/        the unpacked packages (boot/vmlinuz-*, boot/config-*, lib/modules/*, usr/src/*)
#   initrd.img   busybox + the modules needed for 9p and overlayfs + scripts/vm/init
#   release      the kernel release string (uname -r inside the guest)
# TETRAPIPE_VM_KERNELS="6.1 6.12" selects the kernels (default both); TETRAPIPE_WITH_VMKERNELS=0 skips.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${TETRAPIPE_VMKERNELS_CACHE:-/var/cache/tetrapipe-build/vmkernels}
[ "${TETRAPIPE_WITH_VMKERNELS:-1}" = 1 ] || { echo "setup-vmkernels: skipped"; exit 0; }

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v modprobe >/dev/null 2>&1 || [ -x /usr/sbin/modprobe ] || [ -x /sbin/modprobe ] || need+=(kmod)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx insmod || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-vmkernels: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
MODPROBE=$(command -v modprobe || echo /usr/sbin/modprobe)

# the concrete package a meta package depends on (linux-image-amd64 -> linux-image-6.1.0-57-amd64)
dep_of() { apt-cache depends "$1" 2>/dev/null | sed -n 's/^ *Depends: \(linux-[a-z]*-[0-9].*\)$/\1/p' | head -1; }

fetch_kernel() {  # $1 = image meta package, $2 = headers meta package
  local image headers release dir
  image=$(dep_of "$1"); headers=$(dep_of "$2")
  if [ -z "$image" ] || [ -z "$headers" ]; then
    apt-get update -qq
    image=$(dep_of "$1"); headers=$(dep_of "$2")
  fi
  [ -n "$image" ] && [ -n "$headers" ] || { echo "setup-vmkernels: apt knows no $1/$2" >&2; return 1; }
  release=${image#linux-image-}
  dir="$CACHE/$release"
  if [ ! -f "$dir/.unpacked" ]; then
    echo "setup-vmkernels: fetching $release ($image, $headers and its -common)"
    local common tmp
    common=$(apt-cache depends "$headers" | sed -n 's/^ *Depends: \(linux-headers-.*-common\)$/\1/p' | head -1)
    tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$image" "$headers" ${common:+"$common"}) >/dev/null
    mkdir -p "$tmp/root"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    rm -f "$tmp"/*.deb
    [ -f "$tmp/root/boot/vmlinuz-$release" ] || { echo "setup-vmkernels: no vmlinuz-$release in $image" >&2; return 1; }
    # the packages ship no modules.dep (Debian's postinst runs depmod)
    depmod -b "$tmp/root" "$release"
    echo "$release" > "$tmp/release"
    touch "$tmp/.unpacked"
    rm -rf "$dir"
    mv "$tmp" "$dir"
  fi
  local stamp
  stamp=$(cat "$ROOT/scripts/vm/init" "$ROOT/scripts/setup-vmkernels.sh" | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/.complete" 2>/dev/null)" = "$stamp" ]; then
    echo "setup-vmkernels: $release cached in $dir"
    return 0
  fi
  rm -f "$dir/.complete"
  build_initrd "$dir" "$release"
  echo "$stamp" > "$dir/.complete"
  echo "setup-vmkernels: $release ready in $dir"
}

build_initrd() {  # $1 = kernel dir (with root/), $2 = release
  local kdir=$1 release=$2 ird mods
  ird="$kdir/initrd"
  mkdir -p "$ird"/{bin,dev,proc,sys,mnt,newroot,modules}
  cp /bin/busybox "$ird/bin/busybox"
  ln -sf busybox "$ird/bin/sh"  # init installs the other applets
  # modules for virtio 9p and overlayfs, in dependency order, decompressed (busybox insmod
  # reads plain .ko only); a module built into the kernel has no line here
  mods=$("$MODPROBE" -d "$kdir/root" -S "$release" --show-depends -a virtio_pci 9pnet_virtio 9p overlay virtio_rng 2>/dev/null \
    | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++')
  : > "$ird/modules/order"
  for m in $mods; do
    local src="$kdir/root${m#"$kdir/root"}" base
    base=$(basename "$m"); base=${base%.xz}; base=${base%.zst}
    case "$m" in
      *.xz) xz -dc "$src" > "$ird/modules/$base" ;;
      *.zst) zstd -qdc "$src" > "$ird/modules/$base" ;;
      *) cp "$src" "$ird/modules/$base" ;;
    esac
    echo "$base" >> "$ird/modules/order"
  done
  cp "$ROOT/scripts/vm/init" "$ird/init"
  chmod 755 "$ird/init"
  (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$kdir/initrd.img.new"
  mv "$kdir/initrd.img.new" "$kdir/initrd.img"
  rm -rf "$ird"
}

mkdir -p "$CACHE"
kernels=${TETRAPIPE_VM_KERNELS:-"6.1 6.12"}
for k in $kernels; do
  case "$k" in
    6.1) fetch_kernel linux-image-amd64 linux-headers-amd64 ;;
    6.12) fetch_kernel linux-image-6.12-amd64 linux-headers-6.12-amd64 ;;
    *) echo "setup-vmkernels: unknown kernel $k (6.1, 6.12)" >&2; exit 1 ;;
  esac
done
