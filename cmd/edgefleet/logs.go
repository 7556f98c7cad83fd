package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("logs", command{summary: "show an app's recent output (and the agent's lines about it) from a device, over MQTT", run: runLogs})
}

func runLogs(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	lines := fs.Int("lines", protocol.DefaultLogLines, fmt.Sprintf("last lines per app, 1 to %d", protocol.MaxLogLines))
	follow := fs.Bool("follow", false, "keep printing new lines, until interrupted")
	every := fs.Duration("interval", 2*time.Second, "with --follow: ask this often (a device answers at most 2 requests a second)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the device's answer")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet logs --broker URL DEVICE [APP] [--lines 100] [--follow]")
		fmt.Fprintln(env.stderr, "The device answers with each app's last output lines and the agent's own log lines about it (protocol/SPEC.md §8.11); the broker's ACL lets only operators ask.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return usageError(fs, "give a device and optionally an app (got %d arguments)", fs.NArg())
	}
	device, app := fs.Arg(0), fs.Arg(1)
	reqTopic, err := protocol.LogsRequestTopic(device)
	if err != nil {
		return usageError(fs, "%v", err)
	}
	if app != "" && !protocol.ValidApp(app) {
		return usageError(fs, "app %q is not a valid app name", app)
	}
	if *lines < 1 || *lines > protocol.MaxLogLines {
		return usageError(fs, "--lines %d: give 1 to %d", *lines, protocol.MaxLogLines)
	}
	replyTopic, _ := protocol.LogsTopic(device)
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet logs: %v\n", err)
		return 1
	}
	defer c.Disconnect(250)
	replies := make(chan *protocol.LogsReply, 16)
	if err := fleet.Subscribe(ctx, c, []string{replyTopic}, func(_ string, payload []byte) {
		r, err := protocol.ParseLogsReply(payload)
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet logs: dropped a reply: %v\n", err)
			return
		}
		select {
		case replies <- r:
		default:
		}
	}); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet logs: %v\n", err)
		return 1
	}
	ask := func(app string, after uint64) (*protocol.LogsReply, error) {
		var nonce [8]byte
		rand.Read(nonce[:])
		req := protocol.LogsRequest{Schema: protocol.MQTTSchemaVersion, ID: hex.EncodeToString(nonce[:]), App: app, Lines: *lines, After: after}
		b, _ := req.Marshal()
		if err := waitPublish(ctx, c.Publish(reqTopic, 1, false, b), *timeout); err != nil {
			return nil, fmt.Errorf("sending the request on %s: %w", reqTopic, err)
		}
		deadline := time.NewTimer(*timeout)
		defer deadline.Stop()
		for {
			select {
			case r := <-replies:
				if r.ID == req.ID && r.Device == device {
					return r, nil
				}
			case <-deadline.C:
				return nil, fmt.Errorf("device %s did not answer within %s: is it online (edgefleet status %s)? It needs an agent that answers logs requests, and the broker's ACL must let it read %s and write %s (docs/broker-files.md)", device, *timeout, device, reqTopic, replyTopic)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	r, err := ask(app, 0)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet logs: %v\n", err)
		return 1
	}
	if r.Error != "" {
		fmt.Fprintf(env.stderr, "edgefleet logs: device %s: %s\n", device, r.Error)
		return 1
	}
	printLogs(env.stdout, r, len(r.Apps) > 1)
	if !*follow {
		return 0
	}
	next := map[string]uint64{}
	for _, a := range r.Apps {
		next[a.App] = a.Next
	}
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
		for _, a := range r.Apps {
			rr, err := ask(a.App, next[a.App])
			if err != nil {
				if ctx.Err() != nil {
					return 0
				}
				fmt.Fprintf(env.stderr, "edgefleet logs: %v (still trying)\n", err)
				continue
			}
			for _, al := range rr.Apps {
				al.Agent = nil // shown once, at the start
				if al.Next < next[al.App] {
					fmt.Fprintf(env.stdout, "-- %s: the agent restarted; its output numbering starts again --\n", al.App)
				}
				next[al.App] = al.Next
				printLogs(env.stdout, &protocol.LogsReply{Apps: []protocol.AppLogs{al}}, len(r.Apps) > 1)
			}
		}
	}
}

// printLogs prints a reply: the agent's lines about each app, then its
// output, each line prefixed with the app's name when there are several.
func printLogs(w io.Writer, r *protocol.LogsReply, prefix bool) {
	for _, a := range r.Apps {
		p := ""
		if prefix {
			p = a.App + " | "
		}
		for _, l := range a.Agent {
			fmt.Fprintf(w, "%sagent: %s\n", p, l)
		}
		for _, l := range a.Lines {
			fmt.Fprintf(w, "%s%s\n", p, l)
		}
	}
}

// waitPublish waits for an MQTT publish to be acknowledged, at most d.
func waitPublish(ctx context.Context, t paho.Token, d time.Duration) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-time.After(d):
		return fmt.Errorf("no acknowledgement from the broker within %s", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}
