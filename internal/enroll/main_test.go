package enroll

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/switchboard-dev/switchboard/internal/hostkey"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newState returns a state dir holding a server host key, as `switchboard serve` leaves it.
func newState(tb testing.TB) (dir string, key ssh.PublicKey) {
	tb.Helper()
	dir = tb.TempDir()
	s, _, err := hostkey.LoadOrCreate(filepath.Join(dir, HostKeyFile))
	if err != nil {
		tb.Fatal(err)
	}
	return dir, s.PublicKey()
}

// testKey returns the "ssh-ed25519 AAAA…" text of a deterministic key.
func testKey(tb testing.TB, seed byte) string {
	tb.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

// expand replaces $K1 … $K9 in s with test keys.
func expand(tb testing.TB, s string) string {
	tb.Helper()
	for i := byte(1); i <= 9; i++ {
		s = strings.ReplaceAll(s, "$K"+string('0'+rune(i)), testKey(tb, i))
	}
	return s
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}

func readFile(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}
