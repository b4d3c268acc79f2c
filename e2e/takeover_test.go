package e2e

import (
	"testing"
)

// TestTakeoverSameKey reconnects a device with the same key while the old
// connection is still up (a half-dead link, from the server's view): the new
// connection takes the name, the old one is closed.
func TestTakeoverSameKey(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	op := newKey(t, "operator")
	devKey := newKey(t, "dev42")
	srv := startServer(t, serverOpts{authorizedKeys: []string{
		authLine(`access="initiate"`, op),
		authLine(`access="listen"`, devKey),
	}})
	// Two targets, so the test can tell which connection a circuit went through.
	oldSSHD, newSSHD := startSSHD(t, op), startSSHD(t, op)
	srv.pinHost(t, "dev42", oldSSHD.hostKey)
	srv.pinHost(t, "dev42", newSSHD.hostKey)
	cfg := srv.sshConfig(t, op)

	old := startDevice(t, srv, devKey, "dev42", fwd(22, oldSSHD.port))
	reached(t, "through the first connection", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), oldSSHD.port)

	fresh := startDevice(t, srv, devKey, "dev42", fwd(22, newSSHD.port))
	srv.waitLogFrom(t, fresh.mark, logMsg("device takeover", "device", "dev42"), logTimeout)
	old.proc.waitExit(t, logTimeout) // the server closed the old connection
	reached(t, "through the new connection", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), newSSHD.port)
	if fresh.proc.exited() {
		t.Fatalf("the new connection exited:\n%s", fresh.stderr())
	}
}

// TestNameHeldByOtherKey checks that a live name cannot be taken by another
// key, and that a name reserved by a key's hostname= cannot be claimed by
// another key through its SSH user name.
func TestNameHeldByOtherKey(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)

	op := newKey(t, "operator")
	first := newKey(t, "first")
	second := newKey(t, "second")
	owner := newKey(t, "owner")
	srv := startServer(t, serverOpts{authorizedKeys: []string{
		authLine(`access="initiate"`, op),
		authLine(`access="listen"`, first),
		authLine(`access="listen"`, second),
		authLine(`access="listen",hostname="dev50"`, owner),
	}})
	sshd := startSSHD(t, op)
	srv.pinHost(t, "dev42", sshd.hostKey)
	cfg := srv.sshConfig(t, op)
	holder := startDevice(t, srv, first, "dev42", fwd(22, sshd.port))

	t.Run("held by a live connection of another key", func(t *testing.T) {
		d := launchDevice(t, srv, deviceOpts{key: second, user: "dev42", forwards: []string{fwd(22, sshd.port)}})
		if code := d.proc.waitExit(t, startTimeout); code == 0 {
			t.Fatalf("ssh -R as dev42 with another key exited 0, want a failure:\n%s", d.stderr())
		}
		mustContain(t, d.stderr(), "remote port forwarding failed for listen port 22", "ssh -R stderr")
		e := srv.waitLogFrom(t, d.mark, logMsg("forward refused", "device", "dev42", "port", 22), logTimeout)
		if e.str("reason") == "" {
			t.Errorf("forward refused: no reason: %v", e)
		}
		if got := srv.logsFrom(d.mark, logMsg("device takeover")); len(got) != 0 {
			t.Errorf("another key took the name over: %v", got)
		}
	})

	// The contract leaves open whether this is refused at authentication or
	// at the forward; either way ssh -R fails and the server says why.
	t.Run("reserved by another key's hostname=", func(t *testing.T) {
		d := launchDevice(t, srv, deviceOpts{key: second, user: "dev50", forwards: []string{fwd(22, sshd.port)}})
		if code := d.proc.waitExit(t, startTimeout); code == 0 {
			t.Fatalf("ssh -R as dev50 with a key other than its hostname= key exited 0:\n%s", d.stderr())
		}
		e := srv.waitLogFrom(t, d.mark, anyOf(
			logMsg("forward refused", "device", "dev50"),
			logMsg("auth", "result", "deny", "fingerprint", second.fp),
		), logTimeout)
		if e.str("reason") == "" {
			t.Errorf("%s: no reason: %v", e.str("msg"), e)
		}
		if got := srv.logsFrom(d.mark, logMsg("device registered", "device", "dev50")); len(got) != 0 {
			t.Errorf("another key registered the reserved name: %v", got)
		}
	})

	if holder.proc.exited() {
		t.Fatalf("the holder's connection was dropped:\n%s", holder.stderr())
	}
	reached(t, "the holder still answers", runSSH(t, cfg, "-J", "pivot", "dev42", remoteCmd), sshd.port)
}
