package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"golang.org/x/term"
)

// brokerFlags are the connection flags shared by the fleet commands.
type brokerFlags struct {
	url, username, password, ca, cert, key string
	urlSet                                 bool // --broker was given (the default is replaced, then added to)
}

func (b *brokerFlags) register(fs *flag.FlagSet) {
	b.url = "tcp://127.0.0.1:1883"
	fs.Var(brokerURLs{b}, "broker", "broker URL (tcp://host:port or ssl://host:port); several, comma-separated or the flag repeated, are tried in order and the first that answers is used")
	fs.StringVar(&b.username, "username", "", "broker user name")
	fs.StringVar(&b.password, "password", "", "broker password (default $EDGEFLEET_BROKER_PASSWORD)")
	fs.StringVar(&b.ca, "ca", "", "CA certificate (PEM) that signed the broker's certificate")
	fs.StringVar(&b.cert, "cert", "", "client certificate (PEM)")
	fs.StringVar(&b.key, "key", "", "client certificate key (PEM)")
}

func (b *brokerFlags) connect(ctx context.Context, env *cliEnv) (paho.Client, error) {
	return fleet.Connect(ctx, b.options(env))
}

// options are the flags as fleet.ClientOptions.
func (b *brokerFlags) options(env *cliEnv) fleet.ClientOptions {
	pass := b.password
	if pass == "" && env.getenv != nil {
		pass = env.getenv("EDGEFLEET_BROKER_PASSWORD")
	}
	return fleet.ClientOptions{Broker: b.url, Username: b.username, Password: pass, CA: b.ca, Cert: b.cert, Key: b.key}
}

// publish publishes one bundle, moving to the next --broker when the one
// in use fails under it (fleet.PublishFailover); *c follows the move.
func (b *brokerFlags) publish(ctx context.Context, env *cliEnv, cmd string, c *paho.Client, path string, o fleet.PublishOptions) (*fleet.PublishResult, error) {
	return fleet.PublishFailover(ctx, c, b.options(env), path, o, func(from string, why error) {
		fmt.Fprintf(env.stderr, "\nedgefleet %s: broker %s failed while publishing %s (%v); publishing again through the next broker\n", cmd, from, path, why)
	})
}

// brokerURLs is the --broker flag: the first use replaces the default,
// each further use adds URLs (kept comma-separated, as
// fleet.ClientOptions.Broker takes them).
type brokerURLs struct{ b *brokerFlags }

func (f brokerURLs) String() string {
	if f.b == nil {
		return ""
	}
	return f.b.url
}

func (f brokerURLs) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("empty broker URL; want tcp://host:port or ssl://host:port")
	}
	if !f.b.urlSet {
		f.b.url, f.b.urlSet = v, true
		return nil
	}
	f.b.url += "," + v
	return nil
}

// progressBar draws "[#####.....]  45% label 1.2 MiB/2.6 MiB" on one line.
func progressBar(w io.Writer, label string, done, total int64) {
	const width = 30
	n := 0
	pct := int64(100)
	if total > 0 {
		n = int(done * width / total)
		pct = done * 100 / total
	}
	fmt.Fprintf(w, "\r[%s%s] %3d%% %s %s/%s", strings.Repeat("#", n), strings.Repeat(".", width-n), pct, label, humanBytes(done), humanBytes(total))
}

func humanBytes(n int64) string { return fleet.HumanBytes(n) }

// isTerminal reports whether w is a terminal (not a pipe, file or log),
// and TERM is not "dumb".
func isTerminal(env *cliEnv, w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) && (env.getenv == nil || env.getenv("TERM") != "dumb")
}

// useColor reports whether to colour output to w: a terminal, and
// NO_COLOR (https://no-color.org) unset or empty.
func useColor(env *cliEnv, w io.Writer) bool {
	return isTerminal(env, w) && (env.getenv == nil || env.getenv("NO_COLOR") == "")
}

// progress returns the progress callback for a transfer and a func to
// call when it ends: a redrawn bar on a terminal; plain lines (every 25%)
// for logs and pipes, where a bar's carriage returns would be noise.
func progress(env *cliEnv, w io.Writer, label string) (func(done, total int64), func()) {
	if isTerminal(env, w) {
		return func(done, total int64) { progressBar(w, label, done, total) }, func() { fmt.Fprintln(w) }
	}
	last := int64(-1)
	return func(done, total int64) {
		if total <= 0 {
			return
		}
		q := done * 4 / total
		if q == last {
			return
		}
		last = q
		fmt.Fprintf(w, "%s: %d%% %s/%s\n", label, q*25, humanBytes(done), humanBytes(total))
	}, func() {}
}
