package e2e

import (
	"syscall"
	"testing"
)

// TestPolicyReload rewrites authorized_keys under a running server (write and
// rename, as editors and config management do) and checks that the new policy
// applies without a restart, that a bad line is reported with its number while
// the other lines still apply, that SIGHUP reloads, and that the connected
// device is never dropped.
func TestPolicyReload(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	opA := newKey(t, "opA")
	opB := newKey(t, "opB")
	opC := newKey(t, "opC")
	devKey := newKey(t, "dev42")
	lineA := authLine(`access="initiate"`, opA)
	lineDev := authLine(`access="listen",hostname="dev42"`, devKey)
	lineB := authLine(`access="initiate"`, opB)
	srv := startServer(t, serverOpts{authorizedKeys: []string{lineA, lineDev}})
	sshd := startSSHD(t, opA, opB, opC)
	srv.pinHost(t, "dev42", sshd.hostKey)
	dev := startDevice(t, srv, devKey, "dev42", fwd(22, sshd.port))
	cfgA, cfgB, cfgC := srv.sshConfig(t, opA), srv.sshConfig(t, opB), srv.sshConfig(t, opC)

	reached(t, "opA before the reload", runSSH(t, cfgA, "-J", "pivot", "dev42", remoteCmd), sshd.port)
	if r := runSSH(t, cfgB, "-J", "pivot", "dev42", remoteCmd); r.code == 0 {
		t.Fatalf("opB is not in authorized_keys yet but got through: %v", r)
	}

	t.Run("new key", func(t *testing.T) {
		mark := srv.mark()
		srv.setAuthorizedKeys(t, lineA, lineDev, lineB)
		e := srv.waitLogFrom(t, mark, logMsg("authorized_keys loaded", "entries", 3, "bad_lines", 0), logTimeout)
		if e.str("path") != srv.akPath {
			t.Errorf("authorized_keys loaded: path %q, want %q", e.str("path"), srv.akPath)
		}
		reached(t, "opB after the reload", runSSH(t, cfgB, "-J", "pivot", "dev42", remoteCmd), sshd.port)
		srv.waitLogFrom(t, mark, logMsg("auth", "result", "accept", "fingerprint", opB.fp, "line", 3), logTimeout)
	})

	t.Run("bad lines", func(t *testing.T) {
		mark := srv.mark()
		srv.setAuthorizedKeys(t,
			lineA,
			"this is not a key",
			authLine(`access="initiate",frobnicate="yes"`, opC), // unknown option: the line is an error
			lineDev,
			"# a comment and a blank line are not errors",
			"",
			lineB,
		)
		for _, line := range []int{2, 3} {
			e := srv.waitLogFrom(t, mark, logMsg("authorized_keys: bad line", "line", line), logTimeout)
			if e.str("path") != srv.akPath || e.str("error") == "" {
				t.Errorf("bad line %d: want path %q and an error: %v", line, srv.akPath, e)
			}
		}
		srv.waitLogFrom(t, mark, logMsg("authorized_keys loaded", "entries", 3, "bad_lines", 2), logTimeout)
		if got := srv.logsFrom(mark, logMsg("authorized_keys: bad line")); len(got) != 2 {
			t.Errorf("want 2 bad lines reported, got %d: %v", len(got), got)
		}
		reached(t, "opB (line 7) with bad lines above it", runSSH(t, cfgB, "-J", "pivot", "dev42", remoteCmd), sshd.port)
		reached(t, "opA (line 1)", runSSH(t, cfgA, "-J", "pivot", "dev42", remoteCmd), sshd.port)
		if r := runSSH(t, cfgC, "pivot", "help"); r.code == 0 {
			t.Errorf("opC's line has an unknown option, yet opC got in: %v", r)
		}
	})

	t.Run("SIGHUP", func(t *testing.T) {
		mark := srv.mark()
		if err := srv.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		srv.waitLogFrom(t, mark, logMsg("authorized_keys loaded", "path", srv.akPath), logTimeout)
		reached(t, "opB after SIGHUP", runSSH(t, cfgB, "-J", "pivot", "dev42", remoteCmd), sshd.port)
	})

	// The device's connection lived through every reload.
	if dev.proc.exited() {
		t.Errorf("the device's ssh exited during the reloads:\n%s", dev.stderr())
	}
	if got := srv.logsFrom(dev.mark, logMsg("device disconnected")); len(got) != 0 {
		t.Errorf("device dropped during the reloads: %v", got)
	}
}
