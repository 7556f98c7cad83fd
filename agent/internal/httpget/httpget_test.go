package httpget

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func readAll(t *testing.T, r *Response) string {
	t.Helper()
	defer r.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return string(b)
}

// TestGetAgainstNetHTTP: the request net/http's server sees, and every
// framing its server uses, read back byte for byte.
func TestGetAgainstNetHTTP(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 10000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		if strings.HasPrefix(path, "/echo/") {
			path = "/echo"
		}
		switch path {
		case "/echo":
			if r.Method != "GET" || r.Proto != "HTTP/1.1" || !r.Close || r.Header.Get("Accept-Encoding") != "" {
				http.Error(w, fmt.Sprintf("bad request: %s %s close=%v accept-encoding=%q", r.Method, r.Proto, r.Close, r.Header.Get("Accept-Encoding")), 400)
				return
			}
			fmt.Fprintf(w, "host=%s uri=%s ua=%s", r.Host, r.RequestURI, r.UserAgent())
		case "/length":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			io.WriteString(w, big)
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			for i := 0; i < len(big); i += 7000 {
				io.WriteString(w, big[i:min(i+7000, len(big))])
				w.(http.Flusher).Flush()
			}
			w.Header().Set("X-Sum", "yes")
		case "/redirect":
			http.Redirect(w, r, "/length?x=1", http.StatusFound)
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()

	r, err := Get(ctx, mustURL(t, srv.URL+"/echo/a%20b?q=1&r=2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	if got, want := readAll(t, r), "host="+host+" uri=/echo/a%20b?q=1&r=2 ua=edgefleet-agent"; r.StatusCode != 200 || got != want {
		t.Errorf("echo: %s %q, want 200 %q", r.Status, got, want)
	}

	r, err = Get(ctx, mustURL(t, srv.URL+"/length"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.ContentLength != int64(len(big)) || r.Chunked || readAll(t, r) != big {
		t.Errorf("length: content length %d chunked %v, or the body differs", r.ContentLength, r.Chunked)
	}

	r, err = Get(ctx, mustURL(t, srv.URL+"/chunked"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Chunked || r.ContentLength != -1 || readAll(t, r) != big {
		t.Errorf("chunked: chunked %v content length %d, or the body differs", r.Chunked, r.ContentLength)
	}

	r, err = Get(ctx, mustURL(t, srv.URL+"/redirect"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if !r.IsRedirect() || r.StatusCode != 302 || r.Location() != "/length?x=1" {
		t.Errorf("redirect: %s Location %q, want 302 to /length?x=1 (returned, not followed)", r.Status, r.Location())
	}

	r, err = Get(ctx, mustURL(t, srv.URL+"/nocontent"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode != 204 || readAll(t, r) != "" {
		t.Errorf("no content: %s", r.Status)
	}

	r, err = Get(ctx, mustURL(t, srv.URL+"/missing"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode != 404 || r.Status != "404 Not Found" || !strings.Contains(readAll(t, r), "not found") {
		t.Errorf("missing: %q", r.Status)
	}
}

// TestGetTLS: https with given roots works; the system roots refuse the
// test CA; ServerName is the URL's host.
func TestGetTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls %x sni=%s", r.TLS.Version, r.TLS.ServerName)
		if r.TLS.DidResume {
			io.WriteString(w, " resumed")
		}
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	// httptest's certificate is for example.com and 127.0.0.1.
	u := mustURL(t, srv.URL)
	r, err := Get(context.Background(), u, &Options{TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS10}})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, r); got != fmt.Sprintf("tls %x sni=", tls.VersionTLS13) {
		t.Errorf("got %q, want TLS 1.3 and no SNI for an IP address", got)
	}
	// A session cache in Options.TLS resumes the next connection's
	// session (the one-request-per-connection cost on a device).
	cached := &Options{TLS: &tls.Config{RootCAs: roots, ClientSessionCache: tls.NewLRUClientSessionCache(4)}}
	for i, want := range []string{"", " resumed"} {
		r, err := Get(context.Background(), u, cached)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, r); got != fmt.Sprintf("tls %x sni=%s", tls.VersionTLS13, want) {
			t.Errorf("connection %d with a session cache: %q, want %q at the end", i+1, got, want)
		}
	}
	_, err = Get(context.Background(), u, nil)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("with the system roots: %v, want an unknown authority", err)
	}
	// A host name must match the certificate.
	_, err = Get(context.Background(), mustURL(t, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)), &Options{TLS: &tls.Config{RootCAs: roots}})
	var host x509.HostnameError
	if !errors.As(err, &host) {
		t.Errorf("localhost against a certificate for example.com: %v, want a host name error", err)
	}
}

// TestGetCancel: a done context ends a read in progress at once, with
// its cause.
func TestGetCancel(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "12345")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	ctx, cancel := context.WithCancelCause(context.Background())
	r, err := Get(ctx, mustURL(t, srv.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	why := errors.New("the progress rule")
	time.AfterFunc(50*time.Millisecond, func() { cancel(why) })
	b, err := io.ReadAll(r.Body)
	if string(b) != "12345" || !errors.Is(err, why) || !errors.Is(err, context.Canceled) {
		t.Errorf("read %q, %v; want 12345 then the cause", b, err)
	}
	// A context done before Get: no connection.
	if _, err := Get(ctx, mustURL(t, srv.URL), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a done context: %v", err)
	}
}

// TestGetHeaderTimeout: a server that accepts and never answers.
func TestGetHeaderTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	_, err = Get(context.Background(), mustURL(t, "http://"+l.Addr().String()+"/"), &Options{HeaderTimeout: 100 * time.Millisecond})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "no response headers within") {
		t.Errorf("got %v, want a header timeout", err)
	}
}

// raw cases: a response as bytes, what the parser makes of it.
var rawCases = []struct {
	name, in string
	status   int    // 0: the head is refused
	body     string // when the body reads to its end
	bodyErr  error  // else the body's error
}{
	{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello", nil},
	{"to close", "HTTP/1.0 200 OK\r\n\r\nhello", 200, "hello", nil},
	{"empty reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, "", nil},
	{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\n1 \r\n!\r\n0\r\nX-T: 1\r\n\r\n", 200, "hello!", nil},
	{"1xx skipped", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", nil},
	{"same lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok", 200, "ok", nil},
	{"truncated length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", 200, "", io.ErrUnexpectedEOF},
	{"truncated chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nhello", 200, "", io.ErrUnexpectedEOF},
	{"no last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 200, "", io.ErrUnexpectedEOF},
	{"chunk without crlf", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 200, "", ErrMalformed},
	{"chunk size 0x", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 200, "", ErrMalformed},
	{"chunk size negative", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 200, "", ErrMalformed},
	{"chunk size huge", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 200, "", ErrMalformed},
	{"chunk line long", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + strings.Repeat("e", 5000) + "\r\nhello\r\n0\r\n\r\n", 200, "", ErrMalformed},
	{"trailers many", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + strings.Repeat("X: y\r\n", 65) + "\r\n", 200, "", ErrMalformed},
	{"HTTP/2", "HTTP/2 200 OK\r\n\r\n", 0, "", nil},
	{"status 99", "HTTP/1.1 099 Low\r\n\r\n", 0, "", nil},
	{"status 600", "HTTP/1.1 600 High\r\n\r\n", 0, "", nil},
	{"status letters", "HTTP/1.1 2x0 OK\r\n\r\n", 0, "", nil},
	{"101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", 0, "", nil},
	{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", 0, "", nil},
	{"folded", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 0, "", nil},
	{"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", 0, "", nil},
	{"no colon", "HTTP/1.1 200 OK\r\nContent-Length\r\n\r\n", 0, "", nil},
	{"control in value", "HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", 0, "", nil},
	{"TE and CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 0, "", nil},
	{"TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0, "", nil},
	{"TE twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 0, "", nil},
	{"TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, "", nil},
	{"CL differ", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 0, "", nil},
	{"CL plus", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", 0, "", nil},
	{"CL list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", 0, "", nil},
	{"CL overflow", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", 0, "", nil},
	{"65 headers", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: y\r\n", 65) + "\r\n", 0, "", nil},
	{"9 KiB headers", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: "+strings.Repeat("y", 2000)+"\r\n", 5) + "\r\n", 0, "", nil},
	{"long line", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("y", 5000) + "\r\n\r\n", 0, "", nil},
	{"1xx budget", strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 400) + "HTTP/1.1 200 OK\r\n\r\n", 0, "", nil},
	{"eof in head", "HTTP/1.1 200 OK\r\nX: y\r\n", 0, "", nil},
}

// TestReadResponseRaw: strict parsing of hand-made responses.
func TestReadResponseRaw(t *testing.T) {
	for _, tc := range rawCases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := readResponse(bufio.NewReaderSize(strings.NewReader(tc.in), 4096), 64, 8<<10)
			if tc.status == 0 {
				if err == nil {
					t.Fatalf("accepted as %s; want an error", r.Status)
				}
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("error %v is neither ErrMalformed nor io.ErrUnexpectedEOF", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if r.StatusCode != tc.status {
				t.Errorf("status %d, want %d", r.StatusCode, tc.status)
			}
			b, err := io.ReadAll(r.body)
			switch {
			case tc.bodyErr == nil && (err != nil || string(b) != tc.body):
				t.Errorf("body %q, %v; want %q", b, err, tc.body)
			case tc.bodyErr != nil && !errors.Is(err, tc.bodyErr):
				t.Errorf("body error %v, want %v", err, tc.bodyErr)
			}
		})
	}
}

// TestGetRawServer: a hostile response over a real connection ends in a
// clear error (not a hang, not a panic).
func TestGetRawServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				bufio.NewReader(c).ReadString('\n')
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello")
			}()
		}
	}()
	_, err = Get(context.Background(), mustURL(t, "http://"+l.Addr().String()+"/x"), nil)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "both Transfer-Encoding and Content-Length") {
		t.Errorf("got %v, want a malformed response naming both framings", err)
	}
}

// FuzzReadResponse: no input panics or exceeds the bounds; where
// net/http's parser also accepts the input with the same status, the
// bodies agree.
func FuzzReadResponse(f *testing.F) {
	for _, tc := range rawCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := readResponse(bufio.NewReaderSize(strings.NewReader(string(in)), 4096), 64, 8<<10)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("error %v is neither ErrMalformed nor io.ErrUnexpectedEOF", err)
			}
			return
		}
		if len(r.Header) > 64 || r.StatusCode < 200 || r.StatusCode > 599 || r.StatusCode == 101 {
			t.Fatalf("accepted %d headers, status %d", len(r.Header), r.StatusCode)
		}
		ours, ourErr := io.ReadAll(io.LimitReader(r.body, 1<<20))
		if len(ours) > len(in) {
			t.Fatalf("a %d-byte body from %d bytes of input", len(ours), len(in))
		}
		std, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(in))), nil)
		if err != nil || std.StatusCode != r.StatusCode {
			return
		}
		theirs, stdErr := io.ReadAll(io.LimitReader(std.Body, 1<<20))
		if ourErr == nil && stdErr == nil && string(ours) != string(theirs) {
			t.Fatalf("body %q, net/http reads %q", ours, theirs)
		}
	})
}
