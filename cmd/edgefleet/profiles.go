package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/edgefleet/edgefleet/hardware"
)

func init() {
	register("profiles", command{summary: "list the built-in device profiles and known boards", run: runProfiles})
}

func runProfiles(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("profiles", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(env.stderr, "usage: edgefleet profiles [--json]")
		return 2
	}
	ps, bs := hardware.Profiles(), hardware.Boards()
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			Profiles []hardware.Profile `json:"profiles"`
			Boards   []hardware.Board   `json:"boards"`
		}{ps, bs}); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet profiles: %v\n", err)
			return 1
		}
		return 0
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROFILE\tTARGET\tQEMU CPU\tBUDGET\tUPX\tXZ DICT\tDESCRIPTION")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, hardware.TargetFor(p).String(), p.QEMUCPU, p.MaxBinarySize, yesNo(p.UPX), p.XZDictSize, p.Description)
	}
	tw.Flush()
	fmt.Fprintln(env.stdout)
	tw = tabwriter.NewWriter(env.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BOARD\tPROFILE\tOVERRIDES\tMODEL")
	for _, b := range bs {
		ov := ""
		if b.UPX != nil {
			ov += fmt.Sprintf("upx=%s ", yesNo(*b.UPX))
		}
		if b.MaxBinarySize != 0 {
			ov += fmt.Sprintf("budget=%s ", b.MaxBinarySize)
		}
		if b.QEMUCPU != "" {
			ov += "qemu_cpu=" + b.QEMUCPU
		}
		if ov == "" {
			ov = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Name, b.Profile, ov, b.Model)
	}
	tw.Flush()
	fmt.Fprintln(env.stdout, "\nA board name works wherever a profile name does (pack --profile rpi-zero).")
	return 0
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
