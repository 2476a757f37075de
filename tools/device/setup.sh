# setup.sh: sourced by the device scripts (run_all.sh, decode_ab.sh, profile_kernels.sh): the repo root, the
# output and work folders, the ICU the device image lacks (carried as .device/icu.tar.xz, unpacked into
# .cache/icu), configure_device_build DIR LOG (Release, CUDA sm_90, ninja, that ICU), ensure_model MODE PRESET
# (a random checkpoint under $WORK/models), find_tool NAME (nsys, ncu), unpack_prebuilt (the binaries of
# .device/bin.tar.xz into $WORK/bin) and variant_bin ENVS DEFAULT [BASE] (which binary a variant runs).
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

# .device/bin.tar.xz (pack_binaries.sh) into $WORK/bin and its libraries on the path; status 1 without it.
unpack_prebuilt() {
  rm -rf "$WORK/bin"  # a warm machine keeps $WORK: no binary of an earlier archive stays
  tar -xJf "$ROOT/.device/bin.tar.xz" -C "$WORK" || { echo "no .device/bin.tar.xz to unpack" >&2; return 1; }
  # after the carried ICU (above): the archive's ICU data may be a stub that cannot tokenize
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$WORK/bin/lib:/usr/local/cuda/lib64"
}

# A variant's settings "ENV=1,BIN=name,...": sets BIN to the binary it runs ($1, the default; BIN=base: $2 when
# given; BIN=<name>: $WORK/bin/ropepp_<name>, pack_binaries.sh BASE= / EXTRA=) and ENVS to the settings without BIN.
variant_bin() {  # envs default_binary [base_binary]
  BIN=$2 ENVS=$1
  case ",$1," in
    *,BIN=*)
      local b
      b=$(echo ",$1," | sed 's/.*,BIN=\([^,]*\),.*/\1/')
      BIN=$WORK/bin/ropepp_$b
      [ "$b" = base ] && [ -n "${3:-}" ] && BIN=$3
      ENVS=$(echo ",$1," | sed "s/,BIN=$b,/,/; s/^,//; s/,$//")
      ;;
  esac
}
