# setup.sh: sourced by the device scripts (run_all.sh, decode_ab.sh, profile_kernels.sh): the repo root, the
# output and work folders, the ICU the device image lacks (carried as .device/icu.tar.xz, unpacked into
# .cache/icu), and configure_device_build DIR LOG (Release, CUDA sm_90, ninja, that ICU).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$ROOT/build-device/out}
WORK=${WORK:-/tmp/ropepp-device}
mkdir -p "$OUT" "$WORK/logs" "$WORK/models"
if [ -f "$ROOT/.device/icu.tar.xz" ] && [ ! -d "$ROOT/.cache/icu" ]; then
  mkdir -p "$ROOT/.cache" && tar -C "$ROOT/.cache" -xJf "$ROOT/.device/icu.tar.xz"
fi
[ -d "$ROOT/.cache/icu/lib" ] && export LD_LIBRARY_PATH="$ROOT/.cache/icu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

configure_device_build() {  # build dir, log file
  local icu
  icu=$(ls "$ROOT"/.cache/icu/lib/libicuuc.so.* 2>/dev/null | head -1)
  local args=()
  [ -n "$icu" ] && args=(-DICU_INCLUDE_DIR="$ROOT/.cache/icu/include" -DICU_UC_LIBRARY="$icu" -DICU_UC_LIBRARY_RELEASE="$icu")
  cmake -S "$ROOT" -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DROPEPP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    "${args[@]}" >"$2" 2>&1
}
