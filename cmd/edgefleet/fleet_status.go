package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("status", command{summary: "show the fleet: every device's apps, versions, states and errors", run: runStatus})
	register("retire", command{summary: "remove a release's retained manifests (all channels, devices) and unshared chunks", run: runRetire})
}

func runStatus(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON (devices and summary); the same as -o json")
	output := fs.String("o", "", "output: wide (every column, whole errors) or json")
	watch := fs.Bool("watch", false, "redraw the table as statuses change, until interrupted")
	interval := fs.Duration("interval", time.Second, "redraw at most this often with --watch")
	selFlag := fs.String("select", "", "only devices whose reported labels match, e.g. site=berlin,hw=rev2")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet status --broker URL [--select k=v,...] [-o wide|json] [--watch] [DEVICE]")
		fmt.Fprintln(env.stderr, "With DEVICE: that device in full (every field, whole errors, rollout phases).")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() > 1 {
		return usageError(fs, "give at most one device (got %d: %s)", fs.NArg(), strings.Join(fs.Args(), " "))
	}
	switch *output {
	case "", "wide":
	case "json":
		*asJSON = true
	default:
		return usageError(fs, "-o %q: want wide or json", *output)
	}
	device := fs.Arg(0)
	color := useColor(env, env.stdout)
	sel, err := protocol.ParseSelector(*selFlag)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet status: --select: %v\n", err)
		return 2
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet status: %v\n", err)
		return 1
	}
	defer c.Disconnect(250)
	v := fleet.NewFleetView()
	v.Select(sel)
	filters := append(append([]string{}, protocol.DeviceFilters...), protocol.AllDesiredFilter, protocol.KeySetTopic)
	var keySetVersion atomic.Uint64 // the operator's key set on the broker (keyset.go)
	if err := fleet.Subscribe(ctx, c, filters, func(topic string, payload []byte) {
		if topic == protocol.KeySetTopic {
			keySetVersion.Store(fleet.ReadKeySetVersion(map[string][]byte{topic: payload}))
			return
		}
		if err := v.Update(topic, payload); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet status: %v\n", err)
		}
	}); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet status: %v\n", err)
		return 1
	}
	found := true
	draw := func() {
		switch {
		case device != "" && *asJSON:
			found = writeDeviceJSON(env.stdout, v, device)
		case device != "":
			found = v.WriteDevice(env.stdout, time.Now(), device, color)
		case *asJSON:
			v.WriteJSON(env.stdout)
		default:
			v.WriteTableWith(env.stdout, time.Now(), fleet.TableOptions{Wide: *output == "wide", Color: color})
			v.WriteKeySetReport(env.stdout, keySetVersion.Load())
		}
	}
	if !*watch {
		draw()
		if !found {
			fmt.Fprintf(env.stderr, "edgefleet status: no status from device %q on the broker; devices with a status: %s\n", device, orNoneList(v.DeviceIDs()))
			return 1
		}
		return 0
	}
	gen := -1
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		if g := v.Generation(); g != gen {
			gen = g
			if !*asJSON {
				fmt.Fprint(env.stdout, "\x1b[H\x1b[2J") // home, clear screen
			}
			draw()
		}
		select {
		case <-ctx.Done():
			return 0
		case <-tick.C:
		}
		if !c.IsConnectionOpen() {
			fmt.Fprintln(env.stderr, "edgefleet status: lost the connection to the broker")
			return 1
		}
	}
}

func runRetire(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("retire", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet retire --broker URL APP VERSION")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil || fs.NArg() != 2 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet retire: %v\n", err)
		return 1
	}
	defer c.Disconnect(250)
	res, err := fleet.Retire(ctx, c, fs.Arg(0), fs.Arg(1), func(f string, a ...any) { fmt.Fprintf(env.stderr, f+"\n", a...) })
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet retire: %v\n", err)
		return 1
	}
	for _, t := range res.Cleared {
		fmt.Fprintf(env.stdout, "cleared %s\n", t)
	}
	topics := fmt.Sprintf("%d release topics", len(res.Cleared))
	if n := countDeltaTopics(res.Cleared); n > 0 {
		topics = fmt.Sprintf("%d release topics and %d deltas", len(res.Cleared)-n, n)
	}
	fmt.Fprintf(env.stdout, "retired %s %s: %s, %d chunks removed, %d payloads kept (shared with other releases)\n",
		fs.Arg(0), fs.Arg(1), topics, res.ChunksCleared, res.SharedPayloads)
	if len(res.Cleared) == 0 {
		fmt.Fprintf(env.stderr, "edgefleet retire: no retained release of %s %s found\n", fs.Arg(0), fs.Arg(1))
		return 1
	}
	return 0
}

// writeDeviceJSON prints one device's status as JSON; false when the
// view has none.
func writeDeviceJSON(w io.Writer, v *fleet.FleetView, device string) bool {
	for _, d := range v.Devices() {
		if d.Device == device {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(struct {
				protocol.DeviceStatus
				Assigned map[string]string `json:"assigned,omitempty"`
			}{d, v.Assigned()[device]})
			return true
		}
	}
	return false
}

func orNoneList(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
