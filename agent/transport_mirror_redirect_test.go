package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestMirrorRedirectPolicy: httpMirror.get follows up to
// mirrorMaxRedirects redirects on the same host, or to https anywhere,
// and refuses more, other hosts over http, and https down to http.
func TestMirrorRedirectPolicy(t *testing.T) {
	// /hop/N redirects to /hop/N-1; /hop/0 answers; /to?u= redirects to u.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rest, ok := strings.CutPrefix(r.URL.Path, "/hop/"); ok {
			n, _ := strconv.Atoi(rest)
			if n == 0 {
				fmt.Fprintf(w, "arrived at %s", r.Host)
				return
			}
			http.Redirect(w, r, fmt.Sprintf("/hop/%d", n-1), http.StatusMovedPermanently)
			return
		}
		if r.URL.Path == "/to" {
			http.Redirect(w, r, r.URL.Query().Get("u"), http.StatusTemporaryRedirect)
			return
		}
		http.NotFound(w, r)
	})
	plain := httptest.NewServer(handler)
	defer plain.Close()
	secure := httptest.NewTLSServer(handler)
	defer secure.Close()
	roots := x509.NewCertPool()
	roots.AddCert(secure.Certificate())
	other := strings.Replace(plain.URL, "127.0.0.1", "localhost", 1)

	for _, tc := range []struct {
		name, url, want string // want: the body, or "refused: <part of the error>"
	}{
		{"no redirect", plain.URL + "/hop/0", "arrived at " + strings.TrimPrefix(plain.URL, "http://")},
		{"three on the same host", plain.URL + "/hop/3", "arrived at " + strings.TrimPrefix(plain.URL, "http://")},
		{"four", plain.URL + "/hop/4", "refused: more than 3 redirects"},
		{"other host over http", plain.URL + "/to?u=" + other + "/hop/0", "refused: only the same host or https"},
		{"to https elsewhere", plain.URL + "/to?u=" + secure.URL + "/hop/1", "arrived at " + strings.TrimPrefix(secure.URL, "https://")},
		{"https down to http", secure.URL + "/to?u=" + plain.URL + "/hop/0", "refused: from https down to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newHTTPMirror(plain.URL, nil)
			m.opt.TLS = &tls.Config{RootCAs: roots}
			resp, err := m.get(context.Background(), tc.url)
			if want, ok := strings.CutPrefix(tc.want, "refused: "); ok {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("followed to %s, want refused", resp.Status)
				}
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != tc.want {
				t.Errorf("got %s %q, want 200 %q", resp.Status, b, tc.want)
			}
		})
	}
}
