package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// addrListCases also seed FuzzAddrList.
var addrListCases = []struct {
	patterns string
	addr     string // "" for no address
	want     bool
	wantErr  string // parse error fragment; want is then ignored
}{
	{"10.0.0.0/8", "10.1.2.3", true, ""},
	{"10.0.0.0/8", "11.1.2.3", false, ""},
	{"10.1.2.3", "10.1.2.3", true, ""},
	{"10.1.2.3", "10.1.2.4", false, ""},
	{"10.0.0.0/8", "::ffff:10.1.2.3", true, ""},
	{"10.0.0.0/8,!10.9.0.0/16", "10.9.1.1", false, ""},
	{"!10.9.0.0/16,10.0.0.0/8", "10.9.1.1", false, ""},
	{"!10.9.0.0/16,10.0.0.0/8", "10.8.1.1", true, ""},
	{"!10.9.0.0/16", "", false, "only negated patterns"}, // it would admit nothing
	{"!10.9.0.0/16,!10.8.0.0/16", "", false, "only negated patterns"},
	{"192.168.1.*", "192.168.1.200", true, ""},
	{"192.168.1.?", "192.168.1.20", false, ""},
	{"*", "2001:db8::1", true, ""},
	{"*,!2001:db8::*", "2001:db8::1", false, ""},
	{"2001:DB8::*", "2001:db8::1", true, ""}, // sshd also matches the list as a lower-cased host name
	{"2001:db8::/32", "2001:db8:1::1", true, ""},
	{"2001:db8::/32", "2001:db9::1", false, ""},
	{"2001:db8::1", "2001:0db8:0::1", true, ""},
	{"0.0.0.0/0", "203.0.113.9", true, ""},
	{"0.0.0.0/0", "::1", false, ""},
	{"::/0", "10.0.0.1", false, ""},
	{"*.example.com", "10.0.0.1", false, ""}, // no DNS: a host name never matches
	{"*", "", false, ""},
	{"", "", false, "empty pattern list"},
	{",10.0.0.1", "", false, "empty pattern"},
	{"10.0.0.1,", "", false, "empty pattern"},
	{"!", "", false, "empty pattern"},
	{"10.0.0.0/33", "", false, "malformed CIDR"},
	{"10.0.0.0/", "", false, "malformed CIDR"},
	{"*/8", "", false, "malformed CIDR"},
	{"10.0.0.1/8", "", false, "bits set beyond its /8 mask"},
	{"10.0.0.1 ", "", false, "white space"},
}

func TestAddrList(t *testing.T) {
	for _, tc := range addrListCases {
		l, err := parseAddrList(tc.patterns)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseAddrList(%q) error %v, want %q", tc.patterns, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseAddrList(%q): %v", tc.patterns, err)
			continue
		}
		var addr netip.Addr
		if tc.addr != "" {
			addr = netip.MustParseAddr(tc.addr)
		}
		if got := l.match(addr); got != tc.want {
			t.Errorf("%q matching %s = %v, want %v", tc.patterns, tc.addr, got, tc.want)
		}
	}
}
