# Shared settings of the cgroup v2 guest stage (sourced by build-image and run-v2).
#
# The guest is a Debian 12 root made with debootstrap on a raw disk image, booted under
# QEMU with Debian's own kernel (uncompressed on the host, booted through its PVH entry) and
# a small busybox initramfs. Everything is cached outside the clone in $PYXIS_VM_CACHE,
# under a key that hashes the files that decide what the image holds.

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VM_DIR/../.." && pwd)
VM_CACHE=${PYXIS_VM_CACHE:-/var/cache/pyxis-vm}
VM_SUITE=${PYXIS_VM_SUITE:-bookworm}
VM_MIRROR=${PYXIS_VM_MIRROR:-http://deb.debian.org/debian}
# Debian's metapackage: the guest gets the kernel it depends on at build time.
VM_KERNEL_PKG=linux-image-amd64

# Kernel modules the initramfs loads (with their dependencies) to reach the root disk and
# the 9p shares. Everything else the guest needs is built into Debian's kernel.
VM_MODULES=(virtio_pci virtio_blk virtio_rng 9pnet_virtio 9p ext4 crc32c_generic overlay)

# Host packages the stage needs.
VM_HOST_PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs xz-utils cpio)

vm_log() { echo "v2-guest: $*" >&2; }

# Installs the missing host packages; fails (status 1) when apt-get is missing or fails.
vm_ensure_host_packages() {
  local pkg missing=()
  for pkg in "${VM_HOST_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { vm_log "no apt-get to install ${missing[*]}"; return 1; }
  vm_log "installing ${missing[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"; } >/dev/null ||
    { vm_log "could not install ${missing[*]}"; return 1; }
}

# Debian packages the runtime relies on (`DEBIAN_PACKAGES` of the server's runtime module,
# whose presence `pyxis serve` checks before it starts): the guest root gets the same ones.
vm_runtime_packages() {
  vm_runtime_package_pairs | cut -d' ' -f1
}

# Paths that must exist in the guest root for those packages (the second field of each pair).
vm_runtime_package_files() {
  vm_runtime_package_pairs | cut -d' ' -f2
}

# "package path" lines of that table (entries may span lines after rustfmt), and Debian's
# nodejs, which `pyxis serve` also wants at start for JavaScript cells
# (crates/server/src/runtime/node.rs; npm only installs their packages, which the shared
# runtime already holds).
vm_runtime_package_pairs() {
  sed -n '/^const DEBIAN_PACKAGES/,/^];/p' "$REPO/crates/server/src/runtime.rs" |
    tr -d ' \n' | grep -o '("[^"]*","[^"]*",\?)' | sed 's/^("\([^"]*\)","\([^"]*\)",\?)$/\1 \2/'
  if grep -q '^pub const NODE: &str = "/usr/bin/node";' "$REPO/crates/server/src/runtime/node.rs" 2>/dev/null; then
    echo "nodejs /usr/bin/node"
  fi
}

# Everything the guest root is made of: packages of the image itself plus the runtime's.
vm_guest_packages() {
  { printf '%s\n' busybox-static kmod procps
    vm_runtime_packages; } | sort -u | paste -sd, -
}

# The cache key: the scripts that build the image and the package list.
vm_image_key() {
  { cat "$VM_DIR/common.sh" "$VM_DIR/build-image" "$VM_DIR/initramfs-init"
    echo "$VM_SUITE $VM_MIRROR $(vm_guest_packages)"; } | sha256sum | cut -c1-16
}

vm_image_dir() { echo "$VM_CACHE/image-$(vm_image_key)"; }
