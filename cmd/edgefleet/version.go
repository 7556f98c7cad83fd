package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"

	"github.com/edgefleet/edgefleet/internal/buildversion"
)

// version is set at release time: -ldflags "-X main.version=1.2.0".
// Unset, `edgefleet version` shows the module version Go recorded.
var version = "dev"

func init() {
	register("version", command{summary: "print this program's version, module, VCS revision and Go version", run: runVersion})
}

func runVersion(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		return usageError(fs, "takes no arguments")
	}
	i := buildversion.Read(version)
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		enc.Encode(i)
		return 0
	}
	fmt.Fprint(env.stdout, "edgefleet ", i)
	return 0
}
