#!/usr/bin/env bash
# build-image.sh BOARD — the appliance image for board/BOARD/board.toml, without loop devices
# or mounts (see docs/image.md):
#   kernel     the pinned Debian .deb (apt-get download + dpkg-deb -x, never installed)
#   initramfs  (image/newc.py, reproducible) onair as /init, the board's modules with their dependencies, the board file
#   root       squashfs: /usr/bin/onair, /etc/onair/board.toml, /etc/os-release (reproducible)
#   ESP        vfat (mkfs.vfat + mtools): systemd-boot, one UKI per slot (onair-a, onair-b)
#   data       ext4 made with mke2fs -d (empty state: first boot creates it)
#   disk       GPT made by genimage: esp, root_a, root_b, data
# Outputs in target/image/BOARD/: onair-BOARD.img, .img.zst, .img.bmap, SHA256SUMS.
set -euo pipefail
cd "$(dirname "$0")/.."
board=${1:?usage: build-image.sh BOARD}
[ -f "board/$board/board.toml" ] || { echo "build-image: no board/$board/board.toml" >&2; exit 2; }
t0=$(date +%s)

SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
for pair in genimage:genimage mcopy:mtools mkfs.vfat:dosfstools mksquashfs:squashfs-tools \
    mke2fs:e2fsprogs zstd:zstd bmaptool:bmap-tools objcopy:binutils strings:binutils \
    dpkg-deb:dpkg python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -e /usr/lib/systemd/boot/efi/linuxx64.efi.stub ] || need+=(systemd-boot-efi)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing image tools: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Before the exports below: build scripts (cc) track such variables, and a different
# environment from a plain scripts/build-static.sh would rebuild the C dependencies each time.
echo "==> static onair"
bin=$(scripts/build-static.sh | tail -1)

# Every timestamp in the image (squashfs, cpio, ESP files): the last commit's time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export MTOOLS_SKIP_CHECK=1 LC_ALL=C TZ=UTC

eval "$("$bin" board "board/$board/board.toml")"

out=target/image/$board
work=$out/work
cache=target/image/cache
rm -rf "$work"; mkdir -p "$work" "$cache"

echo "==> kernel $KERNEL_PACKAGE=$KERNEL_VERSION"
deb=$cache/${KERNEL_PACKAGE}_${KERNEL_VERSION}_amd64.deb
if [ ! -s "$deb" ]; then
  (cd "$cache" && apt-get download "$KERNEL_PACKAGE=$KERNEL_VERSION" 2>&1 | grep -v unsandboxed || true)
  [ -s "$deb" ] || { echo "build-image: apt-get download $KERNEL_PACKAGE=$KERNEL_VERSION failed" >&2; exit 1; }
fi
dpkg-deb -x "$deb" "$work/kernel"
vmlinuz=$work/kernel/boot/vmlinuz-$KERNEL_RELEASE
moddir=$work/kernel/lib/modules/$KERNEL_RELEASE
[ -f "$vmlinuz" ] && [ -d "$moddir" ] || { echo "build-image: $deb has no $KERNEL_RELEASE kernel" >&2; exit 1; }

os_release() {
  printf 'NAME="onair"\nID=onair\nPRETTY_NAME="onair %s (%s)"\nVERSION_ID=%s\nIMAGE_ID=onair-%s\nIMAGE_VERSION=%s\n' \
    "$("$bin" version | awk '{print $2}')" "$board" "$("$bin" version | awk '{print $2}')" "$board" \
    "$("$bin" version | awk '{print $2}')"
}

echo "==> initramfs"
ird=$work/initramfs
mkdir -p "$ird"/{dev,proc,sys,run,sysroot,etc/onair,lib/modules}
install -m 0755 "$bin" "$ird/init"
install -m 0644 "board/$board/board.toml" "$ird/etc/onair/board.toml"
# shellcheck disable=SC2086
image/modules.sh "$moddir" $KERNEL_MODULES > "$ird/lib/modules/onair.load"
while read -r rel; do
  install -D -m 0644 "$work/kernel/lib/modules/$rel" "$ird/lib/modules/$rel"
done < "$ird/lib/modules/onair.load"
mknod -m 0600 "$ird/dev/console" c 5 1
find "$ird" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
image/newc.py "$ird" "$SOURCE_DATE_EPOCH" | zstd -q -10 -T1 > "$work/initramfs.cpio.zst"

echo "==> root squashfs"
root=$work/root
mkdir -p "$root"/{usr/bin,etc/onair,dev,proc,sys,run,data,tmp}
install -m 0755 "$bin" "$root/usr/bin/onair"
install -m 0644 "board/$board/board.toml" "$root/etc/onair/board.toml"
os_release > "$root/etc/os-release"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
env -u SOURCE_DATE_EPOCH mksquashfs "$root" "$work/root.sqfs" -noappend -quiet -no-progress -comp zstd -all-root \
  -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" -processors 2 >/dev/null

echo "==> unified kernel images"
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
os_release > "$work/os-release"
# Section addresses after the stub's last section, page-aligned.
end=$(objdump -h "$stub" | awk 'NF==7 && $1 ~ /^[0-9]+$/ {print $3, $4}' |
  while read -r size vma; do echo $((16#$vma + 16#$size)); done | sort -n | tail -1)
align() { echo $(( ($1 + 4095) / 4096 * 4096 )); }
for slot in a b; do
  printf '%s' "console=${KERNEL_CONSOLE} onair.slot=$slot $KERNEL_CMDLINE" > "$work/cmdline-$slot"
  osrel=$(align "$end")
  cmd=$(align $((osrel + $(stat -c %s "$work/os-release"))))
  linux=$(align $((cmd + $(stat -c %s "$work/cmdline-$slot"))))
  initrd=$(align $((linux + $(stat -c %s "$vmlinuz"))))
  objcopy \
    --add-section .osrel="$work/os-release" --change-section-vma .osrel=$(printf 0x%x "$osrel") \
    --add-section .cmdline="$work/cmdline-$slot" --change-section-vma .cmdline=$(printf 0x%x "$cmd") \
    --add-section .linux="$vmlinuz" --change-section-vma .linux=$(printf 0x%x "$linux") \
    --add-section .initrd="$work/initramfs.cpio.zst" --change-section-vma .initrd=$(printf 0x%x "$initrd") \
    "$stub" "$work/onair-$slot.efi"
  # objcopy stamps the PE header with the current time: set it to SOURCE_DATE_EPOCH.
  python3 -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.seek(0x3c); pe=struct.unpack("<I",f.read(4))[0]; f.seek(pe+8); f.write(struct.pack("<I",int(sys.argv[2])&0xffffffff))' \
    "$work/onair-$slot.efi" "$SOURCE_DATE_EPOCH"
done

size_of() { # MiB of partition $1 from PARTITIONS (name:fs:mib …)
  local p; for p in $PARTITIONS; do [ "${p%%:*}" = "$1" ] && { echo "${p##*:}"; return; }; done
  echo "build-image: no partition $1" >&2; exit 1
}

echo "==> ESP"
esp=$work/esp.vfat
rm -f "$esp"
mkfs.vfat -C -F 32 -n ESP -i 0e5a0001 "$esp" $(( $(size_of esp) * 1024 )) >/dev/null
printf 'timeout 0\ndefault onair-a.efi\nconsole-mode keep\n' > "$work/loader.conf"
touch -d "@$SOURCE_DATE_EPOCH" "$work"/onair-?.efi "$work/loader.conf"
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/EFI/Linux ::/loader
mcopy -m -i "$esp" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -m -i "$esp" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/systemd/systemd-bootx64.efi
mcopy -m -i "$esp" "$work/onair-a.efi" "$work/onair-b.efi" ::/EFI/Linux/
mcopy -m -i "$esp" "$work/loader.conf" ::/loader/loader.conf

echo "==> data ext4"
mkdir -p "$work/data/onair"; chmod 0700 "$work/data/onair"
find "$work/data" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -L data -d "$work/data" \
  -U 6f6e6169-722d-6461-7461-000000000001 -E root_owner=0:0,hash_seed=6f6e6169-722d-6461-7461-000000000002 \
  "$work/data.ext4" "$(size_of data)M"

echo "==> GPT disk (genimage)"
cfg=$work/genimage.cfg
{
  echo "image onair-$board.img {"
  echo "  hdimage { partition-table-type = \"gpt\" disk-uuid = \"6f6e6169-722d-6469-736b-000000000001\" }"
  for p in $PARTITIONS; do
    IFS=: read -r name fs mib <<<"$p"
    case $fs in
      vfat) type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B; img=esp.vfat ;;
      squashfs) type=0FC63DAF-8483-4772-8E79-3D69D8477DE4; img=root.sqfs ;;
      ext4) type=0FC63DAF-8483-4772-8E79-3D69D8477DE4; img=data.ext4 ;;
    esac
    echo "  partition $name { image = \"$img\" partition-type-uuid = \"$type\" size = ${mib}M }"
  done
  echo "}"
} > "$cfg"
rm -rf "$work/genimage-tmp" "$work/genimage-root"; mkdir -p "$work/genimage-root"
genimage --config "$cfg" --rootpath "$work/genimage-root" --tmppath "$work/genimage-tmp" \
  --inputpath "$work" --outputpath "$out" >/dev/null 2>"$work/genimage.log" || { cat "$work/genimage.log" >&2; exit 1; }

img=$out/onair-$board.img
echo "==> compressed copy, bmap, manifest"
zstd -q -f -T2 -10 "$img" -o "$img.zst"
bmaptool -q create -o "$img.bmap" "$img"
cp "$work/root.sqfs" "$out/root.sqfs"
(cd "$out" && sha256sum "onair-$board.img" "onair-$board.img.zst" "onair-$board.img.bmap" root.sqfs > SHA256SUMS)

t1=$(date +%s)
echo "build-image: $img: $(( $(stat -c %s "$img") / 1048576 )) MiB raw," \
  "$(( $(stat -c %s "$img.zst") / 1024 )) KiB zstd; root squashfs $(stat -c %s "$out/root.sqfs") bytes" \
  "sha256 $(sha256sum "$out/root.sqfs" | cut -c1-16)…; $((t1 - t0)) s"
