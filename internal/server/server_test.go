package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-dev/switchboard/internal/board"
	"github.com/switchboard-dev/switchboard/internal/policy"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		err  string
	}{
		{"defaults", Options{Listen: ":2222", StateDir: "/var/lib/sb"}, ""},
		{"no listen", Options{StateDir: "x"}, "--listen"},
		{"listen without port", Options{Listen: "localhost", StateDir: "x"}, "--listen"},
		{"no state dir", Options{Listen: ":1"}, "--state-dir"},
		{"bad domain", Options{Listen: ":1", StateDir: "x", Domain: "a b"}, "--domain"},
		{"negative", Options{Listen: ":1", StateDir: "x", KeepaliveCount: -1}, "negative"},
	} {
		err := tc.o.Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: %v, want error containing %q", tc.name, err, tc.err)
		}
	}
	o := Options{Listen: ":2222", StateDir: "/var/lib/sb"}
	o.Validate()
	if o.AuthorizedKeys != filepath.Join("/var/lib/sb", "authorized_keys") {
		t.Errorf("default authorized_keys %q", o.AuthorizedKeys)
	}
}

func TestLastSeenRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), LastSeenFile)
	if m, err := loadLastSeen(path); err != nil || len(m) != 0 {
		t.Fatalf("missing file: %v %v", m, err)
	}
	when := time.Date(2026, 11, 23, 14, 2, 11, 0, time.UTC)
	want := map[string]board.Sighting{"dev42": {At: when, Device: "dev42"}, "cam": {At: when, Device: "dev42"}}
	if err := saveLastSeen(path, want); err != nil {
		t.Fatal(err)
	}
	m, err := loadLastSeen(path)
	if err != nil || len(m) != 2 || !m["cam"].At.Equal(when) || m["cam"].Device != "dev42" {
		t.Fatalf("reloaded %v, %v", m, err)
	}
	os.WriteFile(path, []byte(`{"DEV7":{"at":"2026-01-01T00:00:00Z","device":"Dev7"},
		"bad name!":{"at":"2026-01-01T00:00:00Z","device":"x"},"x":{"at":"2026-01-01T00:00:00Z","device":"bad device!"}}`), 0o600)
	if m, err := loadLastSeen(path); err != nil || len(m) != 1 || m["dev7"].Device != "dev7" {
		t.Fatalf("hand-edited file: %v, %v", m, err)
	}
	os.WriteFile(path, []byte(`{not json`), 0o600)
	if _, err := loadLastSeen(path); err == nil {
		t.Fatal("corrupt file accepted")
	}
}

func TestCiphersValidated(t *testing.T) {
	o := Options{Listen: ":1", StateDir: "x", Ciphers: []string{"aes128-gcm@openssh.com"}}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	o.Ciphers = []string{"3des-cbc"}
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "3des-cbc") {
		t.Fatalf("3des-cbc accepted: %v", err)
	}
}

func TestEnrolledDevicesOnly(t *testing.T) {
	p, errs := policy.Parse([]byte(
		`access="listen",hostname="dev42",alias="cam" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnS3Dq4ZiVN2xO0V0lgrELVBrhDNNS7Vq7l8Q6bKaHN dev42
access="initiate",hostname="opname" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2CyNDg9ENdHexmWwa0vvFqqtwSmBGJ9Jn5BTeVBUTL op
`))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for name, ok := range map[string]bool{"dev42": true, "cam": true, "opname": false, "dev43": false} {
		if err := enrolled(p, name); (err == nil) != ok {
			t.Errorf("enrolled(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}
