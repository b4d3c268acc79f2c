package e2e

import (
	"net"
	"testing"
	"time"
)

// TestAgentBehindNAT puts the device (agent and sshd) on a LAN behind a
// masquerading router that drops connections from outside, the server and
// the operator on the internet. The operator reaches the device through the
// server, while a direct connection provably cannot: it is dropped at the
// router, though the router itself reaches the device's sshd.
func TestAgentBehindNAT(t *testing.T) {
	t.Parallel()
	needOpenSSH(t, "nc")
	lab := newNATLab(t)
	r := newAgentRig(t, lab, sshdOpts{addr: "0.0.0.0", port: 22})

	r.reachable(t, "ssh -J pivot dev42 from the internet")

	// A direct attempt from the operator's machine: dropped at the router
	// (a timeout, not a refusal, and the router's DROP rule counts it).
	for _, port := range dedupe(22, r.sshd.port) {
		before := lab.droppedInbound(t)
		p := lab.probeTCP(t, lab.op, labDeviceIP, port, 2*time.Second)
		if p.ok {
			t.Fatalf("the operator connected to %s:%d directly, through the NAT: %v", labDeviceIP, port, p.res)
		}
		if p.dur < 1900*time.Millisecond {
			t.Errorf("the direct attempt to %s:%d failed after %v, before nc's 2s timeout: refused, not dropped: %v", labDeviceIP, port, p.dur, p.res)
		}
		if drops := lab.droppedInbound(t) - before; drops == 0 {
			t.Errorf("the router's inbound DROP rule counted no packets for the direct attempt to port %d", port)
		} else {
			t.Logf("direct %s:%d from %s: no connection after %v, %d packets dropped at the router", labDeviceIP, port, labOperatorIP, p.dur.Round(time.Millisecond), drops)
		}
		// The service is up: the router, on the LAN, reaches it.
		if p := lab.probeTCP(t, lab.rtr, labDeviceIP, port, 2*time.Second); !p.ok {
			t.Fatalf("the router cannot reach the device's sshd on %s:%d: %v", labDeviceIP, port, p.res)
		}
	}

	// The server sees the device at the router's public address.
	dev, ok := lsJSONIn(t, lab.op, r.cfg)["dev42"]
	if !ok {
		t.Fatalf("ls --json lists no dev42")
	}
	if host, _, err := net.SplitHostPort(dev.Remote); err != nil || host != labRouterWAN || dev.State != "connected" {
		t.Errorf("ls --json: dev42 is %+v; want state connected and remote %s:PORT (masqueraded)", dev, labRouterWAN)
	}
	reg := r.srv.waitLog(t, logMsg("device registered", "device", "dev42", "port", 22), logTimeout)
	if host, _, _ := net.SplitHostPort(reg.str("source")); host != labRouterWAN {
		t.Errorf("device registered: source %q, want %s:PORT: %v", reg.str("source"), labRouterWAN, reg)
	}
}

// dedupe returns ports without repeats, in order.
func dedupe(ports ...int) []int {
	var out []int
	seen := map[int]bool{}
	for _, p := range ports {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
