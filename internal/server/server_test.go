package server

import (
	"path/filepath"
	"strings"
	"testing"
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
