package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The lab's addresses: documentation and private ranges only, inside
// namespaces the test creates. Nothing is ever sent anywhere else.
const (
	labServerIP   = "198.51.100.10" // the switchboard server, on the "internet"
	labOperatorIP = "198.51.100.20" // the operator's machine, on the "internet"
	labRouterWAN  = "198.51.100.1"  // the home router's public address
	labRouterLAN  = "10.77.0.1"     // the home router on the LAN
	labDeviceIP   = "10.77.0.2"     // the device behind the router
	labLANNet     = "10.77.0.0/24"
)

// nsPrefix starts the name of every namespace the suite creates, followed by
// the creating test binary's pid so a later run can tell stale ones.
const nsPrefix = "sbt"

// natLab is a small internet in four network namespaces:
//
//	op (198.51.100.20) ─┐
//	                    br0 in pub (server, 198.51.100.10)
//	rtr wan (198.51.100.1) ─┘   rtr lan (10.77.0.1) ── lan eth0 (10.77.0.2, the device)
//
// pub and op route 10.77.0.0/24 via the router, so a direct connection to
// the device really reaches the router. With nat, the router masquerades the
// LAN behind 198.51.100.1 and drops new connections from the internet to the
// LAN, as a home router does; without, it routes both ways.
type natLab struct {
	pub, op, rtr, lan string // namespace names
	nat               bool
}

// newNATLab builds the lab with masquerading and an inbound drop. It needs
// ip and iptables: without them it skips (fails with CI=true).
func newNATLab(t testing.TB) *natLab {
	t.Helper()
	need(t, "ip", "iptables")
	return newLab(t, true)
}

// newRoutedLab builds the lab's namespaces and links with plain routing: for
// tests that need the device's network to fail (cut, restore) but not NAT.
// It needs only ip.
func newRoutedLab(t testing.TB) *natLab {
	t.Helper()
	need(t, "ip")
	return newLab(t, false)
}

func newLab(t testing.TB, nat bool) *natLab {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := "e2e: network namespaces need root"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("%s%d-%s-", nsPrefix, os.Getpid(), hex.EncodeToString(rnd[:]))
	l := &natLab{pub: prefix + "pub", op: prefix + "op", rtr: prefix + "rtr", lan: prefix + "lan", nat: nat}
	for _, ns := range []string{l.pub, l.op, l.rtr, l.lan} {
		l.ip(t, "netns", "add", ns)
		t.Cleanup(func() {
			// Processes started later are killed before this runs (cleanups
			// run last-in first-out); deleting the namespace takes its links.
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		l.ip(t, "-n", ns, "link", "set", "lo", "up")
	}
	steps := [][]string{
		// The internet: a bridge in pub holding the server's address.
		{"-n", l.pub, "link", "add", "br0", "type", "bridge"},
		{"-n", l.pub, "addr", "add", labServerIP + "/24", "dev", "br0"},
		{"-n", l.pub, "link", "set", "br0", "up"},
		// The router's public side and the operator's machine, both on the bridge.
		{"-n", l.rtr, "link", "add", "wan", "type", "veth", "peer", "name", "to-rtr", "netns", l.pub},
		{"-n", l.op, "link", "add", "eth0", "type", "veth", "peer", "name", "to-op", "netns", l.pub},
		{"-n", l.pub, "link", "set", "to-rtr", "master", "br0", "up"},
		{"-n", l.pub, "link", "set", "to-op", "master", "br0", "up"},
		{"-n", l.rtr, "addr", "add", labRouterWAN + "/24", "dev", "wan"},
		{"-n", l.rtr, "link", "set", "wan", "up"},
		{"-n", l.op, "addr", "add", labOperatorIP + "/24", "dev", "eth0"},
		{"-n", l.op, "link", "set", "eth0", "up"},
		// The LAN: the device behind the router.
		{"-n", l.lan, "link", "add", "eth0", "type", "veth", "peer", "name", "lan", "netns", l.rtr},
		{"-n", l.rtr, "addr", "add", labRouterLAN + "/24", "dev", "lan"},
		{"-n", l.rtr, "link", "set", "lan", "up"},
		{"-n", l.lan, "addr", "add", labDeviceIP + "/24", "dev", "eth0"},
		{"-n", l.lan, "link", "set", "eth0", "up"},
		{"-n", l.lan, "route", "add", "default", "via", labRouterLAN},
		// The internet knows where 10.77.0.0/24 is, so a direct attempt
		// reaches the router and is dropped there, not lost for want of a route.
		{"-n", l.pub, "route", "add", labLANNet, "via", labRouterWAN},
		{"-n", l.op, "route", "add", labLANNet, "via", labRouterWAN},
	}
	for _, s := range steps {
		l.ip(t, s...)
	}
	l.must(t, l.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	if nat {
		for _, rule := range [][]string{
			{"-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "lan", "-o", "wan", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "wan", "-o", "lan", "-j", "DROP"},
			{"-P", "FORWARD", "DROP"},
		} {
			l.must(t, l.rtr, "iptables", append([]string{"-w"}, rule...)...)
		}
	}
	return l
}

// ip runs ip args... in the test's own namespace and fails the test on error.
func (l *natLab) ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// must runs bin in ns and fails the test unless it exits 0.
func (l *natLab) must(t testing.TB, ns, bin string, args ...string) result {
	t.Helper()
	return mustSucceed(t, bin+" in "+ns, l.run(t, ns, runTimeout, bin, args...))
}

// run runs bin with args inside namespace ns, to completion.
func (l *natLab) run(t testing.TB, ns string, timeout time.Duration, bin string, args ...string) result {
	t.Helper()
	return runIn(t, ns, nil, timeout, bin, args...)
}

// start starts bin inside namespace ns; cleanup kills its process group.
func (l *natLab) start(t testing.TB, ns, name, bin string, args ...string) *proc {
	t.Helper()
	return nsCommand(ns, name, bin, args...).start(t)
}

// cut takes the router's LAN side down: the device keeps its address and
// routes, but nothing gets in or out, and nobody is told (no RST, no ICMP).
func (l *natLab) cut(t testing.TB) {
	t.Helper()
	l.ip(t, "-n", l.rtr, "link", "set", "lan", "down")
}

// restore brings the router's LAN side back up.
func (l *natLab) restore(t testing.TB) {
	t.Helper()
	l.ip(t, "-n", l.rtr, "link", "set", "lan", "up")
}

// droppedInbound returns the packets the router's FORWARD chain dropped on
// their way from the internet to the LAN (NAT lab only).
func (l *natLab) droppedInbound(t testing.TB) int64 {
	t.Helper()
	r := l.must(t, l.rtr, "iptables", "-w", "-L", "FORWARD", "-n", "-v", "-x")
	// "    pkts      bytes target     prot opt in     out     source               destination"
	re := regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+DROP\s+\S+\s+\S+\s+wan\s+lan\b`)
	m := re.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("iptables -L FORWARD in %s: no DROP rule from wan to lan:\n%s", l.rtr, r.stdout)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// probe is one nc -z attempt: whether it connected, and how long it took.
type probe struct {
	ok  bool
	dur time.Duration
	res result
}

// probeTCP runs nc -z -w timeout host port in ns.
func (l *natLab) probeTCP(t testing.TB, ns, host string, port int, timeout time.Duration) probe {
	t.Helper()
	r := l.run(t, ns, timeout+runTimeout, "nc", "-z", "-w", strconv.Itoa(int(timeout/time.Second)), host, strconv.Itoa(port))
	return probe{ok: r.code == 0, dur: r.dur, res: r}
}

// sweepStaleNamespaces deletes the namespaces of earlier test binaries that
// are gone (a crash, a kill -9); it leaves those of running binaries alone.
func sweepStaleNamespaces() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, nsPrefix), "-")
		if pid, err := strconv.Atoi(pidText); err == nil && pid != os.Getpid() && testBinaryAlive(pid) {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: removing stale namespace %s: %v\n%s", name, err, out)
		} else {
			fmt.Fprintf(os.Stderr, "e2e: removed stale namespace %s\n", name)
		}
	}
}

// testBinaryAlive reports whether pid is a running Go test binary.
func testBinaryAlive(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasSuffix(strings.TrimSpace(string(comm)), ".test")
}

// listenIn runs nc -lk on addr:port inside ns and waits until it listens.
func (l *natLab) listenIn(t testing.TB, ns, addr string, port int) *proc {
	t.Helper()
	p := l.start(t, ns, "nc -l "+ns, "nc", "-n", "-v", "-l", "-k", addr, strconv.Itoa(port))
	await(t, startTimeout, "nc to listen in "+ns, func() (bool, error) {
		if strings.Contains(p.stderr.String(), "Listening on") {
			return true, nil
		}
		if p.exited() {
			return false, fmt.Errorf("nc -l exited: %v\n%s", p.err, p.stderr.String())
		}
		return false, nil
	})
	return p
}

// TestNATLab checks the lab itself: a listener on the device answers from
// the router; through NAT it cannot be reached from the internet (dropped at
// the router, not refused), while the device reaches the internet; cut and
// restore take the device off the network and back.
func TestNATLab(t *testing.T) {
	t.Parallel()
	need(t, "nc")
	for _, tc := range []struct {
		name string
		lab  func(testing.TB) *natLab
	}{
		{"routed", newRoutedLab},
		{"NAT", newNATLab},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := tc.lab(t)
			const port = 8022
			l.listenIn(t, l.lan, labDeviceIP, port)
			l.listenIn(t, l.pub, labServerIP, port)

			if p := l.probeTCP(t, l.rtr, labDeviceIP, port, 2*time.Second); !p.ok {
				t.Fatalf("the router cannot reach the device's listener: %v", p.res)
			}
			if p := l.probeTCP(t, l.lan, labServerIP, port, 2*time.Second); !p.ok {
				t.Fatalf("the device cannot reach the server: %v", p.res)
			}
			var dropsBefore int64
			if l.nat {
				dropsBefore = l.droppedInbound(t)
			}
			p := l.probeTCP(t, l.op, labDeviceIP, port, 2*time.Second)
			switch {
			case l.nat && p.ok:
				t.Fatalf("the operator reached the device behind NAT directly: %v", p.res)
			case l.nat && p.dur < 1900*time.Millisecond:
				t.Fatalf("the direct attempt failed after %v, before nc's 2s timeout: refused, not dropped: %v", p.dur, p.res)
			case !l.nat && !p.ok:
				t.Fatalf("routed lab: the operator cannot reach the device: %v", p.res)
			}
			if l.nat {
				if drops := l.droppedInbound(t) - dropsBefore; drops == 0 {
					t.Fatalf("the router's inbound DROP rule counted no packets for the direct attempt")
				} else {
					t.Logf("direct attempt from the internet: failed after %v, %d packets dropped at the router", p.dur.Round(time.Millisecond), drops)
				}
			}

			l.cut(t)
			if p := l.probeTCP(t, l.lan, labServerIP, port, 1*time.Second); p.ok {
				t.Fatalf("the device reached the server with its network cut: %v", p.res)
			}
			l.restore(t)
			await(t, logTimeout, "the device to reach the server after restore", func() (bool, error) {
				return l.probeTCP(t, l.lan, labServerIP, port, 1*time.Second).ok, nil
			})
		})
	}
}
