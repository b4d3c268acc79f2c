package policy

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// authorizeFile is the policy the Authorize table runs against; the table relies on its line
// numbers.
const authorizeFile = `access="listen",from="10.0.0.0/8,!10.9.9.9" $K1 line 1
access="initiate",from="192.168.1.*",from="!192.168.1.13,*" $K2 line 2
access="initiate",expiry-time="20260101Z" $K3 line 3
access="listen",from="10.0.0.0/8" $K4 line 4: same key as line 5
access="initiate",from="2001:DB8::/32" $K4 line 5
$K5 line 6: no access
cert-authority,access="listen" $K6 line 7
access="listen",from="172.16.*",expiry-time="20250101Z" $K7 line 8
access="listen" $K7 line 9: the fallback for line 8`

func TestAuthorize(t *testing.T) {
	p, errs := Parse([]byte(expand(t, authorizeFile)))
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	before := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	expiry := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		key        byte // 0: nil key
		remote     string
		now        time.Time
		wantLine   int    // entry expected, or the Denial's Line
		wantReason string // "" when admitted
	}{
		{"cidr", 1, "10.1.2.3", before, 1, ""},
		{"mapped ipv4", 1, "::ffff:10.1.2.3", before, 1, ""},
		{"negated address", 1, "10.9.9.9", before, 1, "from= does not match 10.9.9.9"},
		{"outside cidr", 1, "192.168.0.1", before, 1, "from= does not match 192.168.0.1"},
		{"no address", 1, "", before, 1, "from= does not match invalid IP"},
		{"glob", 2, "192.168.1.7", before, 2, ""},
		{"second from= refuses", 2, "192.168.1.13", before, 2, "from= does not match 192.168.1.13"},
		{"first from= refuses", 2, "10.0.0.1", before, 2, "from= does not match 10.0.0.1"},
		{"before expiry", 3, "10.0.0.1", expiry.Add(-time.Nanosecond), 3, ""},
		{"at expiry", 3, "10.0.0.1", expiry, 3, "expired 2026-01-01T00:00:00Z"},
		{"after expiry", 3, "10.0.0.1", expiry.Add(time.Hour), 3, "expired 2026-01-01T00:00:00Z"},
		{"expiry in another zone", 3, "10.0.0.1", expiry.In(time.FixedZone("X", 3600)).Add(-time.Second), 3, ""},
		{"same key, first line admits", 4, "10.0.0.1", before, 4, ""},
		{"same key, second line admits", 4, "2001:db8::1", before, 5, ""},
		{"same key, both refuse: first reason", 4, "192.0.2.1", before, 4, "from= does not match 192.0.2.1"},
		{"no access", 5, "10.0.0.1", before, 6, "no access= option"},
		{"cert-authority", 6, "10.0.0.1", before, 7, "cert-authority key cannot log in directly"},
		{"first line admits", 7, "172.16.0.1", before, 8, ""},
		{"first line expired, fallback admits", 7, "172.16.0.1", expiry, 9, ""},
		{"first line refuses from=, fallback admits", 7, "1.2.3.4", before, 9, ""},
		{"unknown key", 8, "10.0.0.1", before, 0, "unknown key"},
		{"nil key", 0, "10.0.0.1", before, 0, "unknown key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var remote netip.Addr
			if tc.remote != "" {
				remote = netip.MustParseAddr(tc.remote)
			}
			key := testKey(t, tc.key)
			if tc.key == 0 {
				key = nil
			}
			e, err := p.Authorize(key, remote, tc.now)
			if tc.wantReason == "" {
				if err != nil || e == nil || e.Line != tc.wantLine {
					t.Fatalf("got entry %v, %v; want the entry on line %d", e, err, tc.wantLine)
				}
				return
			}
			var d *Denial
			if e != nil || !errors.As(err, &d) {
				t.Fatalf("got entry %v, error %v; want a *Denial", e, err)
			}
			if d.Reason != tc.wantReason || d.Line != tc.wantLine {
				t.Errorf("denial %q on line %d; want %q on line %d", d.Reason, d.Line, tc.wantReason, tc.wantLine)
			}
			if err.Error() != "policy: "+tc.wantReason {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestAuthorizeNilAndEmptyPolicy(t *testing.T) {
	for _, p := range []*Policy{nil, {}} {
		_, err := p.Authorize(testKey(t, 1), netip.MustParseAddr("10.0.0.1"), time.Now())
		var d *Denial
		if !errors.As(err, &d) || d.Reason != "unknown key" {
			t.Errorf("got %v, want unknown key", err)
		}
		if p.Len() != 0 || p.Entries() != nil || p.Owner("x") != nil {
			t.Error("empty policy is not empty")
		}
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		line    string
		user    string
		want    []string
		wantErr string
	}{
		{`hostname="Dev1",alias="d1",alias="dev-one" $K1`, "anything", []string{"dev1", "d1", "dev-one"}, ""},
		{`hostname="dev1" $K1`, "not a name!", []string{"dev1"}, ""},
		{`$K1`, "Pi-Kitchen", []string{"pi-kitchen"}, ""},
		{`alias="k",alias="pi" $K1`, "PI", []string{"pi", "k"}, ""},
		{`alias="k" $K1`, "bad user", nil, `policy: invalid name "bad user": ' ' is not allowed`},
		{`$K1`, "", nil, "policy: invalid name \"\": empty"},
	}
	for _, tc := range tests {
		p, errs := Parse([]byte(expand(t, tc.line)))
		if len(errs) != 0 {
			t.Fatal(errs)
		}
		got, err := p.Entries()[0].Names(tc.user)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s as %q: error %v, want %q", tc.line, tc.user, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s as %q: got %q, %v; want %q", tc.line, tc.user, got, err, tc.want)
		}
	}
}

func TestMayReach(t *testing.T) {
	tests := []struct {
		permit string // permitopen values, space-separated
		name   string
		port   uint32
		want   bool
	}{
		{"", "anything", 1, true},
		{"dev*:22", "dev1", 22, true},
		{"dev*:22", "dev", 22, true},
		{"dev*:22", "dev1", 23, false},
		{"dev*:22", "prod", 22, false},
		{"dev*:22", "DEV1", 22, true},
		{"DEV?:22", "dev1", 22, true},
		{"dev?:22", "dev12", 22, false},
		{"db?:*", "db1", 5432, true},
		{"*:22", "x", 22, true},
		{"*:22", "x", 80, false},
		{"a.*.c:80 b:*", "b", 9, true},
		{"a.*.c:80 b:*", "a.x.y.c", 80, true},
		{"a.*.c:80 b:*", "a.c", 80, false},
	}
	for _, tc := range tests {
		line := "$K1"
		if tc.permit != "" {
			var opts []string
			for _, v := range strings.Fields(tc.permit) {
				opts = append(opts, `permitopen="`+v+`"`)
			}
			line = strings.Join(opts, ",") + " " + line
		}
		p, errs := Parse([]byte(expand(t, line)))
		if len(errs) != 0 {
			t.Fatal(errs)
		}
		if got := p.Entries()[0].MayReach(tc.name, tc.port); got != tc.want {
			t.Errorf("permitopen %q: MayReach(%q, %d) = %v, want %v", tc.permit, tc.name, tc.port, got, tc.want)
		}
	}
}

func TestMayListen(t *testing.T) {
	tests := []struct {
		permit []uint32
		port   uint32
		want   bool
	}{
		{nil, 22, true},
		{nil, 0, true},
		{[]uint32{22, 80}, 22, true},
		{[]uint32{22, 80}, 80, true},
		{[]uint32{22, 80}, 81, false},
		{[]uint32{22, 80}, 0, false}, // a free port may be any port, which is not allowed
		{[]uint32{22, 0}, 8080, true},
		{[]uint32{0}, 0, true},
	}
	for _, tc := range tests {
		e := &Entry{PermitListen: tc.permit}
		if got := e.MayListen(tc.port); got != tc.want {
			t.Errorf("PermitListen %v: MayListen(%d) = %v, want %v", tc.permit, tc.port, got, tc.want)
		}
	}
}

func TestOwner(t *testing.T) {
	p, errs := Parse([]byte(expand(t, `access="listen" $K1
access="listen",hostname="dev1",alias="kitchen" $K2
access="listen",hostname="kitchen",alias="dev1" $K3
`)))
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	for name, wantLine := range map[string]int{"dev1": 2, "DEV1": 2, "kitchen": 2, "other": 0} {
		got := p.Owner(name)
		if (got == nil && wantLine != 0) || (got != nil && got.Line != wantLine) {
			t.Errorf("Owner(%q) = %+v, want line %d", name, got, wantLine)
		}
	}
}

func TestRoleString(t *testing.T) {
	for r, want := range map[Role]string{
		0:                  "none",
		Listen:             "listen",
		Initiate:           "initiate",
		Listen | Initiate:  "listen,initiate",
		Listen | Role(128): "listen,0x80",
	} {
		if got := r.String(); got != want {
			t.Errorf("Role(%d).String() = %q, want %q", r, got, want)
		}
	}
}

func TestTargetString(t *testing.T) {
	if got := (Target{"dev*", 22}).String(); got != "dev*:22" {
		t.Error(got)
	}
	if got := (Target{"dev*", 0}).String(); got != "dev*:*" {
		t.Error(got)
	}
}
