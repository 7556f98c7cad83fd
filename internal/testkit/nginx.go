package testkit

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// NginxPath is the nginx executable (PATH, then /usr/sbin); when there is
// none it skips t loudly, saying what did not run.
func NginxPath(t testing.TB, what string) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("SKIPPED: nginx is not installed (scripts/test.sh installs it: apt-get install nginx-light or nginx); %s did not run", what)
		}
	}
	return bin
}

// StartNginx runs nginx (see NginxPath) in the foreground, one process,
// serving the directory root as static files on a free loopback port, and
// returns its base URL ("http://127.0.0.1:port") once it accepts
// connections. It is stopped when the test ends; its error log is logged
// when the test failed. AccessLog is the path of its access log.
func StartNginx(t testing.TB, bin, root string) (baseURL, accessLog string) {
	t.Helper()
	return startNginx(t, bin, root, nil)
}

// StartNginxTLS is StartNginx serving https with the server certificate
// cert (a CA's Server pair); the base URL is "https://127.0.0.1:port".
func StartNginxTLS(t testing.TB, bin, root string, cert Pair) (baseURL, accessLog string) {
	t.Helper()
	return startNginx(t, bin, root, &cert)
}

func startNginx(t testing.TB, bin, root string, cert *Pair) (baseURL, accessLog string) {
	t.Helper()
	dir := t.TempDir()
	listen, scheme := "", "http"
	if cert != nil {
		listen = fmt.Sprintf(" ssl;\n\t\tssl_certificate %s;\n\t\tssl_certificate_key %s", cert.Cert, cert.Key)
		scheme = "https"
	}
	port := FreePort(t)
	accessLog = filepath.Join(dir, "access.log")
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 256; }
http {
	access_log %[2]s;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	default_type application/octet-stream;
	server {
		listen 127.0.0.1:%[3]d%[5]s;
		root %[4]s;
		location / { try_files $uri =404; }
	}
}
`, dir, accessLog, port, root, listen)
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &Buffer{}
	cmd := exec.Command(bin, "-p", dir, "-c", cf, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", log.String(), b)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return scheme + "://" + addr, accessLog
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not listen on %s: %s\n%s", addr, log.String(), b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
