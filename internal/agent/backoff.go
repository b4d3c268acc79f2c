package agent

import (
	"math/rand/v2"
	"time"
)

// Backoff spaces out reconnection attempts: the ceiling grows exponentially
// from Min to Max and each delay is drawn uniformly below it ("full
// jitter"). A fleet that lost the server at the same moment then arrives
// spread over the whole window instead of in one burst, and those turned
// away by an overloaded server spread over ever wider windows.
type Backoff struct {
	Min, Max time.Duration
	// Rand returns a float in [0, 1); nil means math/rand/v2.
	Rand func() float64

	attempt int
}

// Next returns the delay before the next attempt and advances.
func (b *Backoff) Next() time.Duration {
	d := b.Max
	if b.attempt < 62 {
		if e := b.Min << b.attempt; e > 0 && e < b.Max {
			d = e
		}
	}
	b.attempt++
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return time.Duration(r() * float64(d))
}

// Reset starts over from Min, after a connection that stayed up.
func (b *Backoff) Reset() { b.attempt = 0 }
