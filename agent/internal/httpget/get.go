package httpget

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Options tunes Get. The zero value (or nil) uses the defaults.
type Options struct {
	// DialTimeout bounds the TCP connect. Default 10s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake. Default 10s.
	HandshakeTimeout time.Duration
	// HeaderTimeout bounds the wait for the response's headers after
	// the request is sent. Default 30s.
	HeaderTimeout time.Duration
	// MaxHeaders bounds the header fields of a response (and of its
	// trailers). Default 64.
	MaxHeaders int
	// MaxHeaderBytes bounds the status line and header fields
	// together, and separately the chunked trailers. Default 8 KiB.
	MaxHeaderBytes int
	// TLS is cloned for https; nil means the system roots. ServerName is
	// always the URL's host and MinVersion at least TLS 1.2.
	TLS *tls.Config
	// UserAgent is sent as User-Agent. Default "edgefleet-agent".
	UserAgent string
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.DialTimeout <= 0 {
		r.DialTimeout = 10 * time.Second
	}
	if r.HandshakeTimeout <= 0 {
		r.HandshakeTimeout = 10 * time.Second
	}
	if r.HeaderTimeout <= 0 {
		r.HeaderTimeout = 30 * time.Second
	}
	if r.MaxHeaders <= 0 {
		r.MaxHeaders = 64
	}
	if r.MaxHeaderBytes <= 0 {
		r.MaxHeaderBytes = 8 << 10
	}
	if r.UserAgent == "" {
		r.UserAgent = "edgefleet-agent"
	}
	return r
}

// Get sends one GET for u and returns the response with its body
// unread. The caller must close Body. Redirects are not followed.
func Get(ctx context.Context, u *url.URL, opt *Options) (*Response, error) {
	o := opt.withDefaults()
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("GET %s: scheme %q is not http or https", u.Redacted(), u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("GET %s: no host", u.Redacted())
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	target := u.EscapedPath()
	if target == "" {
		target = "/"
	}
	if u.RawQuery != "" {
		target += "?" + u.RawQuery
	}
	if strings.ContainsAny(target, " \r\n\t") || strings.ContainsAny(u.Host, " \r\n\t") || target[0] != '/' {
		return nil, fmt.Errorf("GET %s: the path or host has a space or a line break, or is not absolute", u.Redacted())
	}

	dctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", net.JoinHostPort(host, port))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u.Redacted(), ctxErr(ctx, err))
	}
	// From here on a done context closes the connection: every read or
	// write in progress returns.
	var once sync.Once
	closeConn := func() { once.Do(func() { conn.Close() }) }
	stop := context.AfterFunc(ctx, closeConn)
	fail := func(err error) (*Response, error) {
		stop()
		closeConn()
		return nil, fmt.Errorf("GET %s: %w", u.Redacted(), ctxErr(ctx, err))
	}
	if u.Scheme == "https" {
		cfg := &tls.Config{}
		if o.TLS != nil {
			cfg = o.TLS.Clone()
		}
		cfg.ServerName = host
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, o.HandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("TLS handshake: %w", err))
		}
		conn = tc
	}
	req := "GET " + target + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: " + o.UserAgent + "\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(fmt.Errorf("sending the request: %w", err))
	}
	conn.SetReadDeadline(time.Now().Add(o.HeaderTimeout))
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := readResponse(br, o.MaxHeaders, o.MaxHeaderBytes)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
			err = fmt.Errorf("no response headers within %s: %w", o.HeaderTimeout, err)
		}
		return fail(err)
	}
	conn.SetReadDeadline(time.Time{})
	resp.Body = &body{r: resp.body, ctx: ctx, close: func() { stop(); closeConn() }}
	return resp, nil
}

// ctxErr prefers the context's cause to the error of a connection it
// closed.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		return err
	}
	if cause := context.Cause(ctx); cause != ctx.Err() {
		return fmt.Errorf("%w (%w)", cause, ctx.Err())
	}
	return ctx.Err()
}

// body is a response body on its own connection.
type body struct {
	r     io.Reader
	ctx   context.Context
	close func()
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.ctx.Err() != nil {
		err = ctxErr(b.ctx, err)
	}
	return n, err
}

// Close closes the connection.
func (b *body) Close() error { b.close(); return nil }
