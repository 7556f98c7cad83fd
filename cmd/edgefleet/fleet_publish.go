package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("publish", command{summary: "verify bundles and publish them to a channel over MQTT (retained)", run: func(ctx context.Context, env *cliEnv, args []string) int {
		return runPublish(ctx, env, "publish", args)
	}})
	register("assign", command{summary: "publish a bundle for one device (wins over its channel; --clear APP undoes)", run: func(ctx context.Context, env *cliEnv, args []string) int {
		return runPublish(ctx, env, "assign", args)
	}})
}

func runPublish(ctx context.Context, env *cliEnv, name string, args []string) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	var pubs stringsFlag
	fs.Var(&pubs, "pub", "trusted minisign public key file; repeat for several (required: bundles are verified before publishing)")
	inFlight := fs.Int("in-flight", 16, "unacknowledged chunk publishes at most")
	quiet := fs.Bool("quiet", false, "no progress bar")
	var channel, device, clear string
	if name == "publish" {
		fs.StringVar(&channel, "channel", "stable", "release channel")
		fs.Usage = func() {
			fmt.Fprintln(env.stderr, "usage: edgefleet publish --broker URL --pub KEY [--channel stable] BUNDLE...")
			fs.PrintDefaults()
		}
	} else {
		fs.StringVar(&device, "device", "", "device id (required)")
		fs.StringVar(&clear, "clear", "", "remove the device's assignment for this app instead (it follows its channel again)")
		fs.Usage = func() {
			fmt.Fprintln(env.stderr, "usage: edgefleet assign --broker URL --device ID --pub KEY BUNDLE...\n       edgefleet assign --broker URL --device ID --clear APP")
			fs.PrintDefaults()
		}
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if name == "assign" && device == "" {
		fs.Usage()
		return 2
	}
	if clear == "" && (fs.NArg() == 0 || len(pubs) == 0) {
		fs.Usage()
		return 2
	}
	if clear != "" && fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet %s: %v\n", name, err)
		return 1
	}
	defer c.Disconnect(250)
	if clear != "" {
		if err := fleet.Unassign(ctx, c, device, clear); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet assign: %v\n", err)
			return 1
		}
		fmt.Fprintf(env.stdout, "cleared the assignment of %s on %s; it follows its channel again\n", clear, device)
		return 0
	}
	kr, err := protocol.LoadKeyring(pubs...)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet %s: %v\n", name, err)
		return 1
	}
	// Verify every bundle before anything is published, so a bad one in a
	// batch does not leave half a release on the broker.
	for _, path := range fs.Args() {
		if _, err := fleet.VerifyBundleFile(path, kr, time.Now()); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet %s: not publishing anything: %v\n", name, err)
			return 1
		}
	}
	for _, path := range fs.Args() {
		opts := fleet.PublishOptions{Keyring: kr, Channel: channel, Device: device, InFlight: *inFlight}
		if !*quiet {
			opts.Progress = func(done, total int64) { progressBar(env.stderr, path, done, total) }
		}
		res, err := fleet.PublishBundle(ctx, c, path, opts)
		if !*quiet {
			fmt.Fprintln(env.stderr)
		}
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet %s: %v\n", name, err)
			return 1
		}
		where := "channel " + channel
		if device != "" {
			where = "device " + device
		}
		fmt.Fprintf(env.stdout, "published %s %s (sequence %d, %s) to %s: %d chunks, %s\n",
			res.Manifest.App, res.Manifest.Version, res.Manifest.Sequence, res.Manifest.Profile, where, res.Chunks, humanBytes(res.Bytes))
	}
	return 0
}
