package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/edgefleet/edgefleet/fleet"
	"github.com/edgefleet/edgefleet/fleet/dashboard"
	"github.com/edgefleet/edgefleet/protocol"
)

func init() {
	register("dashboard", command{summary: "serve a live fleet dashboard to a browser (devices, rollouts, versions over time)", run: runDashboard})
}

func runDashboard(ctx context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var bf brokerFlags
	bf.register(fs)
	var o dashboard.Options
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "HTTP address; anything but loopback needs --tls-cert, --tls-key and --users")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "serve HTTPS with this certificate (PEM)")
	fs.StringVar(&o.TLSKey, "tls-key", "", "key of --tls-cert (PEM)")
	usersPath := fs.String("users", "", "users file (as the broker's, see 'edgefleet passwd'): operators log in with their name and password")
	fs.BoolVar(&o.ReadOnly, "read-only", false, "viewers only: no pause, resume or abort buttons, and the server refuses them")
	var pubs, hosts stringsFlag
	fs.Var(&pubs, "pub", "trusted minisign public key file: the releases page checks every signature; repeat for several")
	fs.Var(&hosts, "allow-host", "a host name the dashboard is reached by besides its listen address (behind a proxy); repeat for several")
	fs.IntVar(&o.MaxClients, "max-pages", 64, "pages connected at once")
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet dashboard --broker URL [--listen 127.0.0.1:8080] [--read-only] [--tls-cert F --tls-key F --users F]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil || fs.NArg() != 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	o.AllowedHosts = hosts
	if *usersPath != "" {
		users, err := fleet.LoadUsers(*usersPath)
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet dashboard: %v\n", err)
			return 1
		}
		o.Users = users
	}
	if len(pubs) > 0 {
		kr, err := protocol.LoadKeyring(pubs...)
		if err != nil {
			fmt.Fprintf(env.stderr, "edgefleet dashboard: %v\n", err)
			return 1
		}
		o.Keyring = kr
	}
	pass := bf.password
	if pass == "" && env.getenv != nil {
		pass = env.getenv("EDGEFLEET_BROKER_PASSWORD")
	}
	copts := fleet.ClientOptions{Broker: bf.url, Username: bf.username, Password: pass, CA: bf.ca, Cert: bf.cert, Key: bf.key}
	return serveDashboard(ctx, env, o, copts)
}

// serveDashboard runs a dashboard on the broker copts connects to, until
// ctx ends, reconnecting when the broker goes away (`edgefleet dashboard`,
// and `edgefleet broker --dashboard`).
func serveDashboard(ctx context.Context, env *cliEnv, o dashboard.Options, copts fleet.ClientOptions) int {
	if !o.ReadOnly {
		// The CLI's own path: a connection of its own per action (an
		// action's read-back subscribes and unsubscribes the rollout
		// filter, which must not touch the dashboard's subscription).
		o.Act = func(ctx context.Context, verb, ref, user string) (*protocol.Rollout, error) {
			c, err := fleet.Connect(ctx, copts)
			if err != nil {
				return nil, err
			}
			defer c.Disconnect(250)
			return rolloutCommandBy(ctx, c, verb, ref, user+" (dashboard)")
		}
	}
	logf := func(f string, a ...any) { fmt.Fprintf(env.stderr, "edgefleet dashboard: "+f+"\n", a...) }
	o.Logf = logf
	srv, err := dashboard.New(o)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet dashboard: %v\n", err)
		return 2
	}
	feed := &dashboardFeed{srv: srv, logf: logf}
	c, lost, err := feed.connect(ctx, copts)
	if err != nil {
		fmt.Fprintf(env.stderr, "edgefleet dashboard: %v\n", err)
		return 1
	}
	errc := make(chan error, 1)
	go func() {
		errc <- srv.Run(ctx, func(url string) {
			mode := "operators may pause, resume and abort rollouts"
			if o.ReadOnly {
				mode = "read-only"
			}
			logf("serving the fleet of %s on %s (%s)", copts.Broker, url, mode)
			fmt.Fprintln(env.stdout, url)
		})
	}()
	backoff := time.Second
	for {
		select {
		case err := <-errc:
			c.Disconnect(250)
			if err != nil {
				fmt.Fprintf(env.stderr, "edgefleet dashboard: %v\n", err)
				return 1
			}
			return 0
		case err := <-lost:
			srv.SetConnection(copts.Broker, false, err)
			logf("lost the broker connection (%v); reconnecting", err)
			for {
				select {
				case <-ctx.Done():
					<-errc
					return 0
				case <-time.After(backoff):
				}
				if c, lost, err = feed.connect(ctx, copts); err == nil {
					logf("reconnected to the broker")
					backoff = time.Second
					break
				}
				srv.SetConnection(copts.Broker, false, err)
				backoff = min(2*backoff, 30*time.Second)
			}
		}
	}
}

// dashboardFeed connects to the broker and feeds the dashboard.
type dashboardFeed struct {
	srv     *dashboard.Server
	logf    func(string, ...any)
	dropped int
}

// connect opens a connection and subscribes to dashboard.Filters (the
// retained messages are delivered again: Resync forgets what was cleared
// meanwhile); lost receives once when the connection drops.
func (f *dashboardFeed) connect(ctx context.Context, o fleet.ClientOptions) (paho.Client, <-chan error, error) {
	lost := make(chan error, 1)
	o.OnConnectionLost = func(err error) {
		if err == nil {
			err = errors.New("connection closed")
		}
		select {
		case lost <- err:
		default:
		}
	}
	c, err := fleet.Connect(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	err = f.srv.Resync(func() error {
		return fleet.Subscribe(ctx, c, dashboard.Filters, func(topic string, payload []byte) {
			if err := f.srv.Update(topic, payload); err != nil {
				// A hostile device could flood the log: the first few,
				// then every hundredth (the page lists them all).
				if f.dropped++; f.dropped <= 10 || f.dropped%100 == 0 {
					f.logf("%s (%d dropped so far)", protocol.CleanText(err.Error()), f.dropped)
				}
			}
		})
	})
	if err != nil {
		c.Disconnect(250)
		return nil, nil, err
	}
	f.srv.SetConnection(o.Broker, true, nil)
	return c, lost, nil
}
