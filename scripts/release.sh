#!/usr/bin/env bash
# Build static release binaries of switchboard for Linux into dist/, with SHA256SUMS.
#
#   scripts/release.sh [VERSION]        (or VERSION=… scripts/release.sh)
#
# VERSION defaults to `git describe --tags --always --dirty`, else "dev". Each binary is
# dist/switchboard-VERSION-linux-ARCH for ARCH in amd64, arm64, armv6, armv7 and mipsle
# (soft float). Exits non-zero if any build fails.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
GO=${GO:-go}

VERSION=${1:-${VERSION:-}}
if [ -z "$VERSION" ]; then
  VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
case $VERSION in
  *[!A-Za-z0-9._+-]* | "") echo "release: VERSION \"$VERSION\" may hold only letters, digits and . _ + -" >&2; exit 2 ;;
esac

# name GOARCH GOARM GOMIPS
targets=(
  "amd64  amd64  -  -"
  "arm64  arm64  -  -"
  "armv6  arm    6  -"
  "armv7  arm    7  -"
  "mipsle mipsle -  softfloat"
)

dist=$here/dist
mkdir -p "$dist"
files=()
for t in "${targets[@]}"; do
  read -r name arch arm mips <<<"$t"
  out="switchboard-$VERSION-linux-$name"
  echo "release: building $out" >&2
  vars=(CGO_ENABLED=0 GOOS=linux GOARCH="$arch")
  [ "$arm" = - ] || vars+=(GOARM="$arm")
  [ "$mips" = - ] || vars+=(GOMIPS="$mips")
  env "${vars[@]}" "$GO" build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$dist/$out" ./cmd/switchboard
  files+=("$out")
done

cd "$dist"
if command -v sha256sum >/dev/null; then
  sha256sum "${files[@]}" > SHA256SUMS
else
  shasum -a 256 "${files[@]}" > SHA256SUMS
fi

echo "release: $VERSION in $dist" >&2
for f in "${files[@]}"; do
  printf '%10s  %s\n' "$(wc -c < "$f" | tr -d ' ')" "$f"
done
printf '%10s  %s\n' "" SHA256SUMS
