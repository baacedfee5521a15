#!/usr/bin/env bash
# Install storagefs on Debian 12 as root: apt packages, a venv, the package.
#   contrib/install.sh            the product, into /opt/storagefs/venv, with
#                                 /usr/local/bin/storagefs pointing at it
#   contrib/install.sh --test     also the test needs (servers included), into ./.venv
#                                 (editable)
# It ends with one line saying what it installed, or one line saying what failed
# (the tools' own output is in $log).
set -uo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
log=$(mktemp /tmp/storagefs-install.XXXXXX.log)

die() {
  echo "storagefs install: $1 (details: $log)" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "run as root"
command -v apt-get >/dev/null || die "apt-get not found: this installs on Debian 12"

apt_pkgs=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv qemu-utils util-linux coreutils scrub
          parted lvm2 e2fsprogs xfsprogs btrfs-progs libiscsi7 open-iscsi
          glusterfs-client glusterfs-cli qemu-block-extra nfs-common cifs-utils
          ceph-common)   # rbd pools: the rbd/rados CLIs (qemu's rbd driver: qemu-block-extra)
test_pkgs=(vim rsync sed systemd xfsprogs puppet bindfs tgt zfs-fuse glusterfs-server
           libvirt-daemon-system libvirt-clients libvirt-daemon-driver-storage-gluster
           libvirt-daemon-driver-storage-iscsi-direct libvirt-daemon-driver-storage-zfs
           prometheus-node-exporter
           ceph-mon ceph-osd ceph-mgr python3-rbd python3-rados libvirt-daemon-driver-storage-rbd)

missing=()
for p in "${apt_pkgs[@]}" $( [ $want_test = 1 ] && echo "${test_pkgs[@]}" ); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >>"$log" 2>&1 || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
    || die "apt-get could not install: ${missing[*]}"
fi

py=python3
command -v "$py" >/dev/null || die "python3 not found"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 is older than 3.11"
if [ $want_test = 1 ]; then
  venv=.venv
  extra='.[test]'
  editable=(-e)
else
  venv=/opt/storagefs/venv
  extra='.'
  editable=()
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv" >>"$log" 2>&1 || die "cannot make the venv $venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${editable[@]}" "$extra" >>"$log" 2>&1 \
  || die "pip could not install storagefs into $venv: $(grep -m1 -E '^ERROR' "$log" || tail -n1 "$log")"
version=$("$venv/bin/storagefs" --version 2>/dev/null) || die "the installed storagefs does not run"
if [ $want_test = 0 ]; then
  ln -sf "$venv/bin/storagefs" /usr/local/bin/storagefs || die "cannot link /usr/local/bin/storagefs"
  echo "$version installed: /usr/local/bin/storagefs (venv $venv); mount it with: storagefs mount MOUNTPOINT"
else
  echo "$version installed for the tests in $venv"
fi
rm -f "$log"
