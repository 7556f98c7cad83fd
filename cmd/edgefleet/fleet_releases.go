package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("releases", command{summary: "show what the broker holds: channel releases, rollouts, device assignments", run: runReleases})
}

func runReleases(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("releases", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	var pubs stringsFlag
	fs.Var(&pubs, "pub", "trusted minisign public key file; repeat for several (optional: then every signature is checked)")
	asJSON := fs.Bool("json", false, "print JSON (releases, candidates, assignments, rollouts, malformed)")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet releases --broker URL [--pub KEY] [--json]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil || fs.NArg() != 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	var kr *protocol.Keyring
	if len(pubs) > 0 {
		var err error
		if kr, err = protocol.LoadKeyring(pubs...); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet releases: %v\n", err)
			return 1
		}
	}
	c, err := bf.connect(ctx, env)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet releases: %v\n", err)
		return 1
	}
	defer c.Disconnect(250)
	cat, err := fleet.LoadCatalog(ctx, c, kr)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet releases: %v\n", err)
		return 1
	}
	if *asJSON {
		if err := cat.WriteJSON(env.stdout); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet releases: %v\n", err)
			return 1
		}
		return 0
	}
	cat.WriteTable(env.stdout)
	return 0
}
