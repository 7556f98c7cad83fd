package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/protocol"
)

// cmdKeySet sideloads a key set chain message (protocol/SPEC.md §8.12):
// through the running daemon when it answers, else directly.
func cmdKeySet(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := flags(e, "keyset", "KEYSET.msg")
	cfg, code := parseConfig(e, fs, cfgPath, args, 1)
	if cfg == nil {
		return code
	}
	path, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(e.stderr, "edgefleet-agent keyset: %v\n", err)
		return 1
	}
	if c := dial(ctx, cfg); c != nil {
		defer c.Close()
		return daemonDo(ctx, e, c, "keyset", agent.Request{Op: agent.OpKeySet, Bundle: path})
	}
	a, ok := openDirect(e, cfg)
	if !ok {
		return 1
	}
	defer a.Close()
	b, err := agent.ReadKeySetFile(path)
	if err != nil {
		fmt.Fprintf(e.stdout, "refused: %v\n", err)
		return 1
	}
	from := a.Trust().KeySet
	v, err := a.AcceptKeySet(b)
	if err != nil && !errors.Is(err, protocol.ErrRollback) {
		fmt.Fprintf(e.stdout, "refused: %v\n", err)
		return 1
	}
	fmt.Fprintln(e.stdout, agent.KeySetMessage(from, v, err))
	return 0
}

// printKeySetNote prints what became of a bundle's key set, if anything.
func printKeySetNote(w io.Writer, note string) {
	if note != "" {
		fmt.Fprintf(w, "key set: %s\n", note)
	}
}

// printTrust prints the key set held and a clock behind the time floor.
func printTrust(w io.Writer, ti *agent.TrustInfo) {
	if ti == nil {
		return
	}
	if ti.KeySet > 0 {
		fmt.Fprintf(w, "key set version %d, expires %s\n", ti.KeySet, ti.Expires.UTC().Format(time.RFC3339))
	}
	if ti.Error != "" {
		fmt.Fprintf(w, "warning: %s\n", ti.Error)
	}
	if ti.ClockBehind {
		fmt.Fprintf(w, "the clock is behind the newest signed time verified (%s); expiry is judged at that time: set the clock (NTP)\n", ti.TimeFloor.UTC().Format(time.RFC3339))
	}
}
