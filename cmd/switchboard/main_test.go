package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		inStderr string
		inStdout string
	}{
		{[]string{"version"}, 0, "", "switchboard "},
		{[]string{"version", "extra"}, 2, "unknown command", ""},
		{[]string{"serve", "--no-such-flag"}, 2, "unknown flag: --no-such-flag", ""},
		{[]string{"serve", "--listen", "nope"}, 2, `--listen "nope"`, ""},
		{[]string{"serve", "--listen", "127.0.0.1:0", "--log-level", "loud"}, 2, `--log-level "loud"`, ""},
		{[]string{"serve", "--listen", "127.0.0.1:0", "--domain", "bad domain"}, 2, "--domain", ""},
		{[]string{"no-such-command"}, 2, "unknown command", ""},
		// A host key that cannot be read is a runtime failure, not a usage error.
		{[]string{"serve", "--listen", "127.0.0.1:0", "--state-dir", "STATE", "--host-key", "/nonexistent/key"}, 1, "hostkey:", ""},
	} {
		var stdout, stderr bytes.Buffer
		args := tc.args
		for i, a := range args {
			if a == "STATE" {
				args[i] = t.TempDir()
			}
		}
		code := run(args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.inStderr) || !strings.Contains(stdout.String(), tc.inStdout) {
			t.Errorf("switchboard %s: exit %d, stdout %q, stderr %q; want exit %d with %q",
				strings.Join(tc.args, " "), code, stdout.String(), stderr.String(), tc.code, tc.inStderr+tc.inStdout)
		}
	}
}
