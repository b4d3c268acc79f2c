package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// parseCase is one authorized_keys line ($K1 … $K9 stand for test keys) and either what the
// parsed entry must hold or a fragment of the line error. The table also seeds FuzzParse.
type parseCase struct {
	name    string
	line    string
	wantErr string              // "" for a good line
	want    *Entry              // fields compared when set: Roles, Hostname, Aliases, Comment, …
	check   func(*Entry) string // extra check: returns what is wrong, or ""
}

func parseCases() []parseCase {
	utc := func(y int, m time.Month, d, hh, mm, ss int) time.Time {
		return time.Date(y, m, d, hh, mm, ss, 0, time.UTC)
	}
	return []parseCase{
		// Good lines.
		{name: "plain key", line: "$K1 alice@laptop",
			want: &Entry{Comment: "alice@laptop"}},
		{name: "no comment", line: "$K1", want: &Entry{}},
		{name: "comment with spaces", line: "$K1 a b  c  ", want: &Entry{Comment: "a b  c"}},
		{name: "tabs, indent and CRLF", line: " \t$K1\tc\r", want: &Entry{Comment: "c"}},
		{name: "listen with hostname", line: `access="listen",hostname="Dev42" $K1 dev`,
			want: &Entry{Roles: Listen, Hostname: "dev42", Comment: "dev"}},
		{name: "both roles", line: `access="listen",access="initiate" $K1`,
			want: &Entry{Roles: Listen | Initiate}},
		{name: "option names are case-insensitive", line: `ACCESS="initiate",No-Pty,restrict,NO-X11-forwarding $K1 op`,
			want: &Entry{Roles: Initiate, Comment: "op", Ignored: []string{"no-pty", "restrict", "no-x11-forwarding"}}},
		{name: "aliases deduplicated and without the hostname", line: `alias="A",hostname="a",alias="B",alias="b",alias="c" $K1`,
			want: &Entry{Hostname: "a", Aliases: []string{"b", "c"}}},
		{name: "every ignored option", line: `restrict,pty,no-pty,agent-forwarding,no-agent-forwarding,x11-forwarding,no-x11-forwarding,user-rc,no-user-rc,port-forwarding,no-port-forwarding,touch-required,no-touch-required,verify-required,command="x",environment="A=b",tunnel="1" $K1`,
			want: &Entry{Ignored: []string{"restrict", "pty", "no-pty", "agent-forwarding", "no-agent-forwarding", "x11-forwarding", "no-x11-forwarding", "user-rc", "no-user-rc", "port-forwarding", "no-port-forwarding", "touch-required", "no-touch-required", "verify-required", "command", "environment", "tunnel"}}},
		{name: "quoted value with spaces and escaped quotes", line: `command="echo \"hi there\", bye",access="listen" $K1`,
			want: &Entry{Roles: Listen, Ignored: []string{"command"}}},
		{name: "two from options", line: `from="10.0.0.0/8,!10.9.9.9",from="*.*.*.*" $K1`,
			check: func(e *Entry) string {
				if len(e.from) != 2 || len(e.from[0]) != 2 || !e.from[0][1].negated {
					return "want two from= lists, the first with a negated pattern"
				}
				return ""
			}},
		{name: "expiry UTC date", line: `expiry-time="20260101Z" $K1`,
			want: &Entry{Expiry: utc(2026, 1, 1, 0, 0, 0)}},
		{name: "expiry UTC suffix and seconds", line: `expiry-time="20260102030405UTC" $K1`,
			want: &Entry{Expiry: utc(2026, 1, 2, 3, 4, 5)}},
		{name: "expiry local time", line: `expiry-time="202601011230" $K1`,
			want: &Entry{Expiry: time.Date(2026, 1, 1, 12, 30, 0, 0, time.Local)}},
		{name: "earliest expiry wins", line: `expiry-time="20270101Z",expiry-time="20260101z",expiry-time="20280101Z" $K1`,
			want: &Entry{Expiry: utc(2026, 1, 1, 0, 0, 0)}},
		{name: "permitopen", line: `permitopen="dev*:22",permitopen="DB?:*" $K1`,
			want: &Entry{PermitOpen: []Target{{"dev*", 22}, {"db?", 0}}}},
		{name: "permitlisten forms", line: `permitlisten="22",permitlisten="localhost:80",permitlisten="[::1]:443",permitlisten="*:8080",permitlisten="0.0.0.0:*",permitlisten=":22" $K1`,
			want: &Entry{PermitListen: []uint32{22, 80, 443, 8080, 0}}},
		{name: "cert-authority with principals", line: `cert-authority,principals="dev1,ops" $K1`,
			want: &Entry{CertAuthority: true, Principals: []string{"dev1", "ops"}}},

		// Bad lines.
		{name: "unknown option", line: `foo,access="listen" $K1`, wantErr: `unknown option "foo"`},
		{name: "unknown flag alone", line: `bogus $K1`, wantErr: `unknown option "bogus"`},
		{name: "lone word", line: "nonsense", wantErr: `unknown option "nonsense"`},
		{name: "mistyped key type", line: "ssh-ed2551 AAAAC3NzaC1lZDI1NTE5AAAAIA== x", wantErr: `unknown key type "ssh-ed2551"`},
		{name: "certificate", line: "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQ=", wantErr: "is a certificate"},
		{name: "certificate after options", line: `access="listen" ssh-rsa-cert-v01@openssh.com AAAA`, wantErr: "is a certificate"},
		{name: "dsa", line: "ssh-dss AAAAB3NzaC1kc3MAAACBAP1 x", wantErr: "ssh-dss (DSA) keys are insecure"},
		{name: "dsa after options", line: `access="listen" ssh-dss AAAA`, wantErr: "ssh-dss (DSA) keys are insecure"},
		{name: "bad base64", line: "ssh-ed25519 !!!!", wantErr: "not valid base64"},
		{name: "truncated key", line: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==", wantErr: "bad ssh-ed25519 key"},
		{name: "type does not match data", line: "ssh-rsa $B1", wantErr: `key data is "ssh-ed25519", not ssh-rsa`},
		{name: "no key data", line: "ssh-ed25519", wantErr: "no key data"},
		{name: "options but no key", line: `access="listen"`, wantErr: "options but no key"},
		{name: "unknown key type after options", line: `access="listen" ssh-foo AAAA`, wantErr: `unknown key type "ssh-foo"`},
		{name: "unterminated quote", line: `command="abc $K1`, wantErr: "unterminated quote"},
		{name: "unquoted value", line: `hostname=dev1 $K1`, wantErr: `value of option "hostname" must be in double quotes`},
		{name: "flag with value", line: `no-pty="yes" $K1`, wantErr: `option "no-pty" takes no value`},
		{name: "cert-authority with value", line: `cert-authority="yes" $K1`, wantErr: `option "cert-authority" takes no value`},
		{name: "value option without value", line: `from,access="listen" $K1`, wantErr: `option "from" needs a value`},
		{name: "ignored value option without value", line: `command $K1`, wantErr: `option "command" needs a value`},
		{name: "bad access", line: `access="admin" $K1`, wantErr: `access="admin": want "listen" or "initiate"`},
		{name: "hostname twice", line: `hostname="a",hostname="a" $K1`, wantErr: "more than one hostname="},
		{name: "hostname with space", line: `hostname="a b" $K1`, wantErr: `hostname="a b" is not a valid name: ' ' is not allowed`},
		{name: "hostname empty", line: `hostname="" $K1`, wantErr: "is not a valid name: empty"},
		{name: "hostname leading dot", line: `hostname=".a" $K1`, wantErr: "starts with '.'"},
		{name: "alias bad", line: `alias="a..b" $K1`, wantErr: `alias="a..b" is not a valid name`},
		{name: "from empty", line: `from="" $K1`, wantErr: "from=: empty pattern list"},
		{name: "from empty entry", line: `from="10.0.0.1,,10.0.0.2" $K1`, wantErr: "empty pattern"},
		{name: "from bare negation", line: `from="!" $K1`, wantErr: "empty pattern"},
		{name: "from mask too long", line: `from="10.0.0.0/33" $K1`, wantErr: `malformed CIDR "10.0.0.0/33"`},
		{name: "from mask not a number", line: `from="10.0.0.0/x" $K1`, wantErr: "malformed CIDR"},
		{name: "from host bits", line: `from="10.0.0.1/8" $K1`, wantErr: "did you mean 10.0.0.0/8"},
		{name: "from white space", line: `from="10.0.0.1, 10.0.0.2" $K1`, wantErr: "contains white space"},
		{name: "expiry too short", line: `expiry-time="2026" $K1`, wantErr: "want YYYYMMDD[HHMM[SS]][Z]"},
		{name: "expiry bad month", line: `expiry-time="20261301" $K1`, wantErr: "expiry-time="},
		{name: "expiry ten digits", line: `expiry-time="2026010112" $K1`, wantErr: "want YYYYMMDD"},
		{name: "expiry letter", line: `expiry-time="2026O101" $K1`, wantErr: "want YYYYMMDD"},
		{name: "expiry before 1970", line: `expiry-time="19600101Z" $K1`, wantErr: "before 1970"},
		{name: "expiry bare Z", line: `expiry-time="Z" $K1`, wantErr: "want YYYYMMDD"},
		{name: "permitopen no port", line: `permitopen="dev1" $K1`, wantErr: "want NAME:PORT"},
		{name: "permitopen port 0", line: `permitopen="dev1:0" $K1`, wantErr: "want 1-65535"},
		{name: "permitopen port too big", line: `permitopen="dev1:65536" $K1`, wantErr: "want 1-65535"},
		{name: "permitopen empty name", line: `permitopen=":22" $K1`, wantErr: "empty name"},
		{name: "permitopen bad name", line: `permitopen="dev/1:22" $K1`, wantErr: "'/' is not allowed"},
		{name: "permitlisten port 0", line: `permitlisten="0" $K1`, wantErr: "want 1-65535"},
		{name: "permitlisten bad host", line: `permitlisten="example.com:22" $K1`, wantErr: "host must be"},
		{name: "permitlisten bare ipv6", line: `permitlisten="::1:22" $K1`, wantErr: "in brackets"},
		{name: "permitlisten brackets without port", line: `permitlisten="[::1]" $K1`, wantErr: "want [ADDRESS]:PORT"},
		{name: "permitlisten ipv4 in brackets", line: `permitlisten="[10.0.0.1]:22" $K1`, wantErr: "not an IPv6 address"},
		{name: "principals twice", line: `cert-authority,principals="a",principals="b" $K1`, wantErr: "more than one principals="},
		{name: "principals empty", line: `cert-authority,principals="a,,b" $K1`, wantErr: "empty principal"},
		{name: "trailing comma", line: `access="listen", $K1`, wantErr: "options end with a comma"},
		{name: "leading comma", line: `,access="listen" $K1`, wantErr: "empty option name"},
		{name: "junk after value", line: `access="listen"x $K1`, wantErr: `unexpected "x" after option "access"`},
	}
}

func TestParseLine(t *testing.T) {
	for _, tc := range parseCases() {
		t.Run(tc.name, func(t *testing.T) {
			p, errs := Parse([]byte(expand(t, tc.line)))
			if tc.wantErr != "" {
				if len(errs) != 1 || p.Len() != 0 {
					t.Fatalf("got %d entries, errors %v; want one error containing %q", p.Len(), errs, tc.wantErr)
				}
				var le *LineError
				if !errors.As(errs[0], &le) || le.Line != 1 {
					t.Fatalf("error %#v is not a *LineError for line 1", errs[0])
				}
				if got := errs[0].Error(); !strings.HasPrefix(got, "line 1: ") || !strings.Contains(got, tc.wantErr) {
					t.Fatalf("error %q; want it to contain %q", got, tc.wantErr)
				}
				return
			}
			if len(errs) != 0 || p.Len() != 1 {
				t.Fatalf("got %d entries, errors %v; want one entry", p.Len(), errs)
			}
			e := p.Entries()[0]
			if e.Line != 1 || e.Key == nil || e.Fingerprint == "" {
				t.Errorf("entry has Line %d, Key %v, Fingerprint %q", e.Line, e.Key, e.Fingerprint)
			}
			if tc.want != nil {
				got := *e
				got.Line, got.Key, got.Fingerprint, got.from = 0, nil, "", nil
				if !reflect.DeepEqual(&got, tc.want) {
					t.Errorf("got  %+v\nwant %+v", &got, tc.want)
				}
			}
			if tc.check != nil {
				if why := tc.check(e); why != "" {
					t.Error(why)
				}
			}
		})
	}
}

// mixedFile has good lines, bad lines, blanks and comments; its line numbers are relied on.
const mixedFile = `# switchboard authorized_keys

access="listen",hostname="dev1" $K1 dev1
bogus,access="listen" $K2 bad option
   # an indented comment
access="initiate",permitopen="dev*:22" $K3 op
hostname="dev1",hostname="dev2" $K4 repeated hostname
ssh-ed25519 AAAA-not-base64
	
access="listen" $K5 last line without newline`

func TestParseMixed(t *testing.T) {
	p, errs := Parse([]byte(expand(t, mixedFile)))
	var gotLines []int
	for _, e := range p.Entries() {
		gotLines = append(gotLines, e.Line)
	}
	if want := []int{3, 6, 10}; !reflect.DeepEqual(gotLines, want) {
		t.Errorf("entries on lines %v, want %v", gotLines, want)
	}
	var errLines []int
	for _, err := range errs {
		var le *LineError
		if !errors.As(err, &le) {
			t.Fatalf("%v is not a *LineError", err)
		}
		errLines = append(errLines, le.Line)
	}
	if want := []int{4, 7, 8}; !reflect.DeepEqual(errLines, want) {
		t.Errorf("errors on lines %v, want %v (%v)", errLines, want, errs)
	}
	if got, want := errs[0].Error(), `line 4: unknown option "bogus"`; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	if p.Owner("dev1") == nil || p.Owner("dev1").Line != 3 {
		t.Errorf("dev1 owned by %+v, want the entry on line 3", p.Owner("dev1"))
	}
}

func TestParseEmpty(t *testing.T) {
	for _, in := range []string{"", "\n", "# only a comment\n\n  \n", "\r\n"} {
		p, errs := Parse([]byte(in))
		if p == nil || p.Len() != 0 || len(errs) != 0 {
			t.Errorf("Parse(%q) = %d entries, %v", in, p.Len(), errs)
		}
	}
}

func TestEntriesIsACopy(t *testing.T) {
	p, _ := Parse([]byte(expand(t, "$K1\n$K2\n")))
	es := p.Entries()
	es[0] = nil
	if p.Entries()[0] == nil {
		t.Fatal("Entries returned the policy's own slice")
	}
}

func TestParseKeyTypes(t *testing.T) {
	ec256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, pub := range []any{&ec256.PublicKey, &ec521.PublicKey, &rsaKey.PublicKey} {
		k, err := ssh.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		line := `access="listen" ` + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " c"
		p, errs := Parse([]byte(line))
		if len(errs) != 0 || p.Len() != 1 || p.Entries()[0].Key.Type() != k.Type() {
			t.Errorf("%s: %d entries, %v", k.Type(), p.Len(), errs)
		}
	}
}
