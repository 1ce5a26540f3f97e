package probe

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"reachd/pkg/verdict"
)

// lineKind: a dialogue of lines over TCP (or TLS), as custom and text protocols speak:
// step i sends --send i (nothing if it is empty or missing: a banner protocol's first step
// only listens) and then matches the next line received against --expect i. The verdict
// names the step that failed, what it expected and what came.
var lineKind = register(&Kind{
	Name:    "line",
	Order:   7,
	Summary: "line protocol dialogue: --send and --expect steps in order (SMTP, POP3, Redis, ...)",
	Example: "  reachd probe line --send '' --expect '^220 ' --send 'QUIT\\r\\n' --expect '^221' 198.51.100.25:25\n" +
		"  reachd probe line --send 'PING\\r\\n' --expect '^\\+PONG' '[2001:db8::7]:6379'\n" +
		"  reachd probe line --tls --ca /etc/ssl/private-ca.pem --send '' --expect '^\\+OK' mail.example.net:995",
	Needs:      Needs{Tracepoints: true},
	NewOptions: func() KindOptions { return &LineOptions{} },
	run:        runLine,
})

// LineOptions are the line kind's options.
type LineOptions struct {
	TLSOptions
	TLS    bool             // --tls: speak over TLS (checked as the tls kind checks it)
	Sends  []string         // with escapes interpreted
	Expect []*regexp.Regexp // paired with Sends by index
	Step   time.Duration    // --step-timeout: each step's wait (0: the attempt's timeout)

	flags struct{ send, expect []string }
}

// Bounds of a dialogue: its steps, and the longest line a step reads.
const (
	MaxLineSteps = 32
	maxLine      = 64 << 10
)

func (o *LineOptions) AddFlags(fs *pflag.FlagSet) {
	o.TLSOptions.AddFlags(fs)
	fs.BoolVar(&o.TLS, "tls", false, "speak over TLS (the certificate is checked as by the tls kind)")
	fs.StringArrayVar(&o.flags.send, "send", nil, "text to send in the next step (repeatable; \\n \\r \\t \\\\ \\xHH interpreted, nothing appended; '' sends nothing)")
	fs.StringArrayVar(&o.flags.expect, "expect", nil, "regular expression the step's first line received must match, without its line ending (repeatable, paired with --send in order)")
	fs.DurationVar(&o.Step, "step-timeout", 0, "how long each step waits for its line (default: the attempt's timeout)")
}

func (o *LineOptions) Check(set func(string) bool) error {
	if err := o.TLSOptions.Check(set); err != nil {
		return err
	}
	n := max(len(o.flags.send), len(o.flags.expect))
	switch {
	case n == 0:
		return errors.New("--send and --expect give the dialogue: give at least one")
	case n > MaxLineSteps:
		return fmt.Errorf("at most %d steps, got %d", MaxLineSteps, n)
	case o.Step < 0:
		return fmt.Errorf("--step-timeout must not be negative, got %s", o.Step)
	}
	o.Sends, o.Expect = make([]string, n), make([]*regexp.Regexp, n)
	for i, s := range o.flags.send {
		text, err := unescape(s)
		if err != nil {
			return fmt.Errorf("--send %q: %v", s, err)
		}
		o.Sends[i] = text
	}
	for i, e := range o.flags.expect {
		re, err := regexp.Compile(e)
		if err != nil {
			return fmt.Errorf("--expect %q is not a regular expression: %v", e, err)
		}
		o.Expect[i] = re
	}
	for i := range o.Sends {
		if o.Sends[i] == "" && o.Expect[i] == nil {
			return fmt.Errorf("step %d sends nothing and expects nothing (--send and --expect pair up in order)", i+1)
		}
	}
	return nil
}

// unescape interprets \n \r \t \\ and \xHH.
func unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i++; i == len(s) {
			return "", errors.New("a trailing backslash")
		}
		switch c := s[i]; c {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case '\\':
			b.WriteByte('\\')
		case 'x':
			if i+2 >= len(s) {
				return "", errors.New(`\x wants two hex digits`)
			}
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				return "", errors.New(`\x wants two hex digits`)
			}
			b.WriteByte(byte(v))
			i += 2
		default:
			return "", fmt.Errorf(`unknown escape \%c (\n \r \t \\ \xHH are known)`, c)
		}
	}
	return b.String(), nil
}

// lineEvidence is what a line attempt tells beyond the common result: the connection's,
// and the dialogue's steps.
type lineEvidence struct {
	tlsEvidence
	line *verdict.Line
}

func (e *lineEvidence) fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis) {
	e.tlsEvidence.fill(v, since)
	if len(e.line.Steps) > 0 { // none when the connection failed before the dialogue
		v.Line = e.line
	}
}

func runLine(ctx context.Context, a Attempt) Result {
	o, _ := a.Opts.(*LineOptions)
	if o == nil {
		return fail(verdict.LocalError, "no dialogue: --send and --expect give it")
	}
	s, res := dialSession(ctx, a)
	if s == nil {
		return res
	}
	defer s.close()
	ev := &lineEvidence{line: &verdict.Line{}}
	ev.tcp, _ = s.tcp.Kind.(*tcpResult)
	conn := net.Conn(s.conn)
	res = Result{Reason: verdict.OK}
	if o.TLS {
		tc, hs := s.startTLS(ctx, &o.TLSOptions, serverName(a, &o.TLSOptions), nil)
		ev.tls, res = hs.summary, hs.res
		conn = tc
	}
	if res.Reason == verdict.OK {
		res = s.dialogue(ctx, conn, o, ev.line)
	}
	s.finish(&ev.tlsEvidence)
	r := s.outcome(res, &ev.tlsEvidence)
	r.Kind = ev
	return r
}

// dialogue runs the steps over conn. It notes the stream offsets of the first byte sent
// and received, for place to find their packets: the server's first bytes are timed at the
// wire like an HTTP response's first byte.
func (s *session) dialogue(ctx context.Context, conn net.Conn, o *LineOptions, lv *verdict.Line) Result {
	deadline, _ := ctx.Deadline()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) }) // a daemon stopping
	defer stop()
	tx, rx := s.conn.counts()
	s.marks.sentTx, s.marks.firstRx = tx, rx
	r := bufio.NewReaderSize(&firstRead{Conn: conn, s: s}, 4096)
	for i := range o.Sends {
		st := verdict.LineStep{N: i + 1, Send: quoteStart([]byte(o.Sends[i]), 64)}
		if o.Sends[i] == "" {
			st.Send = ""
		} else {
			// What is left of the last reply (the rest of a multi-line one) is not an
			// answer to this step's request.
			_, _ = r.Discard(r.Buffered())
			_ = conn.SetWriteDeadline(deadline)
			if !s.marks.sent.set() && !s.marks.first.set() { // a request before the server spoke
				s.marks.sent = mark{at: time.Now()}
			}
			if _, err := io.WriteString(conn, o.Sends[i]); err != nil {
				lv.Steps = append(lv.Steps, st)
				return s.stepFailure(err, i, "sending", "", time.Until(deadline))
			}
		}
		if o.Expect[i] == nil {
			lv.Steps = append(lv.Steps, st)
			continue
		}
		st.Expect = o.Expect[i].String()
		stepEnd := deadline
		if o.Step > 0 && time.Now().Add(o.Step).Before(deadline) {
			stepEnd = time.Now().Add(o.Step)
		}
		res := s.expectLine(conn, r, o.Expect[i], i, stepEnd, &st)
		lv.Steps = append(lv.Steps, st)
		if res.Reason != "" {
			return res
		}
	}
	s.marks.end = mark{at: time.Now()}
	return Result{Reason: verdict.OK, sent: true, Detail: fmt.Sprintf("%d step(s) as expected", len(o.Sends))}
}

// firstRead marks when the server's first bytes reached the prober: the first read that
// returns any (over TLS, that read's record is placed on the wire: placeFirstTLS).
type firstRead struct {
	net.Conn
	s *session
}

func (f *firstRead) Read(b []byte) (int, error) {
	n, err := f.Conn.Read(b)
	if n > 0 && !f.s.marks.first.set() {
		f.s.marks.first = mark{at: time.Now()}
		if _, isTLS := f.Conn.(*tls.Conn); isTLS {
			f.s.placeFirstTLS(f.s.conn.lastChunk())
		}
	}
	return n, err
}

// expectLine reads the lines of step i until one matches re, passing over those that do
// not (a multi-line reply's first lines, a greeting's continuation) until the step ends.
// The step fails with the first line that did not match if the server closes, resets or
// falls silent without one that does; with none, for the silence. An empty Result means the
// step's line came.
func (s *session) expectLine(conn net.Conn, r *bufio.Reader, re *regexp.Regexp, i int, stepEnd time.Time, st *verdict.LineStep) Result {
	wait := time.Until(stepEnd)
	_ = conn.SetReadDeadline(stepEnd)
	var first string // the first line that did not match
	unmatched := 0
	for {
		line, cut, err := readLine(r)
		if err == nil && re.MatchString(line) {
			st.Received = quoteStart([]byte(line), 128)
			if cut {
				st.Received += fmt.Sprintf(" (cut at %d bytes)", maxLine)
			}
			return Result{}
		}
		if err == nil {
			if unmatched++; unmatched == 1 {
				first = line
			}
			continue
		}
		if unmatched > 0 {
			s.marks.end = mark{at: time.Now()}
			st.Received = quoteStart([]byte(first), 128)
			detail := fmt.Sprintf("step %d: line %s does not match %q", i+1, st.Received, re)
			if unmatched > 1 {
				detail += fmt.Sprintf(" (nor do the %d lines after it)", unmatched-1)
			}
			return Result{Reason: verdict.ProtocolMismatch, sent: true, Detail: detail + ", " + lineEnd(err)}
		}
		if line != "" {
			st.Received = quoteStart([]byte(line), 128)
		}
		return s.stepFailure(err, i, "waiting for its line", line, wait)
	}
}

// lineEnd words how a dialogue's reading ended, after lines that did not match.
func lineEnd(err error) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "and none after it did before the step's time ran out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "and the server closed the connection"
	}
	return fmt.Sprintf("and then: %v", err)
}

// readLine reads one line without its ending (\n or \r\n). A line longer than maxLine is
// cut there, the rest of it read and dropped (cut reports it). At the end of the stream,
// what came of a line is returned with the error.
func readLine(r *bufio.Reader) (line string, cut bool, err error) {
	var b []byte
	total := 0
	for {
		chunk, err := r.ReadSlice('\n')
		total += len(chunk)
		if room := maxLine - len(b); room > 0 {
			b = append(b, chunk[:min(room, len(chunk))]...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		cut = total > len(b)
		if err != nil {
			return string(b), cut, err
		}
		return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), cut, nil
	}
}

// stepFailure classifies a dialogue's I/O error in step i, after waiting wait: the server
// closed or reset the connection, or said nothing in time.
func (s *session) stepFailure(err error, i int, doing, partial string, wait time.Duration) Result {
	if s.marks.first.set() {
		s.marks.end = mark{at: time.Now()}
	} else { // the wait was for the server's first bytes
		s.marks.first, s.marks.firstRx = mark{at: time.Now()}, -1
	}
	where := fmt.Sprintf("%s in step %d", doing, i+1)
	res := ioFailure(err, verdict.LayerApplication, where, wait)
	switch {
	case res.Reason == verdict.Timeout:
		res.Detail = fmt.Sprintf("nothing within %s while %s", wait.Round(time.Millisecond), where)
	case res.Reason == "":
		res = Result{Reason: verdict.LocalError, sent: true, Detail: fmt.Sprintf("step %d: %v", i+1, err)}
	}
	if partial != "" {
		res.Detail += fmt.Sprintf(", after the partial line %s", quoteStart([]byte(partial), 128))
	}
	return res
}
