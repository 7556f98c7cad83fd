// Command testagent is a minimal device agent for the agent package's
// tests: it drives agent.Open and one pipeline call per run, so the tests
// can SIGKILL a real process at a failpoint (EDGEFLEET_FAILPOINT) or at a
// random moment, cross-build it for ARM and run it under qemu-user, and
// measure its memory. It is not shipped; edgefleet-agent is the real CLI.
//
//	testagent -config agent.yaml install BUNDLE
//	testagent -config agent.yaml check BUNDLE
//	testagent -config agent.yaml recover
//	testagent -config agent.yaml commit APP
//	testagent -config agent.yaml rollback APP REASON
//	testagent -config agent.yaml status
//
// With TESTAGENT_REPORT_HWM=1 it prints its VmHWM (peak RSS) on stderr.
//
// Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 usage.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/edgefleet/edgefleet/agent"
)

func main() {
	config := flag.String("config", agent.DefaultConfigPath, "agent configuration file")
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: testagent -config FILE install|check|recover|commit|rollback|status ...")
		os.Exit(2)
	}
	cfg, err := agent.LoadConfig(*config)
	if err != nil {
		fail(err)
	}
	a, err := agent.Open(cfg, agent.Options{})
	if err != nil {
		fail(err)
	}
	defer a.Close()
	ctx := context.Background()
	switch {
	case args[0] == "install" && len(args) == 2:
		f, err := os.Open(args[1])
		if err != nil {
			fail(err)
		}
		res, err := a.Install(ctx, f, nil)
		if err != nil {
			fail(err)
		}
		fmt.Printf("installed %s %s (sequence %d), previous %q\n", res.App, res.Version, res.Sequence, res.Previous)
	case args[0] == "check" && len(args) == 2:
		f, err := os.Open(args[1])
		if err != nil {
			fail(err)
		}
		m, err := a.Check(ctx, f)
		if err != nil {
			fail(err)
		}
		fmt.Printf("ok %s\n", m)
	case args[0] == "recover" && len(args) == 1:
		acts, err := a.Recover(ctx)
		for _, act := range acts {
			fmt.Printf("%s: %s: %s\n", act.App, act.Action, act.Detail)
		}
		if err != nil {
			fail(err)
		}
	case args[0] == "commit" && len(args) == 2:
		if err := a.Commit(args[1]); err != nil {
			fail(err)
		}
	case args[0] == "rollback" && len(args) == 3:
		if err := a.Rollback(args[1], args[2]); err != nil {
			fail(err)
		}
	case args[0] == "status" && len(args) == 1:
		st, err := a.Status()
		if err != nil {
			fail(err)
		}
		json.NewEncoder(os.Stdout).Encode(st)
	default:
		fmt.Fprintln(os.Stderr, "testagent: unknown command or wrong arguments")
		os.Exit(2)
	}
	if os.Getenv("TESTAGENT_REPORT_HWM") != "" {
		// Peak resident memory of this process (the parent's rusage would
		// also count the pre-exec image of the fork).
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmHWM:") {
				fmt.Fprintln(os.Stderr, l)
			}
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "testagent:", err)
	os.Exit(1)
}
