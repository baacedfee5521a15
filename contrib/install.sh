#!/usr/bin/env bash
# Install storagefs on Debian 12 as root: apt packages, a venv, the package.
#   contrib/install.sh            the product, into /opt/storagefs/venv, with
#                                 /usr/local/bin/storagefs pointing at it
#   contrib/install.sh --test     also the test needs, into ./.venv (editable)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_pkgs=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv qemu-utils util-linux coreutils scrub
          parted lvm2 e2fsprogs xfsprogs btrfs-progs
          ceph-common qemu-block-extra)   # rbd pools: the rbd/rados CLIs, qemu's rbd driver
test_pkgs=(vim rsync sed systemd xfsprogs puppet bindfs
           ceph-mon ceph-osd ceph-mgr python3-rbd python3-rados libvirt-daemon-driver-storage-rbd)

missing=()
for p in "${apt_pkgs[@]}" $( [ $want_test = 1 ] && echo "${test_pkgs[@]}" ); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py=python3
if [ $want_test = 1 ]; then
  venv=.venv
  extra='.[test]'
  editable=(-e)
else
  venv=/opt/storagefs/venv
  extra='.'
  editable=()
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${editable[@]}" "$extra"
if [ $want_test = 0 ]; then
  ln -sf "$venv/bin/storagefs" /usr/local/bin/storagefs
fi
