package daemon

import (
	"fmt"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// notifier tells the service manager (sd_notify) how the daemon is: READY, RELOADING,
// STOPPING, STATUS lines, and WATCHDOG pings, which only the scheduler's loop sends so that
// a stuck loop stops them and systemd restarts reachd. Without NOTIFY_SOCKET it does nothing.
type notifier struct {
	send func(state string) error
	// every is how often the watchdog wants a ping (half its timeout); 0: no watchdog.
	every time.Duration
	mu    sync.Mutex
	last  time.Time
}

func newNotifier() *notifier {
	n := &notifier{send: func(state string) error {
		_, err := sd.SdNotify(false, state)
		return err
	}}
	if d, err := sd.SdWatchdogEnabled(false); err == nil && d > 0 {
		n.every = d / 2
	}
	return n
}

func (n *notifier) ready(status string)  { _ = n.send("READY=1\nSTATUS=" + status) }
func (n *notifier) status(status string) { _ = n.send("STATUS=" + status) }
func (n *notifier) stopping()            { _ = n.send("STOPPING=1\nSTATUS=stopping: in-flight probes finish") }

// reloading says a reload began; systemd wants the monotonic time with it (notify-reload).
func (n *notifier) reloading() {
	_ = n.send(fmt.Sprintf("RELOADING=1\n%s\nSTATUS=reloading the config", sd.SdNotifyMonotonicUsec()))
}

// watchdog pings if a ping is due; the scheduler's loop calls it on every pass.
func (n *notifier) watchdog(now time.Time) {
	if n.every == 0 {
		return
	}
	n.mu.Lock()
	due := now.Sub(n.last) >= n.every
	if due {
		n.last = now
	}
	n.mu.Unlock()
	if due {
		_ = n.send("WATCHDOG=1")
	}
}
