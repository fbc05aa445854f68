#!/usr/bin/env bash
# flash.sh IMAGE DEVICE            write IMAGE (raw .img) to a whole-disk block device
# flash.sh IMAGE --to-file PATH    write it to a regular file instead (tests, VMs)
#
# Refuses: a DEVICE that is not a block device, a device with anything mounted or used as
# swap, and the disk holding /. Writes with bmaptool when present and a .bmap sits next to the
# image (dd otherwise). Then verifies by reading back against the manifest (SHA256SUMS next to
# the image): the whole image's SHA-256 after dd or to a file; after bmaptool on a device, the
# SHA-256 of every mapped range listed in the bmap (whose own hash is in the manifest) — holes
# are not written, so they are not compared.
set -euo pipefail
die() { echo "flash: $*" >&2; exit 1; }
[ $# -eq 2 ] || [ $# -eq 3 ] || die "usage: flash.sh IMAGE DEVICE | flash.sh IMAGE --to-file PATH"
img=$1
to_file=
if [ "$2" = --to-file ]; then
  [ $# -eq 3 ] || die "usage: flash.sh IMAGE --to-file PATH"
  target=$3; to_file=1
else
  [ $# -eq 2 ] || die "usage: flash.sh IMAGE DEVICE"
  target=$2
fi
[ -f "$img" ] || die "$img: no such image"
dir=$(dirname "$img"); base=$(basename "$img")
manifest=$dir/SHA256SUMS
[ -f "$manifest" ] || die "$manifest: no manifest next to the image"
want=$(awk -v f="$base" '$2 == f || $2 == "*"f {print $1}' "$manifest")
[ -n "$want" ] || die "$base is not in $manifest"
bmap=$img.bmap
[ -f "$bmap" ] || bmap=

echo "flash: checking $img against $manifest"
[ "$(sha256sum < "$img" | cut -d' ' -f1)" = "$want" ] || die "$img does not match the manifest"
if [ -n "$bmap" ]; then
  want_bmap=$(awk -v f="$(basename "$bmap")" '$2 == f {print $1}' "$manifest")
  [ "$(sha256sum < "$bmap" | cut -d' ' -f1)" = "${want_bmap:-none}" ] || die "$bmap does not match the manifest"
fi

if [ -n "$to_file" ]; then
  if [ -e "$target" ] && [ ! -f "$target" ]; then
    die "$target exists and is not a regular file (use DEVICE mode for block devices)"
  fi
else
  [ -b "$target" ] || die "$target is not a block device (a file needs --to-file)"
  dev=$(readlink -f "$target")
  [ "$(lsblk -dno TYPE "$dev" 2>/dev/null)" = disk ] || die "$dev is not a whole disk"
  # Anything on it mounted (the disk itself or a partition)?
  mounted=$(lsblk -nro MOUNTPOINT "$dev" 2>/dev/null | grep -v '^$' || true)
  if [ -n "$mounted" ] || grep -q "^$dev" /proc/mounts; then
    die "$dev is mounted (${mounted//$'\n'/, }): refusing"
  fi
  if awk 'NR > 1 {print $1}' /proc/swaps | grep -q "^$dev"; then die "$dev is used as swap: refusing"; fi
  rootsrc=$(findmnt -nvo SOURCE / 2>/dev/null || true)
  rootdisk=$rootsrc
  if [ -b "$rootsrc" ]; then
    pk=$(lsblk -no PKNAME "$rootsrc" 2>/dev/null | head -1)
    [ -n "$pk" ] && rootdisk=/dev/$pk
  fi
  [ "$(readlink -f "$rootdisk")" != "$dev" ] || die "$dev holds the running system's /: refusing"
  target=$dev
fi

size=$(stat -c %s "$img")
t0=$(date +%s)
if command -v bmaptool >/dev/null && [ -n "$bmap" ]; then
  echo "flash: writing with bmaptool → $target"
  bmaptool -q copy --bmap "$bmap" "$img" "$target"
  how=bmap
else
  echo "flash: writing with dd → $target"
  if [ -n "$to_file" ]; then
    dd if="$img" of="$target" bs=4M conv=sparse,fsync status=none
    truncate -s "$size" "$target"
  else
    dd if="$img" of="$target" bs=4M conv=fsync oflag=direct status=none
  fi
  how=dd
fi
sync
echo "flash: written in $(( $(date +%s) - t0 )) s; verifying by reading back"
[ -n "$to_file" ] || blockdev --flushbufs "$target" 2>/dev/null || true

if [ -n "$to_file" ] || [ "$how" = dd ]; then
  got=$(head -c "$size" "$target" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ] || die "read-back SHA-256 $got != manifest $want"
  echo "flash: verified: the first $size bytes of $target match the manifest ($want)"
else
  python3 - "$bmap" "$target" <<'PY' || die "read-back does not match the bmap"
import hashlib, sys, xml.etree.ElementTree as ET
bmap, dev = sys.argv[1], sys.argv[2]
root = ET.parse(bmap).getroot()
bs = int(root.findtext("BlockSize").strip())
n = 0
with open(dev, "rb", buffering=0) as f:
    for r in root.iter("Range"):
        a, _, b = r.text.strip().partition("-")
        first, last = int(a), int(b or a)
        f.seek(first * bs)
        h = hashlib.sha256()
        left = (last - first + 1) * bs
        while left:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                sys.exit(f"short read at range {r.text}")
            h.update(chunk); left -= len(chunk)
        if h.hexdigest() != r.get("chksum"):
            sys.exit(f"range {r.text} differs")
        n += 1
print(f"flash: verified {n} mapped ranges against the bmap")
PY
fi
