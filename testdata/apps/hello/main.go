// Command hello is the sample app edgefleet packs in its tests. It is a real
// program with the modes the packer and the agent exercise:
//
//	hello --version   prints the version (set with -X main.version=...) and a newline
//	hello --serve     runs until SIGTERM/SIGINT, then exits 0
//	hello --health    exits 0 when healthy
//
// Failure switches, so agent tests can build or run broken releases:
//
//	HELLO_CRASH=1        --serve exits 3 right after it starts
//	HELLO_HEALTH_FAIL=1  --health exits 1
//	HELLO_HEALTH_FILE=p  --health exits 1 when the file p exists
//	HELLO_SLOW_FILE=p    --version waits while the file p exists (at most
//	                     a minute): a probe slower than its timeout
//
// The failure switches can also be baked in at build time with
// -X main.crash=1 or -X main.healthFail=1, for releases that are broken
// whatever the environment. -X main.hang=1 makes any other mode (e.g. an
// agent's "run --config ...") block until SIGTERM instead of printing the
// usage: a stand-in for an agent that hangs at start.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

var version = "dev"

// Build-time failure switches (see the package comment).
var (
	crash      = ""
	healthFail = ""
	hang       = ""
)

func main() {
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "--version", "-version", "version":
		if f := os.Getenv("HELLO_SLOW_FILE"); f != "" {
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if _, err := os.Stat(f); err != nil {
					break
				}
			}
		}
		fmt.Println(version)
	case "--serve", "serve":
		os.Exit(serve())
	case "--health", "health":
		os.Exit(health())
	default:
		if hang != "" {
			fmt.Fprintf(os.Stderr, "hello %s: hanging on purpose (-X main.hang) in %q\n", version, os.Args[1:])
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
			<-sig
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "usage: hello --version | --serve | --health (version %s)\n", version)
		os.Exit(2)
	}
}

func serve() int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Printf("hello %s serving (pid %d)\n", version, os.Getpid())
	if crash != "" || os.Getenv("HELLO_CRASH") == "1" {
		fmt.Fprintln(os.Stderr, "hello: crashing on purpose (HELLO_CRASH)")
		return 3
	}
	s := <-sig
	fmt.Printf("hello %s: %s, exiting\n", version, s)
	return 0
}

func health() int {
	if healthFail != "" || os.Getenv("HELLO_HEALTH_FAIL") == "1" {
		fmt.Fprintln(os.Stderr, "hello: unhealthy on purpose (HELLO_HEALTH_FAIL)")
		return 1
	}
	if f := os.Getenv("HELLO_HEALTH_FILE"); f != "" {
		if _, err := os.Stat(f); err == nil {
			fmt.Fprintf(os.Stderr, "hello: unhealthy: %s exists\n", f)
			return 1
		}
	}
	fmt.Println("ok")
	return 0
}
