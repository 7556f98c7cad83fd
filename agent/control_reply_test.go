package agent

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/protocol"
)

// replySeeds are lines a daemon sends (valid) and lines it never sends.
var replySeeds = []string{
	`{"type":"progress","progress":{"app":"hello","step":"verify"}}`,
	`{"type":"progress","progress":{"app":"hello","step":"stage","done":65536,"total":1834000}}`,
	`{"type":"event","app":"hello","event":"installed","message":"hello 1.2.0 swapped in (previous 1.1.0), on trial"}`,
	`{"type":"result","ok":true,"result":{"app":"hello","version":"1.2.0","sequence":3,"path":"/opt/hello/bin/hello"},"trial":"committed"}`,
	`{"type":"result","code":"refused","error":"rolled back: crash loop","result":{"app":"hello","version":"1.2.0","sequence":3,"path":"/x"},"trial":"rolled-back"}`,
	`{"type":"result","ok":true,"status":{"device_id":"pi-017","daemon":true,"pid":1,"since":"2026-01-01T00:00:00Z","apps":[{"app":"hello","path":"/x","state":"committed","process":{"running":true,"run":1,"restarts":0,"last_exit":{"run":1,"time":"2026-01-01T00:00:00Z","uptime":5,"code":0}}}]}}`,
	`{"type":"result","ok":true,"manifest":{"schema":1,"app":"hello","version":"1.0.0","sequence":1}}`,
	`{"type":"result","ok":true,"app":"hello","message":"hello rolled back to 1.0.0 (sequence 1)"}`,
	`{"type":"progress"}`,
	`{"type":"result","ok":"yes"}`,
	`{"type":"result","ok":true,"result":{"app":"hello","version":"1","sequence":1,"path":"/x"},"trial":"committed","extra":1}`,
	`{"type":"result","ok":true,"message":"x"}{"type":"result"}`,
	`{"type":"progress","progress":{"app":"hello","step":"stage","done":-5,"total":10}}`,
	`{"type":"result","code":"refused"}`,
	`{"type":"bogus"}`,
	`{"type":"event"}`,
	`null`,
	`[]`,
	`{"type":"result","ok":true,"status":{"device_id":"x","daemon":true,"pid":1,"since":"x","apps":[]}}`,
	`{"type":"result","ok":true,"status":{"device_id":"x","apps":[{"app":"../etc"}]}}`,
	`{"type":"result","ok":true,"Status":{"device_id":"x","apps":[{"app":"hello","bogus":1}]}}`,
}

func TestDecodeResponseStrict(t *testing.T) {
	valid := map[string]bool{}
	for _, s := range replySeeds[:8] {
		valid[s] = true
	}
	for _, s := range replySeeds {
		_, err := DecodeResponse([]byte(s))
		if valid[s] && err != nil {
			t.Errorf("a reply the daemon sends was refused: %s\n%v", s, err)
		}
		if !valid[s] {
			if err == nil {
				t.Errorf("accepted a malformed reply: %s", s)
				continue
			}
			if !strings.Contains(err.Error(), "malformed") || !strings.Contains(err.Error(), "control socket") {
				t.Errorf("the error does not say what is wrong and where: %v", err)
			}
		}
	}
	// What each op needs in a successful result.
	for _, tc := range []struct{ op, line string }{
		{OpSideload, `{"type":"result","ok":true}`},
		{OpSideload, `{"type":"result","ok":true,"result":{"app":"hello","version":"1","sequence":1,"path":"/x"}}`},
		{OpStatus, `{"type":"result","ok":true,"message":"hi"}`},
		{OpStatus, `{"type":"result","ok":true,"status":null}`},
		{OpCheck, `{"type":"result","ok":true}`},
		{OpReset, `{"type":"result","ok":true}`},
		{OpRollback, `{"type":"result","ok":true}`},
	} {
		r, err := DecodeResponse([]byte(tc.line))
		if err == nil {
			err = r.answers(tc.op)
		}
		if err == nil {
			t.Errorf("%s: accepted %s", tc.op, tc.line)
		}
	}
	// Everything the real daemon encodes decodes.
	real := []Response{
		{Type: TypeProgress, Progress: &Progress{App: "hello", Step: StepStage, Done: 1, Total: 2}},
		{Type: TypeResult, OK: true, Status: &DaemonStatus{DeviceID: "d", Daemon: true, Since: time.Now(),
			Apps: []DaemonAppState{{AppStatus: AppStatus{App: "hello", State: StateTrial, TrialStarted: time.Now(), History: []Event{{Time: time.Now(), Kind: "installed"}}},
				Process: &SupervisorState{Running: true, LastExit: &Exit{Signal: "SIGSEGV", Code: -1}}, Output: []string{"x"}, Trial: "running"}}}},
		{Type: TypeResult, OK: true, Manifest: &protocol.Manifest{Schema: 1, App: "hello", Version: "1", Sequence: 1, Probe: &protocol.Probe{Args: []string{"--version"}, Timeout: protocol.Duration(time.Second)}}},
		errResult(ErrBusy),
	}
	for _, r := range real {
		b, _ := json.Marshal(r)
		if _, err := DecodeResponse(b); err != nil {
			t.Errorf("the daemon's own %s line is refused: %v\n%s", r.Type, err, b)
		}
	}
}

// FuzzDecodeResponse: any line from the socket is an answer or an error,
// never a panic; an accepted line has what its type needs, and encodes
// to a line that decodes again.
func FuzzDecodeResponse(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := DecodeResponse(line)
		if err != nil {
			if !strings.Contains(err.Error(), "malformed") {
				t.Fatalf("an error that does not say the reply is malformed: %v", err)
			}
			return
		}
		switch r.Type {
		case TypeProgress:
			if r.Progress == nil || r.Progress.Done < 0 || r.Progress.Total < 0 {
				t.Fatalf("accepted progress %+v", r.Progress)
			}
		case TypeEvent:
			if r.Event == "" {
				t.Fatal("accepted an event without its event")
			}
		case TypeResult:
			if !r.OK && (r.Error == "" || r.Code == "") {
				t.Fatalf("accepted a failure without its error and code: %+v", r)
			}
		default:
			t.Fatalf("accepted type %q", r.Type)
		}
		for _, op := range []string{OpStatus, OpCheck, OpSideload, OpRollback, OpReset} {
			if r.answers(op) == nil && r.OK {
				switch op {
				case OpSideload:
					if r.Result == nil {
						t.Fatal("a sideload answer without its result")
					}
				case OpStatus:
					if r.Status == nil {
						t.Fatal("a status answer without its status")
					}
				case OpCheck:
					if r.Manifest == nil {
						t.Fatal("a check answer without its manifest")
					}
				}
			}
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeResponse(b); err != nil {
			t.Fatalf("an accepted reply does not decode after encoding: %v\n%s\n%s", err, line, b)
		}
	})
}
