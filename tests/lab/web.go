package lab

import (
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"
)

// ServeWeb serves h on port in the server namespace (every address it has, v4 and v6),
// over TLS with cfg unless cfg is nil, until the lab closes.
func (l *Lab) ServeWeb(port int, cfg *tls.Config, h http.Handler) error {
	ln, err := l.Server.Listen("tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, TLSConfig: cfg,
		ErrorLog: log.New(io.Discard, "", 0)} // probes end their connections with a reset
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	l.AddCloser(func() { srv.Close(); <-done })
	return nil
}
