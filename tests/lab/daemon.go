package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Daemon is a `reachd run` in the lab's client namespace: its config in a directory of
// its own, its stdout read as JSON lines, a NOTIFY_SOCKET played by the test (the service
// manager's side), and optionally a real systemd-journald beside it in a private mount
// namespace (KERNEL.md), which the test reads back with journalctl.
type Daemon struct {
	Dir    string // config, notify socket, journald's pid
	Config string // the config file's path
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // from Wait, once exited is closed

	mu     sync.Mutex
	lines  []Line
	stderr strings.Builder
	notes  []Note
	notify *net.UnixConn
	netns  *NS
}

// Line is one stdout line of the daemon and when it was read.
type Line struct {
	At   time.Time
	Text string
	V    map[string]any // the line as JSON; nil if it is not
}

// Note is one sd_notify datagram and when it came.
type Note struct {
	At    time.Time
	State string
}

// DaemonOptions say how to start a daemon.
type DaemonOptions struct {
	Journal bool     // run a private systemd-journald beside it
	Env     []string // extra environment
	// JournalStdout: stdout is the journal's stream, as under systemd (JOURNAL_STREAM set).
	JournalStdout bool
	WatchdogUsec  int
	// NS is where the daemon runs; nil: the lab's client.
	NS *NS
	// Profile: no config file at all (the gateway profile).
	Profile bool
	// ResolvConf, when set, is the daemon's /etc/resolv.conf (in a private mount namespace:
	// the machine's own is never read); always with Profile.
	ResolvConf string
}

// journaldConf keeps the private journald off the host's disk, without rate limits.
const journaldConf = "[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\n"

// StartDaemon writes config and starts reachd run in the client namespace.
func (l *Lab) StartDaemon(bin, config string, opt DaemonOptions) (*Daemon, error) {
	dir, err := os.MkdirTemp("", "reachd-daemon-")
	if err != nil {
		return nil, err
	}
	ns := opt.NS
	if ns == nil {
		ns = l.Client
	}
	d := &Daemon{Dir: dir, Config: filepath.Join(dir, "reachd.yaml"), exited: make(chan struct{}), netns: ns}
	if err := os.WriteFile(d.Config, []byte(config), 0o644); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "notify.sock")
	if d.notify, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"}); err != nil {
		return nil, err
	}
	go d.readNotes()
	args := []string{"--net=" + ns.Path(), "--"}
	run := []string{bin, "run", "--config", d.Config}
	if opt.Journal || opt.Profile || opt.ResolvConf != "" {
		script, err := d.mountScript(opt)
		if err != nil {
			return nil, err
		}
		args = append(args, "unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh")
	}
	if opt.Profile {
		run = run[:2]
	}
	d.cmd = exec.Command("nsenter", append(args, run...)...)
	d.cmd.Env = append(os.Environ(), "DIR="+dir, "NOTIFY_SOCKET="+sock)
	if opt.JournalStdout {
		d.cmd.Env = append(d.cmd.Env, "JOURNAL_STDOUT=1")
	}
	if opt.WatchdogUsec > 0 {
		d.cmd.Env = append(d.cmd.Env, fmt.Sprintf("WATCHDOG_USEC=%d", opt.WatchdogUsec))
	}
	d.cmd.Env = append(d.cmd.Env, opt.Env...)
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	d.cmd.Stderr = &lockedWriter{mu: &d.mu, w: &d.stderr}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go d.readLines(stdout)
	l.AddCloser(d.Kill)
	return d, nil
}

// mountScript is the shell script that prepares the daemon's private mount namespace: a
// journald of its own, a resolv.conf of the test's, no /etc/reachd; then it runs the
// daemon ("$@").
func (d *Daemon) mountScript(opt DaemonOptions) (string, error) {
	script := "set -e\n"
	if opt.Profile || opt.ResolvConf != "" {
		if err := os.WriteFile(filepath.Join(d.Dir, "resolv.conf"), []byte(opt.ResolvConf), 0o644); err != nil {
			return "", err
		}
		script += `mount --bind "$DIR/resolv.conf" /etc/resolv.conf
`
	}
	if opt.Profile {
		script += `if [ -d /etc/reachd ]; then mount -t tmpfs tmpfs /etc/reachd; fi
`
	}
	if opt.Journal {
		if err := os.WriteFile(filepath.Join(d.Dir, "journald.conf"), []byte(journaldConf), 0o644); err != nil {
			return "", err
		}
		// A private /run with journald in it, the host's journald.conf hidden.
		script += `mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal /run/log/journal
mount --bind "$DIR/journald.conf" /etc/systemd/journald.conf
/lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &
echo $! > "$DIR/journald.pid"
i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 200 ]; do sleep 0.025; i=$((i+1)); done
`
	}
	script += `if [ -n "$JOURNAL_STDOUT" ]; then
  exec systemd-cat -t reachd-stdout sh -c 'export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/$$/fd/1); exec "$@"' sh "$@"
fi
exec "$@"`
	return script, nil
}

// ResolvConf rewrites the daemon's resolv.conf (DaemonOptions.ResolvConf), in place.
func (d *Daemon) ResolvConf(text string) error {
	return os.WriteFile(filepath.Join(d.Dir, "resolv.conf"), []byte(text), 0o644)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (d *Daemon) readLines(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		ln := Line{At: time.Now(), Text: sc.Text()}
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			ln.V = m
		}
		d.mu.Lock()
		d.lines = append(d.lines, ln)
		d.mu.Unlock()
	}
	d.err = d.cmd.Wait()
	close(d.exited)
}

func (d *Daemon) readNotes() {
	buf := make([]byte, 4096)
	for {
		n, err := d.notify.Read(buf)
		if err != nil {
			return
		}
		d.mu.Lock()
		d.notes = append(d.notes, Note{At: time.Now(), State: string(buf[:n])})
		d.mu.Unlock()
	}
}

// Lines returns the stdout lines so far.
func (d *Daemon) Lines() []Line {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Line(nil), d.lines...)
}

// Stderr returns what the daemon wrote to stderr so far.
func (d *Daemon) Stderr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// Notes returns the sd_notify datagrams so far.
func (d *Daemon) Notes() []Note {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Note(nil), d.notes...)
}

// WaitLine waits until a stdout line satisfies ok, and returns it.
func (d *Daemon) WaitLine(timeout time.Duration, ok func(Line) bool) (Line, bool) {
	return waitFor(timeout, d.exited, func() (Line, bool) {
		for _, ln := range d.Lines() {
			if ok(ln) {
				return ln, true
			}
		}
		return Line{}, false
	})
}

// WaitNote waits for an sd_notify datagram containing state.
func (d *Daemon) WaitNote(timeout time.Duration, state string) (Note, bool) {
	return waitFor(timeout, d.exited, func() (Note, bool) {
		for _, n := range d.Notes() {
			if strings.Contains(n.State, state) {
				return n, true
			}
		}
		return Note{}, false
	})
}

func waitFor[T any](timeout time.Duration, exited chan struct{}, f func() (T, bool)) (T, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if v, ok := f(); ok {
			return v, true
		}
		select {
		case <-exited:
			return f()
		default:
		}
		if time.Now().After(deadline) {
			var zero T
			return zero, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Signal sends sig to the daemon (reachd itself: nsenter and sh exec it).
func (d *Daemon) Signal(sig syscall.Signal) error { return d.cmd.Process.Signal(sig) }

// Wait waits for the daemon to exit and returns its exit status (-1 on timeout).
func (d *Daemon) Wait(timeout time.Duration) int {
	select {
	case <-d.exited:
	case <-time.After(timeout):
		return -1
	}
	if ee, ok := d.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if d.err != nil {
		return -1
	}
	return 0
}

// Kill ends the daemon and its journald, and removes its directory.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Kill()
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
	}
	if b, err := os.ReadFile(filepath.Join(d.Dir, "journald.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	d.notify.Close()
	os.RemoveAll(d.Dir)
}

// Journal returns the journal's records that match (journalctl FIELD=VALUE arguments),
// read with journalctl in the private journald's mount namespace.
func (d *Daemon) Journal(match ...string) ([]map[string]any, error) {
	b, err := os.ReadFile(filepath.Join(d.Dir, "journald.pid"))
	if err != nil {
		return nil, fmt.Errorf("no journald: %w", err)
	}
	pid := strings.TrimSpace(string(b))
	args := append([]string{"--mount=/proc/" + pid + "/ns/mnt", "--", "journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager"}, match...)
	out, err := exec.Command("nsenter", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("journalctl: %w", err)
	}
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return nil, fmt.Errorf("journalctl line %q: %w", line, err)
		}
		recs = append(recs, m)
	}
	return recs, nil
}

// Metrics scrapes the daemon's /metrics at addr, from inside the client namespace.
func (d *Daemon) Metrics(addr string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		c, err := d.netns.Dial(network, a)
		if tc, ok := c.(*net.TCPConn); ok {
			// Closed with a reset: no TIME_WAIT left in the client namespace, where the
			// scale tests count the sockets reachd leaves.
			_ = tc.SetLinger(0)
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), err
}
