package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/fleet/dashboard"
	"github.com/edgefleet/edgefleet/hardware"
)

func init() {
	register("broker", command{summary: "run the embedded MQTT broker (retained releases persist under --data)", run: runBroker})
	register("passwd", command{summary: "print a users-file entry with a bcrypt password hash for the broker", run: runPasswd})
}

func runBroker(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var o fleet.BrokerOptions
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:1883", "TCP address to listen on")
	fs.StringVar(&o.DataDir, "data", "", "directory for the broker's store (required)")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "TLS certificate (PEM)")
	fs.StringVar(&o.TLSKey, "tls-key", "", "TLS key (PEM)")
	fs.StringVar(&o.ClientCA, "client-ca", "", "CA (PEM) for client certificates; the CN is the device id")
	fs.StringVar(&o.Users, "users", "", "users file (YAML, docs/broker-files.md; make entries with edgefleet passwd --add)")
	fs.StringVar(&o.ACL, "acl", "", "ACL file (YAML, docs/broker-files.md; default: the rules of SPEC.md §8.6)")
	maxPacket := fs.String("max-packet", "", "largest MQTT packet accepted (default 1MiB+64KiB; must exceed the chunk size)")
	fs.DurationVar(&o.SessionExpiry, "session-expiry", 7*24*time.Hour, "how long a disconnected session is kept")
	fs.DurationVar(&o.ConnectTimeout, "connect-timeout", fleet.DefaultConnectTimeout, "close a new connection that has not completed its TLS handshake and CONNECT within this time")
	fs.IntVar(&o.MaxConcurrentLogins, "max-logins", 0, "password checks (bcrypt) run at once; more wait up to --connect-timeout (default: half the CPUs, at least 1)")
	driver := fs.Bool("rollout-driver", true, "drive staged rollouts inside the broker (false when `edgefleet rollout drive` runs elsewhere)")
	dash := fs.String("dashboard", "", "also serve the fleet dashboard on this loopback `ADDR` (e.g. 127.0.0.1:8080; 'edgefleet dashboard' for HTTPS, logins, read-only)")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet broker --data DIR [--listen ADDR] [--tls-cert F --tls-key F [--client-ca F]] [--users F] [--acl F]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil || fs.NArg() != 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	if *dash != "" {
		do := dashboard.Options{Listen: *dash}
		if err := do.Validate(); err != nil {
			fmt.Fprintf(env.stderr, "edgefleet broker: --dashboard %s: the dashboard inside the broker serves loopback only (%v); to serve a network run 'edgefleet dashboard --tls-cert F --tls-key F --users F' next to the broker\n", *dash, err)
			return 2
		}
	}
	if *maxPacket != "" {
		s, err := hardware.ParseSize(*maxPacket)
		if err != nil || s <= 0 || s > 1<<28 {
			fmt.Fprintf(env.stderr, "edgefleet broker: --max-packet %q: want a size like 2MiB\n", *maxPacket)
			return 2
		}
		o.MaxPacketSize = uint32(s)
	}
	o.Logf = func(format string, a ...any) { fmt.Fprintf(env.stderr, format+"\n", a...) }
	// One file descriptor per client: raise the soft limit to the hard
	// one and say what it is, so the ceiling on devices is known.
	if soft, hard, err := fleet.RaiseFileLimit(); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet broker: %v; serving at most about %d clients\n", err, max(int(soft)-15, 0))
	} else if soft > 0 {
		fmt.Fprintf(env.stderr, "edgefleet broker: open-file limit %d (hard %d): room for about %d clients; raise the hard limit (ulimit -Hn, LimitNOFILE=) for more\n", soft, hard, max(int(soft)-15, 0))
	}
	b, err := fleet.StartBroker(o)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet broker: %v\n", err)
		return 1
	}
	if b.Open() {
		fmt.Fprintf(env.stderr, "edgefleet broker: listening on %s WITHOUT authentication (loopback only); use --users or --client-ca to serve devices on a network\n", b.URL())
	} else {
		fmt.Fprintf(env.stderr, "edgefleet broker: listening on %s\n", b.URL())
	}
	fmt.Fprintf(env.stdout, "%s\n", b.URL())
	driverDone := make(chan struct{})
	dctx, stopDriver := context.WithCancel(ctx)
	if *driver {
		go func() {
			defer close(driverDone)
			err := fleet.RunDriver(dctx, fleet.DriverOptions{Client: b.InternalClient(), StaleBefore: b.Started(), Logf: o.Logf})
			if err != nil && dctx.Err() == nil {
				fmt.Fprintf(env.stderr, "edgefleet broker: the rollout driver stopped: %v\n", err)
			}
		}()
	} else {
		close(driverDone)
	}
	dashDone := make(chan struct{})
	if *dash != "" {
		go func() {
			defer close(dashDone)
			denv := *env
			denv.stdout = io.Discard // the broker's stdout is its URL; the dashboard's is on stderr
			if serveDashboard(dctx, &denv, dashboard.Options{Listen: *dash}, b.InternalClient()) != 0 && dctx.Err() == nil {
				fmt.Fprintln(env.stderr, "edgefleet broker: the dashboard stopped")
			}
		}()
	} else {
		close(dashDone)
	}
	<-ctx.Done()
	stopDriver()
	<-driverDone
	<-dashDone
	b.Close()
	fmt.Fprintln(env.stderr, "edgefleet broker: stopped")
	return 0
}

func runPasswd(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	role := fs.String("role", "device", "operator or device")
	add := fs.String("add", "", "add the user to this users file (created if missing) instead of printing a users file")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet passwd [--role operator|device] [--add USERS.yaml] NAME   (password from $EDGEFLEET_BROKER_PASSWORD or one line on stdin)")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil || fs.NArg() != 1 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	if *role != fleet.RoleOperator && *role != fleet.RoleDevice {
		fmt.Fprintf(env.stderr, "edgefleet passwd: role %q, want operator or device\n", *role)
		return 2
	}
	pass := env.getenv("EDGEFLEET_BROKER_PASSWORD")
	if pass == "" {
		line, _ := bufio.NewReader(env.stdin).ReadString('\n')
		pass = strings.TrimRight(line, "\r\n")
	}
	h, err := fleet.HashPassword(pass)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet passwd: %v\n", err)
		return 1
	}
	entry := fmt.Sprintf("  - name: %s\n    password_hash: %q\n    role: %s\n", fs.Arg(0), h, *role)
	if *add == "" {
		// A whole users file, valid on its own (docs/broker-files.md).
		fmt.Fprint(env.stdout, "users:\n"+entry)
		return 0
	}
	if err := addUser(*add, fs.Arg(0), entry); err != nil {
		fmt.Fprintf(env.stderr, "edgefleet passwd: %v\n", err)
		return 1
	}
	fmt.Fprintf(env.stdout, "added %s (%s) to %s; restart the broker to load it\n", fs.Arg(0), *role, *add)
	return 0
}

// addUser appends entry (one users-file list item for name) to the users
// file at path, creating it, after checking the result loads and name was
// not there already. The file is replaced atomically.
func addUser(path, name, entry string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	text := string(old)
	if strings.TrimSpace(text) == "" {
		text = "users:\n"
	} else if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	if len(old) > 0 {
		users, err := fleet.LoadUsers(path)
		if err != nil {
			return fmt.Errorf("%v; fix it first: nothing was changed", err)
		}
		if _, dup := users[name]; dup {
			return fmt.Errorf("%s already has a user %s: remove its entry first to change the password; nothing was changed", path, name)
		}
	}
	text += entry
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	if _, err := fleet.LoadUsers(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("the users file would not load after adding %s (%v); nothing was changed", name, err)
	}
	return os.Rename(tmp, path)
}
