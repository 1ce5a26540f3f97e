package probe

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// WarmTimestamps makes the kernel stamp received packets from now on, and returns the
// function that lets it stop. The first socket that asks for receive timestamps turns them
// on for the whole host through a deferred work item (a static key flipped in process
// context), so a fresh process's first replies can arrive unstamped and be timed in
// userspace. This holds a socket that asks, and sends itself datagrams over loopback until
// one comes back stamped: at once when stamps are already on, and on a loaded host after
// however long the work item takes. Only datagrams that keep coming back unstamped until
// timeout make an error (the caller warns: early replies may be timed in userspace). When
// it cannot tell (loopback down, its datagrams filtered, ctx done) it returns no error: that
// says nothing about the stamps.
func WarmTimestamps(ctx context.Context, timeout time.Duration) (release func(), err error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return func() {}, nil
	}
	release = func() { unix.Close(fd) }
	// A short receive timeout: a lost datagram costs a retry, not a hang.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, unix.SOF_TIMESTAMPING_RX_SOFTWARE|unix.SOF_TIMESTAMPING_SOFTWARE) != nil ||
		unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}) != nil ||
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 5000}) != nil {
		return release, nil
	}
	self, err := unix.Getsockname(fd)
	if err != nil {
		return release, nil
	}
	buf, oob := make([]byte, 16), make([]byte, 256)
	unstamped, silent := false, 0
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline) && ctx.Err() == nil; {
		if unix.Sendto(fd, []byte("reachd"), 0, self) != nil {
			return release, nil
		}
		_, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
		switch {
		case err == nil && !parseRxOOB(oob[:oobn]).at.IsZero():
			return release, nil
		case err == nil:
			unstamped = true
		case !unstamped:
			if silent++; silent >= warmSilentTries {
				return release, nil // nothing comes back over loopback: a filter, not the stamps
			}
		}
		time.Sleep(time.Millisecond)
	}
	if unstamped && ctx.Err() == nil {
		return release, fmt.Errorf("the kernel did not turn receive timestamps on within %s: the first replies may be timed in userspace", timeout)
	}
	return release, nil
}

// warmSilentTries is how many of WarmTimestamps' datagrams (5 ms each) may go unanswered
// before it concludes that loopback drops them.
const warmSilentTries = 20
