package enroll

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/switchboard-dev/switchboard/internal/policy"
)

// newLineFor is the line rewrite appends in the tests ($K9 stands for the new key).
func newLineFor(tb testing.TB, r Role, name string) string {
	return AuthorizedLine(r, name, testKey(tb, 9))
}

// rewriteCases also seed FuzzRewrite. In data and want, $K1 … $K9 are keys and $NEW is the
// line enroll adds.
var rewriteCases = []struct {
	desc        string
	data        string
	role        Role
	name        string
	force       bool
	want        string // "" when an error is wanted
	wantErr     string
	wantLine    int
	wantRemoved []int
	wantWarn    string // fragment of the only warning, if any
}{
	{desc: "empty file", data: "", role: Device, name: "dev42",
		want: "$NEW\n", wantLine: 1},
	{desc: "new device among others", role: Device, name: "dev42",
		data: "# devices\n\naccess=\"listen\",hostname=\"dev1\" $K1 switchboard-device:dev1\nbogus line\n",
		want: "# devices\n\naccess=\"listen\",hostname=\"dev1\" $K1 switchboard-device:dev1\nbogus line\n$NEW\n", wantLine: 5},
	{desc: "no final line end", role: Operator, name: "alice",
		data: "access=\"initiate\" $K1 bob", want: "access=\"initiate\" $K1 bob\n$NEW\n", wantLine: 2},
	{desc: "CRLF kept", role: Device, name: "dev42",
		data: "# a\r\naccess=\"listen\",hostname=\"dev1\" $K1\r\n\r\n",
		want: "# a\r\naccess=\"listen\",hostname=\"dev1\" $K1\r\n\r\n$NEW\r\n", wantLine: 4},
	{desc: "CRLF without final line end", role: Device, name: "dev42",
		data: "# a\r\n# b", want: "# a\r\n# b\r\n$NEW\r\n", wantLine: 3},
	{desc: "device exists by hostname", role: Device, name: "dev42",
		data: "# x\naccess=\"listen\",hostname=\"DEV42\" $K1 someone\n", wantErr: `device "dev42" is already enrolled (authorized_keys line 2); use --force`},
	{desc: "device exists by comment", role: Device, name: "dev42",
		data: "access=\"listen\",hostname=\"renamed\" $K1 switchboard-device:dev42\n", wantErr: "line 1"},
	{desc: "operator exists by comment", role: Operator, name: "alice",
		data: "\n\naccess=\"initiate\" $K1 switchboard-operator:Alice\n", wantErr: `operator "alice" is already enrolled (authorized_keys line 3)`},
	{desc: "an operator does not clash with a device", role: Operator, name: "dev42",
		data: "access=\"listen\",hostname=\"dev42\" $K1 switchboard-device:dev42\n",
		want: "access=\"listen\",hostname=\"dev42\" $K1 switchboard-device:dev42\n$NEW\n", wantLine: 2},
	{desc: "a device comment does not clash with an operator", role: Device, name: "alice",
		data: "access=\"initiate\" $K1 switchboard-operator:alice\n",
		want: "access=\"initiate\" $K1 switchboard-operator:alice\n$NEW\n", wantLine: 2},
	{desc: "alias is refused even with force", role: Device, name: "dev42", force: true,
		data: "access=\"listen\",hostname=\"gw\",alias=\"dev42\" $K1\n", wantErr: `"dev42" is an alias of another key (authorized_keys line 1)`},
	{desc: "rotation", role: Device, name: "dev42", force: true,
		data: "# keep\r\naccess=\"listen\",hostname=\"dev42\" $K1 switchboard-device:dev42\naccess=\"listen\",hostname=\"dev1\" $K2\n",
		want: "# keep\r\naccess=\"listen\",hostname=\"dev1\" $K2\n$NEW\n", wantLine: 3, wantRemoved: []int{2}},
	{desc: "rotation removes every line of the name and warns of lost options", role: Device, name: "dev42", force: true,
		data: "access=\"listen\",hostname=\"dev42\" $K1 switchboard-device:dev42\n" +
			"bad line\n" +
			"from=\"10.0.0.0/8\",access=\"listen\",hostname=\"dev42\",command=\"echo 100%\" $K3 old\n" +
			"  access=\"listen\",HOSTNAME=\"Dev42\"\t$K4\r\n" +
			"# end\n",
		want: "bad line\n# end\n$NEW\n", wantLine: 3, wantRemoved: []int{1, 3, 4},
		wantWarn: `authorized_keys line 3 had options that were not carried over to the new key (from="10.0.0.0/8",command="echo 100%"); add them to line 3`},
	{desc: "operator rotation", role: Operator, name: "alice", force: true,
		data: "permitopen=\"dev*:22\",access=\"initiate\" $K1 switchboard-operator:alice\naccess=\"initiate\" $K2 switchboard-operator:bob\n",
		want: "access=\"initiate\" $K2 switchboard-operator:bob\n$NEW\n", wantLine: 2, wantRemoved: []int{1},
		wantWarn: `(permitopen="dev*:22")`},
	{desc: "force without an enrolment just adds", role: Device, name: "dev42", force: true,
		data: "# only a comment\n", want: "# only a comment\n$NEW\n", wantLine: 2},
}

func TestRewrite(t *testing.T) {
	for _, tc := range rewriteCases {
		t.Run(tc.desc, func(t *testing.T) {
			newLine := newLineFor(t, tc.role, tc.name)
			got, ed, err := rewrite([]byte(expand(t, tc.data)), tc.role, tc.name, newLine, tc.force)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := strings.ReplaceAll(expand(t, tc.want), "$NEW", newLine)
			if string(got) != want {
				t.Errorf("got\n%q\nwant\n%q", got, want)
			}
			if ed.line != tc.wantLine || !equalInts(ed.removed, tc.wantRemoved) {
				t.Errorf("new line %d, removed %v; want %d, %v", ed.line, ed.removed, tc.wantLine, tc.wantRemoved)
			}
			switch {
			case tc.wantWarn == "" && len(ed.warnings) != 0:
				t.Errorf("warnings %q, want none", ed.warnings)
			case tc.wantWarn != "" && (len(ed.warnings) != 1 || !strings.Contains(ed.warnings[0], tc.wantWarn)):
				t.Errorf("warnings %q, want one with %q", ed.warnings, tc.wantWarn)
			}
		})
	}
}

func TestRewriteExistsError(t *testing.T) {
	_, _, err := rewrite([]byte(expand(t, "access=\"listen\",hostname=\"dev42\" $K1\n")), Device, "dev42", "x", false)
	var ee *ExistsError
	if !errors.As(err, &ee) || ee.Line != 1 || ee.Name != "dev42" || ee.Role != Device {
		t.Fatalf("error %#v, want an *ExistsError for line 1", err)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzRewrite checks, for any file, that a forced enrolment keeps every line it does not
// remove byte for byte and in order, removes only lines that enrol the name, and ends with
// the new line, which parses as that enrolment.
func FuzzRewrite(f *testing.F) {
	for _, tc := range rewriteCases {
		f.Add(expand(f, tc.data), tc.role == Device, tc.name)
	}
	newKey := testKey(f, 9)
	f.Fuzz(func(t *testing.T, data string, device bool, name string) {
		name, err := policy.CanonicalName(name)
		if err != nil {
			return
		}
		role := Operator
		if device {
			role = Device
		}
		newLine := AuthorizedLine(role, name, newKey)
		out, ed, err := rewrite([]byte(data), role, name, newLine, true)
		if err != nil {
			if !strings.Contains(err.Error(), "is an alias of another key") {
				t.Fatalf("rewrite: %v", err)
			}
			return
		}
		oldLines := bytes.SplitAfter([]byte(data), []byte("\n"))
		newLines := bytes.SplitAfter(out, []byte("\n"))
		if len(newLines[len(newLines)-1]) != 0 {
			t.Fatalf("output does not end with a line end: %q", out)
		}
		newLines = newLines[:len(newLines)-1]
		if len(newLines) != ed.line {
			t.Fatalf("new line number %d, output has %d lines", ed.line, len(newLines))
		}
		j := 0
		for i, l := range oldLines {
			if len(l) == 0 {
				continue
			}
			if containsInt(ed.removed, i+1) {
				continue
			}
			got := newLines[j]
			if !bytes.Equal(got, l) && !(bytes.HasPrefix(got, l) && !bytes.HasSuffix(l, []byte("\n"))) {
				t.Fatalf("line %d %q became %q", i+1, l, got)
			}
			j++
		}
		if j != len(newLines)-1 {
			t.Fatalf("%d kept lines, but %d lines before the new one", j, len(newLines)-1)
		}
		p, _ := policy.Parse(out)
		last := p.Entries()[p.Len()-1]
		if last.Line != ed.line || !commentNames(last.Comment, marker(role), name) {
			t.Fatalf("new line parsed as %+v", last)
		}
		if role == Device && (last.Hostname != name || last.Roles != policy.Listen) ||
			role == Operator && (last.Hostname != "" || last.Roles != policy.Initiate) {
			t.Fatalf("new line parsed as %+v", last)
		}
		// Enrolling again must find the new line.
		if _, _, err := rewrite(out, role, name, newLine, false); err == nil {
			t.Fatalf("a second enrolment of %s was not refused", name)
		}
	})
}

func containsInt(s []int, n int) bool {
	for _, v := range s {
		if v == n {
			return true
		}
	}
	return false
}
