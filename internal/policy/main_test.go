package policy

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"
)

// TestMain fails the run if any test leaves a goroutine behind, which is how Watch is shown
// to clean up after itself.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testKey returns a deterministic ed25519 public key for seed.
func testKey(tb testing.TB, seed byte) ssh.PublicKey {
	tb.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return pub
}

// keyText returns the "ssh-ed25519 AAAA…" form of testKey(seed).
func keyText(tb testing.TB, seed byte) string {
	tb.Helper()
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(testKey(tb, seed))))
}

// expand replaces $K1 … $K9 in s with test keys 1 … 9 ("ssh-ed25519 AAAA…"), and $B1 … $B9
// with their base64 part alone, so tables read as authorized_keys lines.
func expand(tb testing.TB, s string) string {
	tb.Helper()
	for i := byte(1); i <= 9; i++ {
		k := keyText(tb, i)
		d := string('0' + rune(i))
		s = strings.ReplaceAll(s, "$K"+d, k)
		s = strings.ReplaceAll(s, "$B"+d, strings.Fields(k)[1])
	}
	return s
}
