// Command edgefleet-sim runs many simulated devices in one process against
// a broker: each is an MQTT client with its own client id that finds its
// channel's release, fetches and verifies every chunk as the agent does,
// installs nothing, and publishes a status. It reports devices done per
// minute, p50/p99 times and failures.
//
// It is a separate program, not an `edgefleet` subcommand: it is a load
// tool for the people who run the broker, not something an operator runs
// against a fleet, and its own CPU and memory must be told apart from the
// broker's (`edgefleet broker`) when both run on one machine.
//
// Usage: edgefleet-sim --broker tcp://127.0.0.1:1883 --pub release.pub --channel stable --app hello -n 1000
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/internal/devsim"
	"github.com/edgefleet/edgefleet/protocol"
)

func main() {
	os.Exit(run())
}

func run() int {
	var o devsim.Options
	fs := flag.NewFlagSet("edgefleet-sim", flag.ContinueOnError)
	fs.StringVar(&o.Broker, "broker", "tcp://127.0.0.1:1883", "broker URL")
	fs.StringVar(&o.Username, "user", "", "user name for every device (optional)")
	pass := fs.String("password-env", "", "environment variable holding the password")
	pub := fs.String("pub", "", "public key (minisign) that signs releases (required)")
	fs.StringVar(&o.Channel, "channel", "stable", "release channel")
	fs.StringVar(&o.App, "app", "", "app (required)")
	fs.StringVar(&o.Profile, "profile", "", "profile, when the channel holds several")
	fs.IntVar(&o.Devices, "n", 100, "simulated devices")
	fs.StringVar(&o.IDPrefix, "id-prefix", "sim-", "device id prefix (id = prefix + index)")
	fs.IntVar(&o.Window, "window", 8, "chunk subscriptions outstanding per device (the agent's is 8)")
	fs.IntVar(&o.Connecting, "connecting", 200, "connections being set up at once")
	fs.DurationVar(&o.Stall, "stall", 20*time.Second, "ask again for outstanding chunks after this long without one")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "end the run after this long")
	quiet := fs.Bool("q", false, "no progress lines")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *pub == "" || o.App == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: edgefleet-sim --pub KEY --app APP [--broker URL] [--channel C] [-n N]")
		return 2
	}
	if *pass != "" {
		o.Password = os.Getenv(*pass)
	}
	kr, err := protocol.LoadKeyring(*pub)
	if err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-sim: %v\n", err)
		return 1
	}
	o.Keyring = kr
	// Every device is a socket: raise the soft open-file limit to the
	// hard one and say when it is what stops the run.
	soft, hard, err := fleet.RaiseFileLimit()
	if err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-sim: %v\n", err)
	}
	if soft > 0 && uint64(o.Devices)+64 > soft {
		fmt.Fprintf(os.Stderr, "edgefleet-sim: %d devices need about %d file descriptors, but the open-file limit is %d (hard %d): devices past it will fail to connect; raise the hard limit (ulimit -Hn, LimitNOFILE=)\n", o.Devices, o.Devices+64, soft, hard)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	if !*quiet {
		go func() {
			t := time.NewTicker(5 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					fmt.Fprintf(os.Stderr, "edgefleet-sim: %s: %d of %d devices done\n", time.Since(start).Round(time.Second), devsim.DoneSoFar(), o.Devices)
				}
			}
		}()
	}
	r, err := devsim.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-sim: %v\n", err)
		return 1
	}
	fmt.Printf("devices=%d done=%d failed=%d elapsed_s=%.2f per_minute=%.0f p50_s=%.2f p99_s=%.2f max_s=%.2f bad_chunks=%d sim_peak_rss_mib=%d\n",
		r.Devices, r.Done, r.Failed, r.Elapsed.Seconds(), r.PerMinute, r.P50.Seconds(), r.P99.Seconds(), r.Max.Seconds(), r.BadChunks, peakRSS()>>20)
	var reasons []string
	for e, n := range r.Errors {
		reasons = append(reasons, fmt.Sprintf("%6d  %s", n, e))
	}
	sort.Sort(sort.Reverse(sort.StringSlice(reasons)))
	for _, s := range reasons[:min(len(reasons), 10)] {
		fmt.Printf("failed: %s\n", strings.TrimSpace(s))
	}
	if r.Failed > 0 {
		return 1
	}
	return 0
}

// peakRSS is this process's peak resident set (VmHWM), in bytes; 0 where
// /proc is missing.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb << 10
		}
	}
	return 0
}
