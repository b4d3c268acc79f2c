// Copyright 2026 The switchboard authors. This file is part of
// switchboard's patch to golang.org/x/crypto (see third_party/README.md)
// and is under the same BSD-style license, in the LICENSE file.

package ssh

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"net"
	"testing"
)

func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// An idle transport holds no read buffer between packets, and one that
// has read ahead keeps its buffer until the read-ahead bytes are consumed.
func TestTransportIdleHoldsNoReadBuffer(t *testing.T) {
	a, b := tcpPair(t)
	w := newTransport(a, rand.Reader, true)
	r := newTransport(b, rand.Reader, false)

	packets := [][]byte{{msgIgnore + 100, 1}, {msgIgnore + 100, 2, 2}, {msgIgnore + 100, 3, 3, 3}}
	// Two packets in one write: the reader's first fill reads both.
	var both bytes.Buffer
	for _, p := range packets[:2] {
		if err := w.writer.writePacket(bufioWriterFor(&both), rand.Reader, p, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Write(both.Bytes()); err != nil {
		t.Fatal(err)
	}
	got, err := r.readPacket()
	if err != nil || !bytes.Equal(got, packets[0]) {
		t.Fatalf("first packet: %v %v", got, err)
	}
	if r.bufReader == nil {
		t.Fatal("the reader released its buffer with the second packet still in it")
	}
	got, err = r.readPacket()
	if err != nil || !bytes.Equal(got, packets[1]) {
		t.Fatalf("second packet: %v %v", got, err)
	}
	if r.bufReader != nil {
		t.Fatal("the reader holds a buffer with nothing buffered")
	}

	// A reader that parks in waitReadable before the data comes still gets it.
	done := make(chan error, 1)
	go func() {
		got, err := r.readPacket()
		if err == nil && !bytes.Equal(got, packets[2]) {
			err = errors.New("wrong packet")
		}
		done <- err
	}()
	if err := w.writePacket(packets[2]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("third packet: %v", err)
	}

	// EOF reaches a waiting reader.
	a.Close()
	if _, err := r.readPacket(); err == nil {
		t.Fatal("read after the peer closed succeeded")
	}
}

// A write error stays with the connection, as it did with a bufio.Writer
// held for the connection's life.
func TestTransportWriteErrorSticks(t *testing.T) {
	a, b := tcpPair(t)
	w := newTransport(a, rand.Reader, true)
	b.Close()
	a.(*net.TCPConn).CloseWrite()
	first := w.writePacket([]byte{msgIgnore + 100})
	if first == nil {
		t.Fatal("write on a connection closed for writing succeeded")
	}
	if err := w.writePacket([]byte{msgIgnore + 100}); !errors.Is(err, first) {
		t.Fatalf("second write: %v, want the first error %v", err, first)
	}
}

func bufioWriterFor(b *bytes.Buffer) *bufio.Writer { return bufio.NewWriter(b) }
