package main

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDaemon listens on the device's control socket (a real unix socket)
// and answers every request line with reply, verbatim, then closes the
// connection.
func fakeDaemon(t *testing.T, sock string, reply *string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte(*reply))
			c.Close()
		}
	}()
}

// Issue 7 item 12: `sideload` panicked (nil pointer) on a malformed reply
// from whatever listens on the control socket. Every command now treats
// the reply as untrusted: garbage, partial lines, wrong types, missing or
// unknown fields all give exit 1 and a sentence saying the reply is
// malformed, never a panic (exit 2 with a goroutine dump).
func TestMalformedDaemonReplies(t *testing.T) {
	d := newDevice(t, deviceOpts{})
	bundle := d.bundle("hello", "1.0.0", 1, helloBin(t, "1.0.0", ""))
	reply := ""
	fakeDaemon(t, filepath.Join(d.data, "agent.sock"), &reply)

	okResult := `{"app":"hello","version":"1.0.0","sequence":1,"path":"/x"}`
	for _, tc := range []struct {
		name  string
		cmd   []string
		reply string
		want  string // in the error, besides "malformed"
	}{
		{"progress without progress", []string{"sideload"}, `{"type":"progress"}` + "\n", `without its progress`},
		{"ok without a result", []string{"sideload"}, `{"type":"result","ok":true,"trial":"committed"}` + "\n", "no install result"},
		{"ok with a null result", []string{"sideload"}, `{"type":"result","ok":true,"result":null,"trial":"committed"}` + "\n", "no install result"},
		{"not JSON", []string{"sideload"}, "HTTP/1.1 400 Bad Request\r\n\r\n", "not the JSON object"},
		{"wrong type", []string{"sideload"}, `{"type":"result","ok":"yes"}` + "\n", "not the JSON object"},
		{"wrong nested type", []string{"sideload"}, `{"type":"progress","progress":{"app":"hello","step":"stage","done":"lots"}}` + "\n", "not the JSON object"},
		{"unknown field", []string{"sideload"}, `{"type":"result","ok":true,"result":` + okResult + `,"trial":"committed","root":true}` + "\n", "unknown field"},
		{"two objects", []string{"sideload"}, `{"type":"result","ok":true,"result":` + okResult + `,"trial":"committed"}{"type":"x"}` + "\n", "data after"},
		{"partial line", []string{"sideload"}, `{"type":"progress","progress":{"app":"hello","step":"verify"}}` + "\n" + `{"type":"result","ok":tr`, "not the JSON object"},
		{"negative progress", []string{"sideload"}, `{"type":"progress","progress":{"app":"hello","step":"stage","done":-1,"total":10}}` + "\n", "progress -1 of 10"},
		{"unknown line type", []string{"sideload"}, `{"type":"shell","message":"rm -rf /"}` + "\n", `type "shell"`},
		{"event without event", []string{"sideload"}, `{"type":"event","app":"hello"}` + "\n", "without its event"},
		{"failure without reason", []string{"sideload"}, `{"type":"result","code":"refused"}` + "\n", "does not say why"},
		{"null", []string{"sideload"}, "null\n", "type \"\""},
		{"check without manifest", []string{"check"}, `{"type":"result","ok":true}` + "\n", "no manifest"},
		{"status without status", []string{"status"}, `{"type":"result","ok":true}` + "\n", "no status"},
		{"rollback without message", []string{"rollback"}, `{"type":"result","ok":true}` + "\n", "no message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reply = tc.reply
			args := append(append([]string{}, tc.cmd...), "--config", d.cfgPath)
			switch tc.cmd[0] {
			case "sideload", "check":
				args = append(args, bundle)
			case "rollback":
				args = append(args, "hello")
			}
			so, se, code := d.run(args...)
			out := so + se
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") || code == 2 {
				t.Fatalf("edgefleet-agent %s crashed on the reply %q: exit %d\n%s", tc.cmd[0], tc.reply, code, out)
			}
			if code != 1 {
				t.Fatalf("edgefleet-agent %s: exit %d on the reply %q, want 1\n%s", tc.cmd[0], code, tc.reply, out)
			}
			for _, w := range []string{"reply is malformed", tc.want, "control socket"} {
				if !strings.Contains(se, w) {
					t.Errorf("stderr does not say %q:\n%s", w, out)
				}
			}
			if strings.Contains(so, "installed hello") {
				t.Fatalf("reported an install from a malformed reply:\n%s", so)
			}
		})
	}
}
