// Package keepalive notices a dead SSH peer: it pings with
// keepalive@openssh.com and reports the peer dead when no reply has come for
// a bounded time. Both the server and the agent use it.
package keepalive

import (
	"math"
	"sync/atomic"
	"time"
)

// Pinger is the part of an ssh.Conn a keepalive needs.
type Pinger interface {
	SendRequest(name string, wantReply bool, payload []byte) (bool, []byte, error)
}

// Start pings p every interval. If no reply (a failure reply counts: it
// proves the peer alive) has arrived for interval × count, it calls dead
// once and stops. stop ends the pings; a dead call already under way when
// stop is called may still complete, none starts after.
//
// It runs on a timer, not a goroutine of its own, so an idle connection costs
// nothing between pings; each ping's blocking send runs in the timer's
// goroutine, which ends when the reply or the connection's end arrives.
func Start(p Pinger, interval time.Duration, count int, dead func()) (stop func()) {
	k := &keeper{p: p, interval: interval, limit: interval * time.Duration(count), dead: dead}
	k.lastReply.Store(time.Now().UnixNano())
	// Created far in the future, then armed, so k.t is set before tick can run.
	k.t = time.AfterFunc(math.MaxInt64, k.tick)
	k.t.Reset(interval)
	return func() {
		k.stopped.Store(true)
		k.t.Stop()
	}
}

type keeper struct {
	p         Pinger
	interval  time.Duration
	limit     time.Duration
	dead      func()
	t         *time.Timer
	lastReply atomic.Int64 // unix nanoseconds
	stopped   atomic.Bool
}

func (k *keeper) tick() {
	if k.stopped.Load() {
		return
	}
	if time.Since(time.Unix(0, k.lastReply.Load())) > k.limit {
		k.stopped.Store(true)
		k.dead()
		return
	}
	// Re-arm before the send blocks, so a send that never returns is still
	// caught by the next tick's check.
	k.t.Reset(k.interval)
	if _, _, err := k.p.SendRequest("keepalive@openssh.com", true, nil); err == nil {
		k.lastReply.Store(time.Now().UnixNano())
	}
}
