package agent

import (
	"testing"
	"time"
)

func TestBackoffGrowsWithinBounds(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999999} {
		b := Backoff{Min: time.Second, Max: 60 * time.Second, Rand: func() float64 { return r }}
		ceil := time.Second
		for i := range 100 {
			d := b.Next()
			if want := time.Duration(r * float64(ceil)); d != want {
				t.Fatalf("attempt %d (rand %v): %v, want %v (ceiling %v)", i, r, d, want, ceil)
			}
			ceil = min(2*ceil, 60*time.Second)
		}
		b.Reset()
		if d := b.Next(); d > time.Second {
			t.Fatalf("after Reset: %v, want ≤ Min", d)
		}
	}
}

// TestBackoffSpreadsAFleet: 1,000 devices that lose the server together
// must not all retry in the same 100 ms.
func TestBackoffSpreadsAFleet(t *testing.T) {
	buckets := map[time.Duration]int{}
	for range 1000 {
		b := Backoff{Min: time.Second, Max: time.Minute}
		buckets[b.Next().Truncate(100*time.Millisecond)]++
	}
	for bucket, n := range buckets {
		if n > 150 { // uniform over 1 s: about 100 per 100 ms
			t.Fatalf("%d of 1000 devices retry in the 100 ms from %v", n, bucket)
		}
	}
}
