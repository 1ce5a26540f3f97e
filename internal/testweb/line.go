package testweb

import (
	"bufio"
	"net"
	"strings"
	"time"
)

// Line servers: each handles one connection as its name says, for the line probe's tests.

// SMTPish greets with a banner, answers EHLO with a two-line 250 and QUIT with 221.
func SMTPish(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	w := bufio.NewWriter(c)
	w.WriteString("220 lab.example.net ESMTP reachd-test\r\n")
	w.Flush()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
		case strings.HasPrefix(cmd, "EHLO"):
			w.WriteString("250-lab.example.net\r\n250 SIZE 1000000\r\n")
		case cmd == "QUIT":
			w.WriteString("221 bye\r\n")
			w.Flush()
			return
		default:
			w.WriteString("500 what?\r\n")
		}
		w.Flush()
	}
}

// Echoish waits for a line and answers "+OK " and the line, then the next, until EOF.
func Echoish(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := c.Write([]byte("+OK " + strings.TrimRight(line, "\r\n") + "\r\n")); err != nil {
			return
		}
	}
}

// HalfLine sends the start of a banner and closes mid-line.
func HalfLine(c net.Conn) {
	_, _ = c.Write([]byte("220 par"))
}

// Silent reads whatever comes and never answers.
func Silent(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// ErrThenClose answers the first line with -ERR and closes at once, the rest unread: the
// close is a reset.
func ErrThenClose(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := c.Read(buf); err != nil { // part of the line only: the rest stays unread
		return
	}
	_, _ = c.Write([]byte("-ERR nope\r\n"))
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// SlowGreeting sends a greeting's continuation line, waits, then its last line (as
// Postfix's postscreen does), then answers like SMTPish.
func SlowGreeting(c net.Conn) {
	_, _ = c.Write([]byte("220-lab.example.net wait for it\r\n"))
	time.Sleep(300 * time.Millisecond)
	_, _ = c.Write([]byte("220 lab.example.net ESMTP\r\n"))
	Silent(c)
}

// LongLine sends a line of 64 KiB of x and "OK" (longer than a line probe reads), then "NOPE".
func LongLine(c net.Conn) {
	_, _ = c.Write([]byte(strings.Repeat("x", 64<<10) + "OK\r\nNOPE\r\n"))
	Silent(c)
}
