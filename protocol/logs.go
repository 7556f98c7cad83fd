package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// Remote logs (SPEC.md §8.11): an operator asks a device for an app's
// recent output, the device answers once. Neither message is retained.
const (
	KindLogsRequest TopicKind = "logs-request" // edgefleet/v1/device/<id>/logs/request
	KindLogs        TopicKind = "logs"         // edgefleet/v1/device/<id>/logs
)

// Limits of the remote log messages.
const (
	MaxLogsRequestSize = 1 << 10  // bytes of a request
	MaxLogsReplySize   = 64 << 10 // bytes of a reply; the device drops the oldest lines to fit
	MaxLogLines        = 500      // lines per app in a reply
	MaxLogLineLength   = 512      // bytes per line
	DefaultLogLines    = 100
)

// LogsRequestTopic is where operators ask device for logs.
func LogsRequestTopic(device string) (string, error) {
	if !ValidDeviceID(device) {
		return "", topicErr("device id", device)
	}
	return Topic{Kind: KindLogsRequest, Device: device}.String(), nil
}

// LogsTopic is where device answers.
func LogsTopic(device string) (string, error) {
	if !ValidDeviceID(device) {
		return "", topicErr("device id", device)
	}
	return Topic{Kind: KindLogs, Device: device}.String(), nil
}

// LogsRequest asks a device for its apps' recent output.
type LogsRequest struct {
	Schema int `json:"schema"`
	// ID is the requester's nonce, echoed in the reply.
	ID string `json:"id"`
	// App limits the reply to one app; empty: every configured app.
	App string `json:"app,omitempty"`
	// Lines is how many of the last lines per app (1..MaxLogLines);
	// 0: DefaultLogLines.
	Lines int `json:"lines,omitempty"`
	// After, when set, asks only for lines numbered above it (the Next of
	// an earlier reply): --follow.
	After uint64 `json:"after,omitempty"`
}

// LogsReply is a device's answer.
type LogsReply struct {
	Schema int       `json:"schema"`
	ID     string    `json:"id"`
	Device string    `json:"device"`
	Time   time.Time `json:"time"`
	Apps   []AppLogs `json:"apps"`
	// Error says why the request was not answered in full (an unknown
	// app, too many requests).
	Error string `json:"error,omitempty"`
}

// AppLogs is one app's part of a reply.
type AppLogs struct {
	App string `json:"app"`
	// Lines are the app's last output lines (stdout and stderr), oldest
	// first.
	Lines []string `json:"lines"`
	// Next numbers the app's output: lines printed since the agent
	// started. Ask with After: Next for what follows.
	Next uint64 `json:"next"`
	// Agent are the agent's own recent log lines about the app (installs,
	// trials, rollbacks, restarts).
	Agent []string `json:"agent,omitempty"`
}

// Marshal encodes r.
func (r *LogsRequest) Marshal() ([]byte, error) { return json.Marshal(r) }

// Marshal encodes r.
func (r *LogsReply) Marshal() ([]byte, error) { return json.Marshal(r) }

// ParseLogsRequest decodes a request strictly (it comes from the broker).
func ParseLogsRequest(b []byte) (*LogsRequest, error) {
	if len(b) > MaxLogsRequestSize {
		return nil, fmt.Errorf("logs request is %d bytes, more than %d: %w", len(b), MaxLogsRequestSize, ErrTooLarge)
	}
	if err := checkSchema(b, "logs request"); err != nil {
		return nil, err
	}
	var r LogsRequest
	if err := strictJSON(b, &r); err != nil {
		return nil, fmt.Errorf("logs request: %v: %w", err, ErrMalformed)
	}
	switch {
	case r.ID == "" || len(r.ID) > 64:
		return nil, fmt.Errorf("logs request: id must have 1 to 64 bytes: %w", ErrMalformed)
	case r.App != "" && !ValidApp(r.App):
		return nil, fmt.Errorf("logs request: app %q is not valid: %w", clip(r.App), ErrMalformed)
	case r.Lines < 0 || r.Lines > MaxLogLines:
		return nil, fmt.Errorf("logs request: lines %d outside 0..%d: %w", r.Lines, MaxLogLines, ErrMalformed)
	}
	if r.Lines == 0 {
		r.Lines = DefaultLogLines
	}
	return &r, nil
}

// ParseLogsReply decodes a reply strictly (a device wrote it) and
// neutralises its text for a terminal.
func ParseLogsReply(b []byte) (*LogsReply, error) {
	if len(b) > MaxLogsReplySize {
		return nil, fmt.Errorf("logs reply is %d bytes, more than %d: %w", len(b), MaxLogsReplySize, ErrTooLarge)
	}
	if err := checkSchema(b, "logs reply"); err != nil {
		return nil, err
	}
	var r LogsReply
	if err := strictJSON(b, &r); err != nil {
		return nil, fmt.Errorf("logs reply: %v: %w", err, ErrMalformed)
	}
	if !ValidDeviceID(r.Device) || r.ID == "" || len(r.ID) > 64 || len(r.Apps) > 64 {
		return nil, fmt.Errorf("logs reply: bad device, id or app count: %w", ErrMalformed)
	}
	r.Error = cleanText(r.Error)
	for i := range r.Apps {
		a := &r.Apps[i]
		if !ValidApp(a.App) || len(a.Lines) > MaxLogLines || len(a.Agent) > MaxLogLines {
			return nil, fmt.Errorf("logs reply: app %q or its line count is not valid: %w", clip(a.App), ErrMalformed)
		}
		for j := range a.Lines {
			a.Lines[j] = cleanText(a.Lines[j])
		}
		for j := range a.Agent {
			a.Agent[j] = cleanText(a.Agent[j])
		}
	}
	return &r, nil
}

// FitLogsReply drops the oldest lines of r's apps until it encodes in
// MaxLogsReplySize, and clips each line to MaxLogLineLength.
func FitLogsReply(r *LogsReply) ([]byte, error) {
	for i := range r.Apps {
		a := &r.Apps[i]
		if len(a.Lines) > MaxLogLines {
			a.Lines = a.Lines[len(a.Lines)-MaxLogLines:]
		}
		if len(a.Agent) > MaxLogLines {
			a.Agent = a.Agent[len(a.Agent)-MaxLogLines:]
		}
		for j := range a.Lines {
			a.Lines[j] = clipBytes(a.Lines[j], MaxLogLineLength)
		}
		for j := range a.Agent {
			a.Agent[j] = clipBytes(a.Agent[j], MaxLogLineLength)
		}
	}
	for {
		b, err := r.Marshal()
		if err != nil || len(b) <= MaxLogsReplySize {
			return b, err
		}
		// Drop the oldest line of the app with the most.
		big := 0
		for i := range r.Apps {
			if len(r.Apps[i].Lines)+len(r.Apps[i].Agent) > len(r.Apps[big].Lines)+len(r.Apps[big].Agent) {
				big = i
			}
		}
		a := &r.Apps[big]
		switch {
		case len(a.Lines) > 0:
			a.Lines = a.Lines[1:]
		case len(a.Agent) > 0:
			a.Agent = a.Agent[1:]
		default:
			return nil, fmt.Errorf("logs reply does not fit in %d bytes", MaxLogsReplySize)
		}
	}
}

func clipBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 { // do not cut a UTF-8 sequence
		n--
	}
	return s[:n] + "…"
}
