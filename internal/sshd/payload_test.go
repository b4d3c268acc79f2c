package sshd

import (
	"bytes"
	"testing"

	"golang.org/x/crypto/ssh"
)

var payloadCases = []struct {
	name    string
	payload []byte
	ok      bool
}{
	{"openssh -R 22:localhost:22", ssh.Marshal(tcpipForwardRequest{"localhost", 22}), true},
	{"port 0", ssh.Marshal(tcpipForwardRequest{"", 0}), true},
	{"star bind", ssh.Marshal(tcpipForwardRequest{"*", 8080}), true},
	{"port too large", ssh.Marshal(tcpipForwardRequest{"", 65536}), false},
	{"truncated", []byte{0, 0, 0, 10, 'l', 'o'}, false},
	{"trailing junk", append(ssh.Marshal(tcpipForwardRequest{"", 22}), 1), false},
	{"empty", nil, false},
	{"huge length prefix", []byte{0xff, 0xff, 0xff, 0xff}, false},
}

func TestParseTCPIPForward(t *testing.T) {
	for _, tc := range payloadCases {
		_, err := parseTCPIPForward(tc.payload)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err=%v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestParseDirectTCPIP(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  directTCPIPRequest
		ok   bool
	}{
		{"ssh -W", directTCPIPRequest{"dev42", 22, "127.0.0.1", 65535}, true},
		{"no host", directTCPIPRequest{"", 22, "127.0.0.1", 1}, false},
		{"port 0", directTCPIPRequest{"dev42", 0, "127.0.0.1", 1}, false},
		{"port too large", directTCPIPRequest{"dev42", 1 << 20, "", 0}, false},
		{"long host", directTCPIPRequest{string(bytes.Repeat([]byte("a"), 300)), 22, "", 0}, false},
	} {
		_, err := parseDirectTCPIP(ssh.Marshal(tc.req))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err=%v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// FuzzParsePayloads feeds any bytes to both decoders: they must not panic,
// and whatever they accept must survive a round trip unchanged and respect
// the limits the rest of the server relies on.
func FuzzParsePayloads(f *testing.F) {
	for _, tc := range payloadCases {
		f.Add(tc.payload)
	}
	f.Add(ssh.Marshal(directTCPIPRequest{"dev42.example.test", 22, "::1", 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := parseTCPIPForward(b); err == nil {
			if r.BindPort > 65535 || len(r.BindAddr) > maxHostLen {
				t.Fatalf("accepted out-of-range %+v", r)
			}
			if !bytes.Equal(ssh.Marshal(r), b) {
				t.Fatalf("tcpip-forward round trip changed %x", b)
			}
		}
		if r, err := parseDirectTCPIP(b); err == nil {
			if r.Port == 0 || r.Port > 65535 || r.Host == "" || len(r.Host) > maxHostLen {
				t.Fatalf("accepted out-of-range %+v", r)
			}
			if !bytes.Equal(ssh.Marshal(r), b) {
				t.Fatalf("direct-tcpip round trip changed %x", b)
			}
		}
	})
}
