package schedule

import (
	"context"
	"sync"
)

// DefaultConcurrency bounds how many targets are probed at once.
const DefaultConcurrency = 64

// ForEach calls fn(i) for i in [0,n) with at most limit calls running at once, and returns
// when all have returned. Indices not yet started when ctx is done are skipped.
func ForEach(ctx context.Context, n, limit int, fn func(i int)) {
	if limit < 1 {
		limit = 1
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(i)
		}()
	}
	wg.Wait()
}
