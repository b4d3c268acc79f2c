package policy

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// deviceFile returns an authorized_keys file of n devices, as a large deployment has, and
// the key of its last line.
func deviceFile(tb testing.TB, n int) ([]byte, ssh.PublicKey) {
	tb.Helper()
	var b strings.Builder
	var last ssh.PublicKey
	for i := range n {
		seed := make([]byte, ed25519.SeedSize)
		binary.BigEndian.PutUint64(seed, uint64(i))
		pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed).Public())
		if err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(&b, "access=\"listen\",hostname=\"dev%d\",from=\"10.0.0.0/8,!10.9.9.9\",no-pty %s", i,
			ssh.MarshalAuthorizedKey(pub))
		last = pub
	}
	return []byte(b.String()), last
}

func BenchmarkParse10k(b *testing.B) {
	data, _ := deviceFile(b, 10000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if p, errs := Parse(data); len(errs) != 0 || p.Len() != 10000 {
			b.Fatal(errs)
		}
	}
}

func BenchmarkAuthorize10k(b *testing.B) {
	data, key := deviceFile(b, 10000)
	p, _ := Parse(data)
	remote := netip.MustParseAddr("10.1.2.3")
	now := time.Now()
	for b.Loop() {
		if _, err := p.Authorize(key, remote, now); err != nil {
			b.Fatal(err)
		}
	}
}
