# setup.sh: sourced by the device scripts (run_all.sh, decode_ab.sh, profile_kernels.sh): the repo root, the
# output and work folders, the ICU the device image lacks (carried as .device/icu.tar.xz, unpacked into
# .cache/icu), configure_device_build DIR LOG (Release, CUDA sm_90, ninja, that ICU), ensure_model MODE PRESET
# (a random checkpoint under $WORK/models) and find_tool NAME (nsys, ncu).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/build-device/out}
WORK=${WORK:-/tmp/ropepp-device}
mkdir -p "$OUT" "$WORK/logs" "$WORK/models"
if [ -f "$ROOT/.device/icu.tar.xz" ] && [ ! -d "$ROOT/.cache/icu" ]; then
  mkdir -p "$ROOT/.cache" && tar -C "$ROOT/.cache" -xJf "$ROOT/.device/icu.tar.xz"
fi
[ -d "$ROOT/.cache/icu/lib" ] && export LD_LIBRARY_PATH="$ROOT/.cache/icu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

ensure_model() {  # mode (rope|eh|ec), preset (376m|776m): a random bf16 checkpoint at $WORK/models/<mode>-<preset>
  [ -f "$WORK/models/$1-$2/config.json" ] ||
    python3 "$ROOT/tools/gen_checkpoint.py" --out "$WORK/models/$1-$2" --preset "$2" --mode "$1" --dtype bf16 >/dev/null
}

find_tool() {  # an Nsight binary (nsys, ncu): on PATH or in the CUDA / Nsight install folders; empty if none
  command -v "$1" 2>/dev/null || ls /usr/local/cuda*/bin/"$1" /opt/nvidia/nsight-*/*/bin/"$1" \
    /usr/local/cuda*/nsight-*/bin/"$1" 2>/dev/null | head -1
}

configure_device_build() {  # build dir, log file
  local icu
  icu=$(ls "$ROOT"/.cache/icu/lib/libicuuc.so.* 2>/dev/null | head -1)
  local args=()
  [ -n "$icu" ] && args=(-DICU_INCLUDE_DIR="$ROOT/.cache/icu/include" -DICU_UC_LIBRARY="$icu" -DICU_UC_LIBRARY_RELEASE="$icu")
  cmake -S "$ROOT" -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DROPEPP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    "${args[@]}" >"$2" 2>&1
}
