package target

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ParseURL parses an http or https URL: the host and port to probe come from it (80 and 443
// by default), and URL keeps the whole of it for the request.
func ParseURL(s string) (Target, error) {
	t := Target{Raw: s}
	if s == "" {
		return t, errors.New("empty target (want a URL such as https://example.net/)")
	}
	if !strings.Contains(s, "://") {
		return t, fmt.Errorf("URL %q has no scheme (want http:// or https://, e.g. https://%s)", s, s)
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return t, fmt.Errorf("target %q is not a URL: %v", s, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		u.Scheme = strings.ToLower(u.Scheme)
	case "":
		return t, fmt.Errorf("URL %q has no scheme (want http:// or https://)", s)
	default:
		return t, fmt.Errorf("URL %q: scheme %q is not http or https", s, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return t, fmt.Errorf("URL %q has no host", s)
	}
	if u.User != nil {
		return t, fmt.Errorf("URL %q carries credentials: give them with --header 'Authorization: ...' instead, so they stay out of logs", s)
	}
	port := u.Port()
	switch {
	case port == "" && strings.HasSuffix(u.Host, ":"):
		return t, fmt.Errorf("URL %q: empty port", s)
	case port == "" && u.Scheme == "https":
		port = "443"
	case port == "":
		port = "80"
	}
	p, err := parsePort(port)
	if err != nil {
		return t, fmt.Errorf("URL %q: %w", s, err)
	}
	t.Port = p
	host := u.Hostname()
	bracketed := strings.HasPrefix(u.Host, "[")
	if bracketed {
		// url.Parse keeps a zone escaped (%25); the address parser wants it plain.
		host = strings.Replace(host, "%25", "%", 1)
	}
	if err := t.setHost(host, bracketed); err != nil {
		return t, fmt.Errorf("URL %q: %w", s, err)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	t.URL = u
	return t, nil
}
