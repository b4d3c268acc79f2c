package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// randomBytes returns n pseudo-random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)}).Read(b)
	return b
}

// device42 is the common cast of the integrity tests: a server, an operator
// and device dev42 with the given forwards.
func device42(t testing.TB, forwards func(sshdPort int) []string) (srv *server, cfg string, sshdPort int) {
	t.Helper()
	op := newKey(t, "operator")
	devKey := newKey(t, "dev42")
	srv = startServer(t, serverOpts{authorizedKeys: []string{
		authLine(`access="initiate"`, op),
		authLine(`access="listen"`, devKey),
	}})
	sshd := startSSHD(t, op)
	srv.pinHost(t, "dev42", sshd.hostKey)
	startDevice(t, srv, devKey, "dev42", forwards(sshd.port)...)
	return srv, srv.sshConfig(t, op), sshd.port
}

// TestLargeFileSCP copies 100 MB of random data to a device and back through
// -J and compares digests and the server's byte counts.
func TestLargeFileSCP(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("moves 200 MB; skipped with -short")
	}
	needOpenSSH(t, "scp")
	srv, cfg, _ := device42(t, func(p int) []string { return []string{fwd(22, p)} })

	const size = 100 << 20
	local, remote := t.TempDir(), t.TempDir()
	src := randomFile(t, local, "big.bin", size)
	want := sha256File(t, src)
	onDevice := filepath.Join(remote, "big.bin")
	back := filepath.Join(local, "back.bin")

	for _, dir := range []struct {
		name, from, to, got, counter string
	}{
		{"upload", src, "dev42:" + onDevice, onDevice, "bytes_to_device"},
		{"download", "dev42:" + onDevice, back, back, "bytes_from_device"},
	} {
		mark := srv.mark()
		r := mustSucceed(t, "scp "+dir.name, run(t, nil, 3*time.Minute, "scp", "-F", cfg, "-J", "pivot", dir.from, dir.to))
		t.Logf("scp %s of %d MiB through -J: %v (%.0f MiB/s)", dir.name, size>>20, r.dur.Round(time.Millisecond), float64(size>>20)/r.dur.Seconds())
		if got := sha256File(t, dir.got); got != want {
			t.Errorf("%s: sha256 %s, want %s", dir.name, got, want)
		}
		e := srv.waitLogFrom(t, mark, logMsg("circuit", "device", "dev42", "port", 22, "result", "ok"), logTimeout)
		if n := e.int(dir.counter); n < size {
			t.Errorf("%s: circuit log %s = %d, want at least the file size %d: %v", dir.name, dir.counter, n, size, e)
		}
	}
}

// TestHalfClose sends data through ssh -W to a target that reads to EOF and
// only then answers with the digest: the answer arrives only if the
// operator's EOF reached the target and the target's EOF came back.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)
	digest := digestService(t)
	srv, cfg, _ := device42(t, func(p int) []string { return []string{fwd(22, p), fwd(7000, digest)} })

	for _, n := range []int{0, 1, 5 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			data := randomBytes(n)
			mark := srv.mark()
			r := mustSucceed(t, "ssh -W dev42:7000", run(t, bytes.NewReader(data), runTimeout, "ssh", "-F", cfg, "-W", "dev42:7000", "pivot"))
			want := fmt.Sprintf("%x\n", sha256.Sum256(data))
			if r.stdout != want {
				t.Fatalf("digest through the circuit: got %q, want %q", r.stdout, want)
			}
			e := srv.waitLogFrom(t, mark, logMsg("circuit", "device", "dev42", "port", 7000, "result", "ok"), logTimeout)
			if e.int("bytes_to_device") != int64(n) || e.int("bytes_from_device") != int64(len(want)) {
				t.Errorf("circuit log: want bytes_to_device %d and bytes_from_device %d: %v", n, len(want), e)
			}
		})
	}
}

// TestSlowReaderDoesNotStallOthers opens a circuit whose operator never reads
// while its target floods it, then moves 20 MB through a second circuit to the
// same device: one stalled channel must not hold up the device's connection.
func TestSlowReaderDoesNotStallOthers(t *testing.T) {
	t.Parallel()
	needOpenSSH(t)
	var flooded atomic.Int64
	flood := serveTCP(t, func(c net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Write(buf)
			flooded.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	digest := digestService(t)
	_, cfg, _ := device42(t, func(p int) []string { return []string{fwd(22, p), fwd(7000, digest), fwd(7001, flood)} })

	// The stalled operator: stdout is a pipe nobody reads, stdin a pipe nobody writes.
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outR.Close(); inW.Close() })
	stalled := command("stalled operator", "ssh", "-F", cfg, "-W", "dev42:7001", "pivot")
	stalled.cmd.Stdout, stalled.cmd.Stdin = outW, inR
	stalled.start(t)
	outW.Close()
	inR.Close()
	await(t, logTimeout, "the flood to fill the stalled circuit's buffers", func() (bool, error) {
		if stalled.exited() {
			return false, fmt.Errorf("the stalled operator's ssh exited: %v\n%s", stalled.err, stalled.stderr.String())
		}
		return flooded.Load() >= 1<<20, nil
	})

	data := randomBytes(20 << 20)
	r := mustSucceed(t, "ssh -W dev42:7000 beside a stalled circuit", run(t, bytes.NewReader(data), runTimeout, "ssh", "-F", cfg, "-W", "dev42:7000", "pivot"))
	t.Logf("20 MiB beside a stalled circuit: %v; the flood had sent %d MiB", r.dur.Round(time.Millisecond), flooded.Load()>>20)
	if want := fmt.Sprintf("%x\n", sha256.Sum256(data)); r.stdout != want {
		t.Fatalf("digest: got %q, want %q", r.stdout, want)
	}
	if r.dur > 30*time.Second {
		t.Errorf("20 MiB took %v beside a stalled circuit, want under 30s", r.dur)
	}
	if stalled.exited() {
		t.Errorf("the stalled circuit was torn down: %v\n%s", stalled.err, stalled.stderr.String())
	}
	// Flow control holds the flood back: only windows and socket buffers fill.
	if n := flooded.Load(); n > 128<<20 {
		t.Errorf("the target wrote %d MiB into a circuit nobody reads: the server buffers without bound or drops data", n>>20)
	}
}
