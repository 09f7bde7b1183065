#!/usr/bin/env bash
# make arm64-check: build a linux-aarch64 package, install it in an arm64 Debian root under qemu
# user emulation with no network, segment a phantom case there, and compare with the x86 run of
# the same bundle. Needs root (debootstrap, chroot, binfmt) and a few minutes; not part of make test.
# Emulation is 100-800x slower than a board: the timings prove it runs, not how fast a board is.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ROOT=${ARM64_ROOT:-$PWD/.cache/arm64-root}
WORK=${ARM64_WORK:-$PWD/.cache/arm64-check}
CPU=${QEMU_CPU:-cortex-a72}
BUNDLE=${BUNDLE:-}
mkdir -p "$WORK"

[ "$(id -u)" = 0 ] || { echo "arm64-check needs root (debootstrap, chroot)" >&2; exit 1; }
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && apt-get install -y -qq qemu-user-static debootstrap >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  conf=$(ls /usr/lib/binfmt.d/qemu-aarch64*.conf | head -n 1)
  /usr/lib/systemd/systemd-binfmt "$conf" 2>/dev/null || \
    sed -n 's/^\(:.*\)$/\1/p' "$conf" > /proc/sys/fs/binfmt_misc/register
fi

if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  # the Debian mirror apt itself uses (deb822 "URIs:" lines, else classic "deb URL" lines)
  mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true;
              grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } | grep -v security | head -n 1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "arm64-check: debootstrap of an arm64 bookworm root (a few minutes, once)"
  if [ ! -x "$ROOT/debootstrap/debootstrap" ]; then  # first (download) stage not done yet
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --variant=minbase --foreign --include=python3,python3-venv,python3-pip \
      bookworm "$ROOT" "$mirror" >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log"; exit 1; }
    cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
  fi
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log"; exit 1; }
fi

# A case and a bundle (the demo's SNN bundle when there is one, else a quickly trained tiny one).
CASE_ROOT="$WORK/cases"
[ -d "$CASE_ROOT" ] || $BIN/spikeseg phantoms "$CASE_ROOT" --cases 1 --seed 7 --size small --quiet
CASE=$(ls -d "$CASE_ROOT"/*/ | head -n 1); CASE=${CASE%/}; NAME=$(basename "$CASE")
if [ -z "$BUNDLE" ]; then
  if [ -f demo/bundles/snn/manifest.json ]; then BUNDLE=demo/bundles/snn; else
    BUNDLE="$WORK/bundle"
    if [ ! -f "$BUNDLE/manifest.json" ]; then
      $BIN/spikeseg phantoms "$WORK/train" --cases 5 --seed 8 --quiet --overwrite
      $BIN/spikeseg train --data "$WORK/train" --out "$WORK/run" --view axial --spacing 6 --epochs 2 --quiet --overwrite
      $BIN/spikeseg export "$WORK/run" --out "$BUNDLE" --int8 --calib "$WORK/train" --allow-accuracy-drop --overwrite
    fi
  fi
fi

$BIN/spikeseg package "$BUNDLE" --target linux-aarch64 --out "$WORK/pkg" --tar --overwrite
PKG_MB=$(du -sm "$WORK/pkg" | cut -f1); TAR_MB=$(du -m "$WORK/pkg.tar.gz" | cut -f1)

rm -rf "$ROOT/opt/spikeseg" && mkdir -p "$ROOT/opt/spikeseg"
tar -xzf "$WORK/pkg.tar.gz" -C "$ROOT/opt/spikeseg"
cp -r "$CASE" "$ROOT/opt/spikeseg/case"
mountpoint -q "$ROOT/sys" || mount --bind /sys "$ROOT/sys"   # openvino segfaults without /sys
trap 'umount "$ROOT/sys" 2>/dev/null || true' EXIT
# no /proc in the chroot: onnxruntime would read the host's x86 /proc/cpuinfo and crash

t0=$(date +%s)
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root QEMU_CPU="$CPU" /bin/sh -c 'cd /opt/spikeseg/pkg && ./install.sh' >"$WORK/install.log" 2>&1 \
  || { tail -n 30 "$WORK/install.log"; exit 1; }
t1=$(date +%s)
VENV_MB=$(du -sm "$ROOT/opt/spikeseg/pkg/venv" | cut -f1)
for be in onnxruntime openvino; do
  rm -rf "$ROOT/opt/spikeseg/out-$be"
  s=$(date +%s)
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root QEMU_CPU="$CPU" /opt/spikeseg/pkg/spikeseg-run /opt/spikeseg/case /opt/spikeseg/out-$be \
    --backend $be --quiet >"$WORK/segment-$be.log" 2>&1 || { tail -n 30 "$WORK/segment-$be.log"; exit 1; }
  echo $(( $(date +%s) - s )) > "$WORK/seconds-$be"
  rm -rf "$WORK/x86-$be"
  $BIN/spikeseg segment "$BUNDLE" "$CASE" "$WORK/x86-$be" --backend $be --quiet >/dev/null
done

$BIN/python - "$ROOT/opt/spikeseg" "$WORK" "$NAME" <<PY
import json, sys
import nibabel as nib, numpy as np
arm, work, name = sys.argv[1:4]
print("arm64-check ($CPU under qemu user emulation; not board speed)")
print(f"package {int('$PKG_MB')} MB (tarball {int('$TAR_MB')} MB); installed venv {int('$VENV_MB')} MB; install {int('$t1') - int('$t0')} s")
for be in ("onnxruntime", "openvino"):
    a = np.asarray(nib.load(f"{arm}/out-{be}/{name}/{name}_pred.nii.gz").dataobj)
    b = np.asarray(nib.load(f"{work}/x86-{be}/{name}/{name}_pred.nii.gz").dataobj)
    ra = json.load(open(f"{arm}/out-{be}/{name}/{name}_report.json"))
    rb = json.load(open(f"{work}/x86-{be}/{name}/{name}_report.json"))
    same = float((a == b).mean())
    secs = open(f"{work}/seconds-{be}").read().strip()
    print(f"{be:<12} arm64 {ra['machine']} {ra['compute_precision']}: {secs} s (inference {ra['seconds']['total']:.1f} s); "
          f"labels identical to x86: {a.shape == b.shape and bool((a == b).all())} ({100 * same:.4f} % voxels agree)")
    if be == "onnxruntime" and not (a == b).all():
        sys.exit("arm64-check: ONNX Runtime labels differ between aarch64 and x86")
PY
