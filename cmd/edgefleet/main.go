// Command edgefleet is the operator's tool: it packs Go programs into
// signed bundles per device profile, and (fleet commands) runs the broker,
// publishes releases and shows where every device stands.
//
// Exit codes: 0 success, 1 a check failed or a command could not complete,
// 2 usage error.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand. Files in this package add theirs with register
// from an init function, so each capability keeps its CLI next to it.
type command struct {
	// summary is the one line shown by `edgefleet help`.
	summary string
	// run executes the command; it returns the exit code.
	run func(ctx context.Context, env *cliEnv, args []string) int
}

// cliEnv is what a command may touch, so tests can run commands in process.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

var commands = map[string]command{}

func register(name string, c command) {
	if _, dup := commands[name]; dup {
		panic("edgefleet: command registered twice: " + name)
	}
	commands[name] = c
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &cliEnv{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 0 || len(args) == 1 && args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(env.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" {
		args = []string{"version"}
	}
	if len(args) == 2 && args[0] == "help" {
		// `edgefleet help pack` is `edgefleet pack -h`.
		args = []string{args[1], "-h"}
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "edgefleet: unknown command %q\n\n", args[0])
		usage(env.stderr)
		return 2
	}
	return c.run(ctx, env, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: edgefleet <command> [flags]")
	fmt.Fprintln(w)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'edgefleet <command> -h' or 'edgefleet help <command>' for a command's flags and an example.")
}
