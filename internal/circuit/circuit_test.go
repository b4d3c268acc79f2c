package circuit

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection: real sockets,
// because half-close is what is under test and net.Pipe has none.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := <-accepted
	if c2 == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c1.Close(); c2.Close() })
	return c1.(*net.TCPConn), c2.(*net.TCPConn)
}

// TestJoinPassesHalfClose sends a request and EOF one way, and only after
// the EOF arrives answers the other way: it hangs if EOF is not passed on.
func TestJoinPassesHalfClose(t *testing.T) {
	op, a := tcpPair(t)
	b, dev := tcpPair(t)
	done := make(chan Stats, 1)
	go func() { done <- Join(a, b) }()

	request := make([]byte, 3<<20)
	rand.Read(request)
	go func() {
		op.Write(request)
		op.CloseWrite()
	}()
	got, err := io.ReadAll(dev)
	if err != nil {
		t.Fatalf("device read: %v", err)
	}
	if !bytes.Equal(got, request) {
		t.Fatalf("device got %d bytes that differ from the %d sent", len(got), len(request))
	}
	sum := sha256.Sum256(got)
	dev.Write(sum[:])
	dev.CloseWrite()
	reply, err := io.ReadAll(op)
	if err != nil {
		t.Fatalf("operator read: %v", err)
	}
	if !bytes.Equal(reply, sum[:]) {
		t.Fatalf("operator got %x, want %x", reply, sum)
	}
	st := <-done
	if st.AToB != int64(len(request)) || st.BToA != int64(len(sum)) {
		t.Errorf("counted %d/%d bytes, want %d/%d", st.AToB, st.BToA, len(request), len(sum))
	}
	if st.Reason != "eof" {
		t.Errorf("reason %q, want eof", st.Reason)
	}
}

// TestJoinEndsWhenOneSideDies checks that an abrupt close on one side ends
// the circuit even though the other side never sends EOF.
func TestJoinEndsWhenOneSideDies(t *testing.T) {
	op, a := tcpPair(t)
	b, dev := tcpPair(t)
	done := make(chan Stats, 1)
	go func() { done <- Join(a, b) }()

	op.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(dev, buf); err != nil {
		t.Fatal(err)
	}
	dev.SetLinger(0)
	dev.Close() // RST: the copy toward dev fails, or its read sees EOF
	// The operator never half-closes; Join must still end and close op's
	// side, which the operator observes as EOF or a reset.
	if _, err := io.ReadAll(op); err != nil {
		t.Logf("operator read ended with %v", err)
	}
	st := <-done
	if st.AToB != 5 {
		t.Errorf("AToB = %d, want 5", st.AToB)
	}
}

func BenchmarkJoin(b *testing.B) {
	op, a := tcpPair(b)
	x, dev := tcpPair(b)
	done := make(chan Stats, 1)
	go func() { done <- Join(a, x) }()
	go io.Copy(io.Discard, dev)
	buf := make([]byte, 32*1024)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := op.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	op.CloseWrite()
	dev.CloseWrite()
	<-done
}
