package schedule

import (
	"testing"
	"time"
)

// TestBucket: a full burst, then the rate; a clock read late does not drain it.
func TestBucket(t *testing.T) {
	b := NewBucket(10, 3)
	now := time.Unix(100, 0)
	n := 0
	for range 10 {
		if b.Take(now) {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d taken at once, want the burst 3", n)
	}
	if b.Take(now.Add(50*time.Millisecond)) || !b.Take(now.Add(110*time.Millisecond)) {
		t.Fatal("does not refill at its rate")
	}
	if b.Take(now) { // earlier than the last: no refill, and no tokens left
		t.Fatal("a clock that ran back refilled the bucket")
	}
}
