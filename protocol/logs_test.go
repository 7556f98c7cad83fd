package protocol

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLogsTopicsRoundTrip(t *testing.T) {
	req, err := LogsRequestTopic("pi-1")
	if err != nil || req != "edgefleet/v1/device/pi-1/logs/request" {
		t.Fatalf("%q %v", req, err)
	}
	rep, _ := LogsTopic("pi-1")
	for topic, kind := range map[string]TopicKind{req: KindLogsRequest, rep: KindLogs} {
		tp, err := ParseTopic(topic)
		if err != nil || tp.Kind != kind || tp.Device != "pi-1" || tp.String() != topic {
			t.Errorf("%s: %+v %v", topic, tp, err)
		}
	}
	if _, err := LogsRequestTopic("a/b"); err == nil {
		t.Error("a device id with '/' made a topic")
	}
}

func TestParseLogsRequestStrict(t *testing.T) {
	good := `{"schema":1,"id":"n1","app":"hello","lines":20}`
	r, err := ParseLogsRequest([]byte(good))
	if err != nil || r.App != "hello" || r.Lines != 20 {
		t.Fatalf("%+v %v", r, err)
	}
	if r, _ := ParseLogsRequest([]byte(`{"schema":1,"id":"n1"}`)); r.Lines != DefaultLogLines {
		t.Errorf("default lines %d", r.Lines)
	}
	for name, b := range map[string]string{
		"no id":       `{"schema":1}`,
		"bad app":     `{"schema":1,"id":"x","app":"../x"}`,
		"many lines":  `{"schema":1,"id":"x","lines":100000}`,
		"unknown key": `{"schema":1,"id":"x","shell":"rm -rf /"}`,
		"duplicate":   `{"schema":1,"id":"x","id":"y"}`,
		"too big":     `{"schema":1,"id":"` + strings.Repeat("x", 2000) + `"}`,
	} {
		if _, err := ParseLogsRequest([]byte(b)); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A reply is fitted to its size limit by dropping the oldest lines, and a
// device's terminal escapes are neutralised on reading.
func TestLogsReplyFitAndClean(t *testing.T) {
	r := &LogsReply{Schema: 1, ID: "n", Device: "pi-1", Time: time.Now().UTC()}
	a := AppLogs{App: "hello", Next: 1000}
	for i := 0; i < MaxLogLines+50; i++ {
		a.Lines = append(a.Lines, strings.Repeat("y", 300))
	}
	a.Lines[len(a.Lines)-1] = "last \x1b[2J line"
	r.Apps = []AppLogs{a}
	b, err := FitLogsReply(r)
	if err != nil || len(b) > MaxLogsReplySize {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	got, err := ParseLogsReply(b)
	if err != nil {
		t.Fatal(err)
	}
	lines := got.Apps[0].Lines
	if len(lines) == 0 || len(lines) >= MaxLogLines || strings.Contains(lines[len(lines)-1], "\x1b") || !strings.HasPrefix(lines[len(lines)-1], "last ") {
		t.Fatalf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
}

func FuzzParseLogsMessages(f *testing.F) {
	f.Add([]byte(`{"schema":1,"id":"n1","app":"hello","lines":20}`))
	f.Add([]byte(`{"schema":1,"id":"n","device":"pi-1","time":"2026-12-01T00:00:00Z","apps":[{"app":"hello","lines":["a"],"next":3}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := ParseLogsRequest(b); err == nil && (r.ID == "" || r.Lines <= 0 || r.Lines > MaxLogLines) {
			t.Fatalf("accepted %+v", r)
		}
		if r, err := ParseLogsReply(b); err == nil {
			if _, err := r.Marshal(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
