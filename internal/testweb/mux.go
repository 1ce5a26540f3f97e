// Package testweb is the HTTP server reachd's http probe tests talk to: one path for each
// answer a probe must judge.
package testweb

import (
	"fmt"
	"net/http"
	"time"
)

// Paths of Mux.
const (
	OK      = "/ok"      // 200, body "ready HTTP/x.y"
	Moved   = "/moved"   // 301 to /moved2, which is a 302 to /ok
	Loop    = "/loop"    // 302 to itself
	Missing = "/missing" // 404
	Down    = "/down"    // 503
	Slow    = "/slow"    // 200 with 15 of its 100 body bytes, the rest never (until 3 s)
)

// Mux answers each path as its name says.
func Mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc(OK, func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "ready %s", r.Proto) })
	mux.HandleFunc(Moved, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/moved2", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/moved2", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, OK, http.StatusFound) })
	mux.HandleFunc(Loop, func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, Loop, http.StatusFound) })
	mux.HandleFunc(Missing, http.NotFound)
	mux.HandleFunc(Down, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	mux.HandleFunc(Slow, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		fmt.Fprint(w, "the first bytes")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	return mux
}
