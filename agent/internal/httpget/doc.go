// Package httpget is the device agent's minimal HTTP/1.1 client: one GET
// per connection, for fetching release chunks from untrusted mirrors
// without linking net/http's client (http.Transport, HTTP/2, cookies,
// compression: about half a megabyte of the linux-armv6 agent).
//
// What it does: dials with a context (and a dial timeout), speaks TLS
// with the system roots (ServerName from the URL, TLS 1.2 at least),
// sends "GET <path> HTTP/1.1" with Host, User-Agent and "Connection:
// close", and parses the response strictly: a status line of HTTP/1.0 or
// HTTP/1.1, at most MaxHeaders header fields in at most MaxHeaderBytes
// bytes (each line within the 4 KiB read buffer), no obsolete line
// folding, CRLF line ends, a Content-Length of
// digits only (duplicates must agree), Transfer-Encoding "chunked" only
// (with bounded chunk-size lines and trailers), never both. Without
// either the body runs to the end of the connection. 1xx interim
// responses (other than 101) are skipped within the same header budget.
//
// What it does not do: redirects (a 3xx is returned with its Location for
// the caller to judge), proxies (HTTPS_PROXY and HTTP_PROXY are ignored),
// keep-alive, HTTP/2, compression (no Accept-Encoding is sent), request
// bodies, methods other than GET, cookies, authentication.
//
// Memory: the headers are bounded by MaxHeaderBytes and one 4 KiB read
// buffer; the body is streamed, and the caller bounds how much of it it
// reads. A body that ends before its Content-Length or its last chunk
// yields io.ErrUnexpectedEOF. When the context is done the connection is
// closed, so every read returns at once with the context's cause.
package httpget
