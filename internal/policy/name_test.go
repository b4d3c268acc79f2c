package policy

import (
	"strings"
	"testing"
)

// canonicalNameCases also seed FuzzCanonicalName.
var canonicalNameCases = []struct {
	in, want, wantErr string
}{
	{"a", "a", ""},
	{"Dev-42_x.y", "dev-42_x.y", ""},
	{"PI", "pi", ""},
	{"_", "_", ""},
	{"-a-", "-a-", ""},
	{"a.b.c", "a.b.c", ""},
	{strings.Repeat("x", 63), strings.Repeat("x", 63), ""},
	{"", "", "empty"},
	{strings.Repeat("x", 64), "", "longer than 63 characters"},
	{"a b", "", `' ' is not allowed`},
	{"café", "", `'é' is not allowed`},
	{"a\x00", "", `'\x00' is not allowed`},
	{"a/b", "", `'/' is not allowed`},
	{"a:22", "", `':' is not allowed`},
	{"dev*", "", `'*' is not allowed`},
	{".a", "", "starts with '.'"},
	{"a.", "", "ends with '.'"},
	{".", "", "starts with '.'"},
	{"a..b", "", `contains ".."`},
}

func TestCanonicalName(t *testing.T) {
	for _, tc := range canonicalNameCases {
		got, err := CanonicalName(tc.in)
		if tc.wantErr == "" {
			if err != nil || got != tc.want {
				t.Errorf("CanonicalName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.HasPrefix(err.Error(), "policy: invalid name ") || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("CanonicalName(%q) error %v; want it to contain %q", tc.in, err, tc.wantErr)
		}
	}
}

// globCases also seed FuzzAddrList, whose reference matcher checks globMatch further.
var globCases = []struct {
	s, pattern string
	want       bool
}{
	{"", "", true},
	{"", "*", true},
	{"", "?", false},
	{"a", "", false},
	{"abc", "abc", true},
	{"abc", "ab", false},
	{"abc", "a*", true},
	{"abc", "*c", true},
	{"abc", "a*c", true},
	{"abc", "a*b*c", true},
	{"abc", "a*d", false},
	{"abc", "?b?", true},
	{"abc", "??", false},
	{"abcbc", "*bc", true},
	{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "*a*a*a*a*a*a*a*a*a*a*c", false},
	{"10.1.2.3", "10.*.3", true},
	{"10.1.2.3", "10.?.2.*", true},
	{"10.1.2.3", "10.1.2.?3", false},
	{"mississippi", "m*iss*ppi", true},
	{"mississippi", "m*iss*x", false},
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range globCases {
		if got := globMatch(tc.s, tc.pattern); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tc.s, tc.pattern, got, tc.want)
		}
		if got := refGlobMatch(tc.s, tc.pattern); got != tc.want {
			t.Errorf("refGlobMatch(%q, %q) = %v, want %v", tc.s, tc.pattern, got, tc.want)
		}
	}
}

// refGlobMatch is an obviously correct (dynamic programming) glob matcher to check globMatch
// against: m[i][j] says whether s[i:] matches pattern[j:].
func refGlobMatch(s, pattern string) bool {
	m := make([][]bool, len(s)+1)
	for i := range m {
		m[i] = make([]bool, len(pattern)+1)
	}
	m[len(s)][len(pattern)] = true
	for i := len(s); i >= 0; i-- {
		for j := len(pattern) - 1; j >= 0; j-- {
			switch pattern[j] {
			case '*':
				m[i][j] = m[i][j+1] || (i < len(s) && m[i+1][j])
			case '?':
				m[i][j] = i < len(s) && m[i+1][j+1]
			default:
				m[i][j] = i < len(s) && s[i] == pattern[j] && m[i+1][j+1]
			}
		}
	}
	return m[0][0]
}
