#!/usr/bin/env bash
# Rebuild third_party/golang.org/x/crypto from upstream golang.org/x/crypto
# plus third_party/x-crypto.patch (why: third_party/README.md).
#
#   scripts/x-crypto.sh            rebuild the copy from upstream at $VERSION
#   scripts/x-crypto.sh --check    fail if the copy is not exactly upstream + patch
#   scripts/x-crypto.sh --diff     print the copy's difference from upstream
#                                  (to refresh the patch after editing the copy)
#
# Upgrading x/crypto: set VERSION below, run the script, fix the patch if it no
# longer applies, run `make unit` (which runs the copy's own ssh tests too).
set -euo pipefail

VERSION=v0.58.0
# The packages switchboard and the copy's own ssh tests import; nothing else is kept.
PACKAGES=(blowfish chacha20 cryptobyte curve25519 internal/alias internal/poly1305 ssh)
# Tests and data of the packages that are not patched: not run here, so not kept.
PRUNE=(ssh/agent ssh/test)

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/third_party/golang.org/x/crypto
patch=$root/third_party/x-crypto.patch

upstream() {
	# Outside the module: go.mod's replace must not redirect the download.
	(cd / && GOFLAGS=-mod=mod GO111MODULE=on go mod download -json "golang.org/x/crypto@$VERSION") |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# assemble DIR: upstream's kept packages, pruned, in DIR.
assemble() {
	local up out=$1
	up=$(upstream)
	[ -d "$up" ] || { echo "x-crypto: could not download golang.org/x/crypto@$VERSION" >&2; exit 1; }
	mkdir -p "$out"
	cp "$up"/{LICENSE,PATENTS,go.mod,go.sum} "$out"/
	for p in "${PACKAGES[@]}"; do
		mkdir -p "$out/$(dirname "$p")"
		cp -r "$up/$p" "$out/$p"
	done
	chmod -R u+w "$out"
	for p in "${PRUNE[@]}"; do rm -rf "${out:?}/$p"; done
	for p in "${PACKAGES[@]}"; do
		[ "$p" = ssh ] && continue
		find "$out/$p" \( -name '*_test.go' -o -name testdata \) -prune -exec rm -rf {} +
	done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
--diff)
	assemble "$tmp/a"
	# No timestamps, so that the patch only changes when the code does.
	(cd "$tmp" && cp -r "$dest" b && diff -ruN a b | sed -E 's/^(---|\+\+\+) ([^\t]*)\t.*/\1 \2/') || true
	;;
--check)
	assemble "$tmp/want"
	(cd "$tmp/want" && patch -s -p1 <"$patch")
	if ! diff -r "$tmp/want" "$dest" >"$tmp/diff"; then
		cat "$tmp/diff" >&2
		echo "x-crypto: third_party/golang.org/x/crypto is not upstream $VERSION + x-crypto.patch" >&2
		exit 1
	fi
	echo "x-crypto: third_party/golang.org/x/crypto is upstream $VERSION + x-crypto.patch"
	;;
"")
	assemble "$tmp/new"
	(cd "$tmp/new" && patch -s -p1 <"$patch")
	rm -rf "$dest"
	mkdir -p "$(dirname "$dest")"
	cp -r "$tmp/new" "$dest"
	echo "x-crypto: rebuilt from golang.org/x/crypto@$VERSION + x-crypto.patch"
	;;
*)
	echo "usage: $0 [--check|--diff]" >&2
	exit 2
	;;
esac
