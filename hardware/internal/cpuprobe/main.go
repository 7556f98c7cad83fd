// Command cpuprobe prints what hardware.ReadCPU sees, as JSON. The hardware
// tests cross-build it and run it under qemu-user with real CPU models, so
// the facts come from an emulated auxiliary vector and CPUID.
//
//	cpuprobe            CPU facts
//	cpuprobe -facts DIR all device facts, with storage for DIR
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/edgefleet/edgefleet/hardware"
)

func main() {
	facts := flag.String("facts", "", "print all device facts, with storage for this path")
	flag.Parse()
	var v any
	var err error
	if *facts != "" {
		var f hardware.Facts
		f, err = hardware.ReadFacts(*facts)
		v = struct {
			hardware.Facts
			Summary string `json:"summary"`
		}{f, f.Summary()}
	} else {
		v, err = hardware.ReadCPU()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpuprobe:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "cpuprobe:", err)
		os.Exit(1)
	}
}
