package netctx

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// routeCache remembers the kernel's route answers while nothing that could change them has
// changed: a daemon asks for the same routes every interval, and each question is a
// netlink round trip (most of an echo's CPU otherwise). It is on only while FollowRoutes
// watches the kernel's route, rule, address and link changes, each of which empties it.
var routeCache struct {
	on  atomic.Bool
	gen atomic.Uint64 // bumped on every change the kernel reports
	mu  sync.Mutex
	m   map[RouteQuery]cachedRoute
}

type cachedRoute struct {
	r   Route
	gen uint64
	at  time.Time
}

// routeTTL bounds an answer's age even without a change reported (a missed notification,
// an overflowed socket).
const routeTTL = 30 * time.Second

// maxCachedRoutes bounds the cache: beyond it, it starts over.
const maxCachedRoutes = 1 << 16

// FollowRoutes turns the route cache on for as long as the returned stop is not called.
// It subscribes to the namespace's route, rule, nexthop, address and link changes; call it
// from the namespace whose routes are looked up.
func FollowRoutes() (stop func(), err error) {
	groups := []uint{unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
		unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE,
		unix.RTNLGRP_NEXTHOP} // routes through nexthop objects change with them
	s, err := nl.Subscribe(unix.NETLINK_ROUTE, groups...)
	if err != nil {
		return nil, fmt.Errorf("subscribe to route changes: %w", err)
	}
	// Receive blocks with no timeout: a short one lets the reader see stop.
	if err := s.SetReceiveTimeout(&unix.Timeval{Usec: 200_000}); err != nil {
		s.Close()
		return nil, fmt.Errorf("route changes: %w", err)
	}
	routeCache.mu.Lock()
	routeCache.m = map[RouteQuery]cachedRoute{}
	routeCache.mu.Unlock()
	routeCache.gen.Add(1)
	linkNames.linkGen.Add(1) // names read while nothing listened may have changed since
	routeCache.on.Store(true)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer s.Close()
		for {
			select {
			case <-done:
				return
			default:
			}
			msgs, _, err := s.Receive()
			if err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
					continue
				}
				// ENOBUFS: changes were lost; anything else: stop trusting the cache.
				routeCache.gen.Add(1)
				linkNames.linkGen.Add(1)
				if !errors.Is(err, unix.ENOBUFS) {
					routeCache.on.Store(false)
					return
				}
				continue
			}
			if len(msgs) > 0 {
				routeCache.gen.Add(1)
			}
			if linkChanged(msgs) {
				linkNames.linkGen.Add(1)
			}
		}
	}()
	return func() {
		routeCache.on.Store(false)
		close(done)
		<-finished
	}, nil
}

func cachedLookup(q RouteQuery) (Route, bool) {
	if !routeCache.on.Load() {
		return Route{}, false
	}
	routeCache.mu.Lock()
	defer routeCache.mu.Unlock()
	c, ok := routeCache.m[q]
	if !ok || c.gen != routeCache.gen.Load() || time.Since(c.at) > routeTTL {
		return Route{}, false
	}
	return c.r, true
}

// remember keeps r for q if it was looked up in generation gen (no change since).
func remember(q RouteQuery, r Route, gen uint64) {
	if !routeCache.on.Load() {
		return
	}
	routeCache.mu.Lock()
	defer routeCache.mu.Unlock()
	if routeCache.m == nil || len(routeCache.m) >= maxCachedRoutes {
		routeCache.m = map[RouteQuery]cachedRoute{}
	}
	routeCache.m[q] = cachedRoute{r: r, gen: gen, at: time.Now()}
}

// linkChanged says whether notifications tell of a link: new, gone, or changed (a rename,
// but also its state, flags or MTU, which cost a name cache no more than a lookup).
func linkChanged(msgs []syscall.NetlinkMessage) bool {
	for _, m := range msgs {
		if m.Header.Type == unix.RTM_NEWLINK || m.Header.Type == unix.RTM_DELLINK {
			return true
		}
	}
	return false
}

// linkNames remembers interface names by index while no link changes: routes and
// addresses come and go far more often, and leave names alone.
var linkNames struct {
	linkGen atomic.Uint64 // bumped on every link notification, and when following starts
	mu      sync.Mutex
	gen     uint64
	m       map[int]string
}

func cachedName(index int) (string, bool) {
	if !routeCache.on.Load() {
		return "", false
	}
	linkNames.mu.Lock()
	defer linkNames.mu.Unlock()
	if linkNames.gen != linkNames.linkGen.Load() {
		return "", false
	}
	n, ok := linkNames.m[index]
	return n, ok
}

// rememberName keeps index's name if it was read in link generation gen (no change since).
func rememberName(index int, name string, gen uint64) {
	if !routeCache.on.Load() || gen != linkNames.linkGen.Load() {
		return
	}
	linkNames.mu.Lock()
	defer linkNames.mu.Unlock()
	if linkNames.gen != gen || linkNames.m == nil || len(linkNames.m) >= maxCachedRoutes {
		linkNames.gen, linkNames.m = gen, map[int]string{}
	}
	linkNames.m[index] = name
}
