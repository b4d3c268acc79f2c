package policy

import (
	"errors"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func FuzzParse(f *testing.F) {
	for _, tc := range parseCases() {
		f.Add([]byte(expand(f, tc.line)))
	}
	f.Add([]byte(expand(f, mixedFile)))
	f.Add([]byte(expand(f, authorizeFile)))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, errs := Parse(data)
		lines := strings.Split(string(data), "\n")

		used := map[int]string{} // line → "entry" or "error"
		last := 0
		for _, err := range errs {
			var le *LineError
			if !errors.As(err, &le) {
				t.Fatalf("%v is not a *LineError", err)
			}
			if le.Line <= last || le.Line > len(lines) || !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("line error %q out of order or out of range (%d lines)", err, len(lines))
			}
			last = le.Line
			used[le.Line] = "error"
		}

		var good []string
		last = 0
		now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
		for _, e := range p.Entries() {
			if e.Line <= last || e.Line > len(lines) || used[e.Line] != "" || e.Key == nil {
				t.Fatalf("entry on line %d (previous %d, %d lines, also %q) with key %v", e.Line, last, len(lines), used[e.Line], e.Key)
			}
			last = e.Line
			used[e.Line] = "entry"
			if e.Fingerprint != ssh.FingerprintSHA256(e.Key) {
				t.Fatalf("line %d: fingerprint %q", e.Line, e.Fingerprint)
			}
			names := e.Aliases
			if e.Hostname != "" {
				names = append([]string{e.Hostname}, names...)
			}
			for _, n := range names {
				if c, err := CanonicalName(n); err != nil || c != n {
					t.Fatalf("line %d: name %q is not canonical", e.Line, n)
				}
			}
			for _, tg := range e.PermitOpen {
				if tg.NameGlob == "" || tg.NameGlob != strings.ToLower(tg.NameGlob) || tg.Port > 65535 {
					t.Fatalf("line %d: target %+v", e.Line, tg)
				}
			}
			// None of these may panic, whatever the entry holds.
			e.Names("user")
			e.MayReach("dev1", 22)
			e.MayListen(22)
			got, err := p.Authorize(e.Key, netip.MustParseAddr("10.1.2.3"), now)
			if (got == nil) == (err == nil) || (got != nil && string(got.Key.Marshal()) != string(e.Key.Marshal())) {
				t.Fatalf("line %d: Authorize = %v, %v", e.Line, got, err)
			}
			good = append(good, lines[e.Line-1])
		}

		for i, l := range lines {
			if used[i+1] != "" {
				continue
			}
			if s := strings.TrimLeft(strings.TrimSuffix(l, "\r"), " \t"); s != "" && s[0] != '#' {
				t.Fatalf("line %d %q was neither an entry, an error, a blank nor a comment", i+1, l)
			}
		}

		p2, errs2 := Parse([]byte(strings.Join(good, "\n")))
		if len(errs2) != 0 || p2.Len() != p.Len() {
			t.Fatalf("re-parsing the good lines: %d entries (want %d), errors %v", p2.Len(), p.Len(), errs2)
		}
		for i, e2 := range p2.Entries() {
			a, b := *p.Entries()[i], *e2
			a.Line, b.Line = 0, 0
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("re-parsed entry differs:\n%+v\n%+v", a, b)
			}
		}
	})
}

// validName is CanonicalName's rule written as a regular expression, to check it against.
var validName = regexp.MustCompile(`^[A-Za-z0-9_-]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9_-])?$`)

func FuzzCanonicalName(f *testing.F) {
	for _, tc := range canonicalNameCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1024 {
			// Past 63 bytes every name fails the same way; long inputs only slow the
			// fuzzer down (minimising them took most of a 60s run).
			t.Skip()
		}
		got, err := CanonicalName(s)
		want := validName.MatchString(s) && !strings.Contains(s, "..")
		if (err == nil) != want {
			t.Fatalf("CanonicalName(%q) error %v; the reference says valid=%v", s, err, want)
		}
		if err != nil {
			if got != "" || !strings.HasPrefix(err.Error(), "policy: invalid name ") {
				t.Fatalf("CanonicalName(%q) = %q, %q", s, got, err)
			}
			return
		}
		if got != strings.ToLower(s) {
			t.Fatalf("CanonicalName(%q) = %q", s, got)
		}
		if again, err := CanonicalName(got); err != nil || again != got {
			t.Fatalf("CanonicalName is not idempotent on %q: %q, %v", got, again, err)
		}
	})
}

// FuzzAddrList checks the from= matcher against a reference that reads the pattern text
// afresh, and globMatch against refGlobMatch on arbitrary text.
func FuzzAddrList(f *testing.F) {
	for _, tc := range addrListCases {
		f.Add(tc.patterns, tc.addr)
	}
	for _, tc := range globCases {
		f.Add(tc.pattern, tc.s)
	}
	f.Fuzz(func(t *testing.T, patterns, addrText string) {
		if len(patterns) <= 512 && len(addrText) <= 512 {
			if got, want := globMatch(addrText, patterns), refGlobMatch(addrText, patterns); got != want {
				t.Fatalf("globMatch(%q, %q) = %v, reference %v", addrText, patterns, got, want)
			}
		}

		l, err := parseAddrList(patterns)
		if err != nil {
			if l != nil {
				t.Fatalf("parseAddrList(%q) returned a list and %v", patterns, err)
			}
			return
		}
		if len(l) != strings.Count(patterns, ",")+1 {
			t.Fatalf("parseAddrList(%q) = %d patterns", patterns, len(l))
		}
		addr, _ := netip.ParseAddr(addrText) // the zero Addr when invalid: nothing may match it
		if got, want := l.match(addr), refAddrMatch(patterns, addr); got != want {
			t.Fatalf("%q matching %q = %v, reference %v", patterns, addrText, got, want)
		}
	})
}

// refAddrMatch is addrList.match written from the pattern text, the slow way.
func refAddrMatch(patterns string, addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	a := addr.Unmap().WithZone("")
	admitted := false
	for _, item := range strings.Split(patterns, ",") {
		pat, negated := strings.CutPrefix(item, "!")
		var m bool
		if prefix, err := netip.ParsePrefix(pat); err == nil {
			m = prefix.Contains(a)
		} else if pa, err := netip.ParseAddr(pat); err == nil && pa.Zone() == "" {
			m = pa == a
		} else {
			m = refGlobMatch(strings.ToLower(a.String()), strings.ToLower(pat))
		}
		if m && negated {
			return false
		}
		admitted = admitted || m
	}
	return admitted
}
