package wire

import (
	"errors"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
)

// The ring buffer is drained by whoever needs its events, in their own goroutine: a probe
// that has seen its answer on the socket knows the kernel wrote the answer's event before
// that (TC runs before the socket is reached), so reading the ring right then finds it. No
// reader goroutine is woken per event or per probe — with a thousand probes a second, the
// wake-ups and hand-offs of a blocking reader cost more than the events themselves. The
// programs submit without waking anyone (see submit_event in bpf/wire.h).

// drainEvery and drainAt bound how long events of flows nobody syncs (a probe that ended
// on an error) can sit in the ring: the background drain runs that often, and only when at
// least drainAt of the ring is in use — an atomic read otherwise.
const (
	drainEvery = 100 * time.Millisecond
	drainAt    = 8 // 1/8 of the ring
)

// openRing opens the reader for draining: a deadline in the past makes a read return
// once the ring is empty instead of waiting for a wake-up.
func (o *Observer) openRing() error {
	rd, err := ringbuf.NewReader(o.maps.Events)
	if err != nil {
		return err
	}
	rd.SetDeadline(time.Unix(1, 0))
	o.rd = rd
	o.drainStop, o.drainDone = make(chan struct{}), make(chan struct{})
	go o.drainLoop()
	return nil
}

// closeRing stops the background drain and releases the reader.
func (o *Observer) closeRing() {
	close(o.drainStop)
	<-o.drainDone
	o.ringMu.Lock()
	defer o.ringMu.Unlock()
	o.rd.Close()
	o.rd = nil
}

func (o *Observer) drainLoop() {
	defer close(o.drainDone)
	t := time.NewTicker(drainEvery)
	defer t.Stop()
	for {
		select {
		case <-o.drainStop:
			return
		case <-t.C:
			if o.rd.AvailableBytes() >= o.rd.BufferSize()/drainAt {
				o.drain()
			}
		}
	}
}

// drain hands every record the kernel has committed to its flow, and reports whether the
// ring could be read (not after Close).
func (o *Observer) drain() bool {
	o.ringMu.Lock()
	defer o.ringMu.Unlock()
	if o.rd == nil {
		return false
	}
	if o.rd.AvailableBytes() == 0 {
		return true // nothing written: no system call
	}
	for {
		err := o.rd.ReadInto(&o.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return true // the ring is empty
		}
		if err != nil {
			if !o.ringWarned {
				o.ringWarned = true // per drain it would be per probe
				o.log.Warn("read eBPF events: probes fall back to kernel or userspace timing", "err", err)
			}
			return false
		}
		o.deliver(o.rec.RawSample)
	}
}

// deliver hands one record to its flow, if it is still open.
func (o *Observer) deliver(raw []byte) {
	var e Event
	if len(raw) < int(unsafe.Sizeof(e)) {
		return
	}
	// The sample is the C struct, written by this host's kernel: a plain copy. (A
	// reflective decode cost more than the rest of handling an event.)
	e = *(*Event)(unsafe.Pointer(unsafe.SliceData(raw)))
	o.mu.Lock()
	f := o.flows[e.Token]
	o.mu.Unlock()
	if f != nil {
		f.add(e)
	}
}
