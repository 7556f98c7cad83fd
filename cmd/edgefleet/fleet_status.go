package main

import (
	"context"
	"flag"
	"fmt"
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
	asJSON := fs.Bool("json", false, "print JSON (devices and summary)")
	watch := fs.Bool("watch", false, "redraw the table as statuses change, until interrupted")
	interval := fs.Duration("interval", time.Second, "redraw at most this often with --watch")
	selFlag := fs.String("select", "", "only devices whose reported labels match, e.g. site=berlin,hw=rev2")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet status --broker URL [--select k=v,...] [--json] [--watch]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
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
	draw := func() {
		if *asJSON {
			v.WriteJSON(env.stdout)
			return
		}
		v.WriteTable(env.stdout, time.Now())
		v.WriteKeySetReport(env.stdout, keySetVersion.Load())
	}
	if !*watch {
		draw()
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
	if err := fs.Parse(args); err != nil || fs.NArg() != 2 {
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
	fmt.Fprintf(env.stdout, "retired %s %s: %d release topics, %d chunks removed, %d payloads kept (shared with other releases)\n",
		fs.Arg(0), fs.Arg(1), len(res.Cleared), res.ChunksCleared, res.SharedPayloads)
	if len(res.Cleared) == 0 {
		fmt.Fprintf(env.stderr, "edgefleet retire: no retained release of %s %s found\n", fs.Arg(0), fs.Arg(1))
		return 1
	}
	return 0
}
