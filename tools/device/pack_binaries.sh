#!/usr/bin/env bash
# pack_binaries.sh: builds executables HERE (Release, CUDA sm_90) and packs them with the shared libraries the
# device image lacks into .device/bin.tar.xz, so that a device call runs them without building: ~14 s instead of
# ~4 minutes of device time (run 7 of 2026-12-04, docs/device/2026-12-04-session6/). The device image is newer
# (Ubuntu 24.04, CUDA 13.0 like this machine): glibc, libstdc++ and CUDA's libraries come from it.
# ICU's 30 MB data library is replaced by a stub exporting its one symbol: bench and the CUDA tests never tokenize.
# A command that tokenizes (perplexity, generate) needs the real one: PACK_ICU_DATA=1.
#
#   bash tools/device/pack_binaries.sh [target ...]     (default: ropepp test_decoder_layers)
#   device call, carry [".device/bin.tar.xz"]:
#     tar -xJf .device/bin.tar.xz -C /tmp && export LD_LIBRARY_PATH=/tmp/bin/lib:/usr/local/cuda/lib64 &&
#     /tmp/bin/test_decoder_layers && /tmp/bin/ropepp bench --device cuda -m ...
# The working tree travels too (~43 MB with models/default): keep the archive under ~20 MB (64 MB in all).
# BASE=path/to/ropepp adds that binary as bin/ropepp_base (decode_ab.sh PREBUILT=1 runs it for the variants with
# BIN=base). The archive is one xz stream with a 64 MiB dictionary, so the binaries' common code (the kernels'
# fatbin is most of each) is stored once: three test binaries + two ropepp ~ the size of one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(ropepp test_decoder_layers)
export PATH="/usr/local/cuda/bin:$PATH"

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DROPEPP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build "$BUILD" --target "${TARGETS[@]}"

OUTD=$ROOT/.device/bin
rm -rf "$OUTD"
mkdir -p "$OUTD/lib"
for t in "${TARGETS[@]}"; do
  f=$(find "$BUILD" -maxdepth 2 -type f -name "$t" -perm -u+x | head -1)
  [ -n "$f" ] || { echo "pack_binaries.sh: no executable $t under $BUILD" >&2; exit 1; }
  cp "$f" "$OUTD/$t"
  strip "$OUTD/$t"
done
# Their shared libraries, less the system's and CUDA's (the device has both).
for t in "${TARGETS[@]}"; do ldd "$OUTD/$t"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|libcuda)\.so|/ld-linux|/usr/local/cuda' |
  while read -r lib; do cp -L "$lib" "$OUTD/lib/"; done
data=$(ls "$OUTD"/lib/libicudata.so.* 2>/dev/null | head -1 || true)
if [ -n "$data" ] && [ "${PACK_ICU_DATA:-0}" != 1 ]; then
  ver=${data##*.so.}
  printf 'const unsigned char icudt%s_dat[32] = {0};\n' "$ver" >"$OUTD/icudata_stub.c"
  cc -shared -fPIC -o "$data" -Wl,-soname,"libicudata.so.$ver" "$OUTD/icudata_stub.c"
  rm "$OUTD/icudata_stub.c"
fi
if [ -n "${BASE:-}" ]; then
  cp "$BASE" "$OUTD/ropepp_base" && strip "$OUTD/ropepp_base"
fi
for e in ${EXTRA:-}; do  # EXTRA="name=path ...": more ropepp builds, as bin/ropepp_<name> (decode_ab.sh BIN=<name>)
  cp "${e#*=}" "$OUTD/ropepp_${e%%=*}" && strip "$OUTD/ropepp_${e%%=*}"
done
tar -C "$ROOT/.device" -cf - bin | xz -9 -T1 >"$ROOT/.device/bin.tar.xz"
size=$(stat -c %s "$ROOT/.device/bin.tar.xz")
echo "pack_binaries.sh: .device/bin.tar.xz $((size / 1048576)) MiB: ${TARGETS[*]} + $(ls "$OUTD/lib" | wc -l) libraries"
[ "$size" -lt $((20 * 1048576)) ] || echo "pack_binaries.sh: warning: over 20 MiB; with the tree (~43 MB) it may exceed the 64 MiB a call carries" >&2
