package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/edgefleet/edgefleet/internal/cliflag"
)

// parseFlags is the one way every edgefleet command parses its command
// line: flags may come before or after the arguments (`pack ./cmd/x --key
// k`), "--" ends them, and -h shows the command's flags followed by an
// example (commandExamples).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if collectFlags != nil {
		// `edgefleet completion`: the command's flags are all it wanted.
		collectFlags(fs)
		return flag.ErrHelp
	}
	usage := fs.Usage
	fs.Usage = func() {
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(fs.Output(), "usage: edgefleet %s [flags]\n", fs.Name())
			fs.PrintDefaults()
		}
		if ex := commandExamples[fs.Name()]; ex != "" {
			fmt.Fprintf(fs.Output(), "\nExample:\n  %s\n", strings.ReplaceAll(ex, "\n", "\n  "))
		}
	}
	return cliflag.Parse(fs, args)
}

// usageError says what was wrong with the command line, then shows the
// command's usage; it returns the usage exit code.
func usageError(fs *flag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(fs.Output(), "edgefleet %s: "+format+"\n\n", append([]any{fs.Name()}, a...)...)
	fs.Usage()
	return 2
}

// missingFlags names every required flag of fs still unset, for a message
// like "missing --pub (required)"; "" when all are set.
func missingFlags(fs *flag.FlagSet, names ...string) string {
	if err := cliflag.Missing(fs, names...); err != nil {
		return err.Error()
	}
	return ""
}

// commandExamples is what `edgefleet CMD -h` ends with, per flag set name.
var commandExamples = map[string]string{
	"pack":           "edgefleet pack ./cmd/sensor --key keys/release.key --version 1.4.0 --sequence 12 --profile linux-armv6 --profile rpi-4 -o dist\nedgefleet pack --version v1.4.0        # with edgefleet.yaml (docs/pack-config.md)",
	"verify":         "edgefleet verify dist/*.efb --pub keys/release.pub",
	"inspect":        "edgefleet inspect dist/sensor_1.4.0_rpi-4.efb --pub keys/release.pub",
	"keygen":         "edgefleet keygen -o keys          # keys/release.key (passphrase asked) and keys/release.pub",
	"profiles":       "edgefleet profiles --json | jq '.boards[].name'",
	"broker":         "edgefleet broker --data /var/lib/edgefleet --listen :8883 --tls-cert b.crt --tls-key b.key --users users.yaml",
	"passwd":         "edgefleet passwd --role operator --add users.yaml alice   # the password from $EDGEFLEET_BROKER_PASSWORD or stdin\nedgefleet passwd pi-0042 < pw.txt > users.yaml           # a whole users file (docs/broker-files.md)",
	"publish":        "edgefleet publish dist/sensor_1.4.0_*.efb --broker ssl://fleet.example:8883 --ca ca.crt --username alice --pub keys/release.pub --channel stable",
	"assign":         "edgefleet assign dist/sensor_1.4.1_rpi-4.efb --device pi-0042 --broker tcp://127.0.0.1:1883 --pub keys/release.pub\nedgefleet assign --device pi-0042 --clear sensor",
	"releases":       "edgefleet releases --broker tcp://127.0.0.1:1883",
	"status":         "edgefleet status -o wide\nedgefleet status pi-0042           # one device: whole errors, history, last output",
	"retire":         "edgefleet retire sensor 1.3.0 --broker tcp://127.0.0.1:1883",
	"demo":           "edgefleet demo --devices 5",
	"version":        "edgefleet version",
	"completion":     "edgefleet completion bash > /etc/bash_completion.d/edgefleet",
	"dashboard":      "edgefleet dashboard --broker ssl://fleet.example:8883 --ca ca.crt --username alice   # then open http://127.0.0.1:8080\nedgefleet dashboard --listen :8443 --tls-cert d.crt --tls-key d.key --users users.yaml --read-only",
	"logs":           "edgefleet logs pi-017 sensor --follow --broker ssl://fleet.example:8883 --ca ca.crt --username alice",
	"root init":      "edgefleet root init -o /media/offline/root1      # on an offline machine; root.key stays there, root.pub goes to the devices",
	"keyset new":     "edgefleet keyset new -o ks1.json --version 1 --root root1/root.pub --release keys/release.pub:apps=sensor --expires 8760h",
	"keyset sign":    "edgefleet keyset sign --key /media/offline/root1/root.key ks1.json",
	"keyset chain":   "edgefleet keyset chain -o keyset.msg ks1.json",
	"keyset verify":  "edgefleet keyset verify --root root1/root.pub keyset.msg",
	"keyset publish": "edgefleet keyset publish --broker ssl://fleet.example:8883 --ca ca.crt --username alice --root root1/root.pub keyset.msg",
	"rollout start":  "edgefleet rollout start dist/sensor_1.4.0_*.efb --pub keys/release.pub --waves 1,10%,100% --bake 10m",
	"rollout status": "edgefleet rollout status stable/sensor --watch",
	"rollout pause":  "edgefleet rollout pause stable/sensor",
	"rollout resume": "edgefleet rollout resume stable/sensor",
	"rollout abort":  "edgefleet rollout abort stable/sensor",
	"rollout drive":  "edgefleet rollout drive --broker tcp://127.0.0.1:1883",
}
