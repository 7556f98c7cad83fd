package agent

import (
	"context"
	"regexp"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// Remote logs (protocol/SPEC.md §8.11): an operator asks over MQTT for an
// app's recent output; the device answers once with its supervisor's last
// output lines and the daemon's own log lines about the app. Bounded: a
// reply is at most protocol.MaxLogsReplySize bytes, and the device answers
// at most logsRate requests a second (more are dropped and logged once a
// minute), so a flood of requests costs it little.

// daemonLogLines is how many of its own log lines the daemon keeps.
const daemonLogLines = 200

// logsRate bounds the answered requests per second.
const logsRate = 2

// logRing keeps the last lines logged.
type logRing struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

func newLogRing(n int) *logRing { return &logRing{lines: make([]string, n)} }

func (r *logRing) add(line string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[r.next] = line
	r.next++
	if r.next == len(r.lines) {
		r.next, r.full = 0, true
	}
}

// about returns the last n lines that name app as a word, oldest first.
func (r *logRing) about(app string, n int) []string {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	all := append([]string(nil), r.lines[:r.next]...)
	if r.full {
		all = append(append([]string(nil), r.lines[r.next:]...), all...)
	}
	r.mu.Unlock()
	re := regexp.MustCompile(`(^|[^A-Za-z0-9._-])` + regexp.QuoteMeta(app) + `($|[^A-Za-z0-9._-])`)
	var out []string
	for _, l := range all {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// logsLimiter answers at most logsRate requests per second.
type logsLimiter struct {
	window  time.Time
	n       int
	dropped int
	logged  time.Time
}

func (l *logsLimiter) allow(now time.Time) bool {
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= logsRate {
		l.dropped++
		return false
	}
	l.n++
	return true
}

// logsReply builds the answer to req.
func (d *Daemon) logsReply(req *protocol.LogsRequest) *protocol.LogsReply {
	r := &protocol.LogsReply{Schema: protocol.MQTTSchemaVersion, ID: req.ID, Device: d.cfg.DeviceID, Time: time.Now().UTC(), Apps: []protocol.AppLogs{}}
	apps := []string{}
	if req.App != "" {
		if _, ok := d.cfg.App(req.App); !ok {
			r.Error = "app " + req.App + " is not configured on this device"
			return r
		}
		apps = append(apps, req.App)
	} else {
		for _, a := range d.cfg.Apps {
			apps = append(apps, a.Name)
		}
	}
	for _, name := range apps {
		al := protocol.AppLogs{App: name, Lines: []string{}}
		if s := d.supervisor(name); s != nil {
			al.Lines, al.Next = s.OutputSince(req.After, req.Lines)
		}
		if req.After == 0 {
			al.Agent = d.logs.about(name, req.Lines)
		}
		r.Apps = append(r.Apps, al)
	}
	return r
}

// logsRequest answers a request from the broker (the transport's loop).
func (t *mqttTransport) logsRequest(_ context.Context, payload []byte) {
	now := time.Now()
	if !t.logsLimit.allow(now) {
		if now.Sub(t.logsLimit.logged) >= time.Minute {
			t.logsLimit.logged = now
			t.logf("mqtt: logs requests arrive faster than %d a second; %d dropped", logsRate, t.logsLimit.dropped)
		}
		return
	}
	req, err := protocol.ParseLogsRequest(payload)
	if err != nil {
		t.stats.Dropped.Add(1)
		t.logf("mqtt: dropped a logs request: %v", err)
		return
	}
	b, err := protocol.FitLogsReply(t.d.logsReply(req))
	if err != nil {
		t.logf("mqtt: logs reply: %v", err)
		return
	}
	t.client.Publish(t.logsTopic, 1, false, b)
}
