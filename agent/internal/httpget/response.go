package httpget

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrMalformed: the response breaks HTTP/1.1's syntax or this client's
// bounds. The server (or something between) is broken or hostile.
var ErrMalformed = errors.New("malformed HTTP response")

// Response is a parsed status line and header.
type Response struct {
	// Proto is "HTTP/1.0" or "HTTP/1.1".
	Proto string
	// StatusCode is the 3-digit status, 100..599.
	StatusCode int
	// Status is the code and reason, as "404 Not Found".
	Status string
	// Header lists the fields in the order received.
	Header Header
	// ContentLength is the announced body length, or -1 when the body
	// is chunked or runs to the end of the connection.
	ContentLength int64
	// Chunked: the body has Transfer-Encoding: chunked.
	Chunked bool
	// Body streams the body (decoded from chunks); Close closes the
	// connection.
	Body io.ReadCloser

	body io.Reader // before Get wraps it
}

// Field is one header field.
type Field struct{ Name, Value string }

// Header is a response's fields, in order.
type Header []Field

// Get returns the value of the first field named name (any case), or "".
func (h Header) Get(name string) string {
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// Location is the Location field of a redirect, or "".
func (r *Response) Location() string { return r.Header.Get("Location") }

// IsRedirect: 301, 302, 303, 307 or 308.
func (r *Response) IsRedirect() bool {
	switch r.StatusCode {
	case 301, 302, 303, 307, 308:
		return true
	}
	return false
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrMalformed)
}

// lineReader reads CRLF-terminated lines from br within a byte budget.
type lineReader struct {
	br     *bufio.Reader
	budget int
	what   string // "headers" or "trailers", for errors
}

// line returns the next line without its CRLF.
func (lr *lineReader) line() (string, error) {
	b, err := lr.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", malformed("a line of the %s is longer than %d bytes", lr.what, lr.br.Size())
	}
	if len(b) > lr.budget {
		return "", malformed("the %s are longer than their bound", lr.what)
	}
	lr.budget -= len(b)
	if err != nil {
		if err == io.EOF {
			return "", fmt.Errorf("connection closed in the %s: %w", lr.what, io.ErrUnexpectedEOF)
		}
		return "", err
	}
	if len(b) < 2 || b[len(b)-2] != '\r' {
		return "", malformed("a line of the %s ends without CRLF", lr.what)
	}
	return string(b[:len(b)-2]), nil
}

// readResponse reads one response's status line and header from br and
// sets up its body (Response.body). 1xx responses other than 101 are
// skipped, within the same bounds.
func readResponse(br *bufio.Reader, maxHeaders, maxBytes int) (*Response, error) {
	lr := &lineReader{br: br, budget: maxBytes, what: "headers"}
	fields := 0
	for {
		r, err := readHead(lr, &fields, maxHeaders)
		if err != nil {
			return nil, err
		}
		if r.StatusCode == 101 {
			return nil, malformed("101 Switching Protocols to a GET that asked for no upgrade")
		}
		if r.StatusCode >= 200 {
			return r, framing(r, br, maxHeaders, maxBytes)
		}
	}
}

// readHead reads a status line and header fields up to the empty line.
func readHead(lr *lineReader, fields *int, maxHeaders int) (*Response, error) {
	line, err := lr.line()
	if err != nil {
		return nil, err
	}
	proto, rest, ok := strings.Cut(line, " ")
	if !ok || (proto != "HTTP/1.1" && proto != "HTTP/1.0") {
		return nil, malformed("status line %.40q is not HTTP/1.0 or HTTP/1.1", line)
	}
	code, reason, _ := strings.Cut(rest, " ")
	if len(code) != 3 || code[0] < '1' || code[0] > '5' || !digits(code) {
		return nil, malformed("status code %.10q is not 100..599", code)
	}
	for i := 0; i < len(reason); i++ {
		if c := reason[i]; c < ' ' && c != '\t' || c == 0x7f {
			return nil, malformed("the status reason has a control character")
		}
	}
	n, _ := strconv.Atoi(code)
	r := &Response{Proto: proto, StatusCode: n, Status: strings.TrimSpace(code + " " + reason), ContentLength: -1}
	r.Header, err = readFields(lr, fields, maxHeaders)
	return r, err
}

// readFields reads header (or trailer) fields up to the empty line.
func readFields(lr *lineReader, fields *int, maxHeaders int) (Header, error) {
	var h Header
	for {
		line, err := lr.line()
		if err != nil {
			return nil, err
		}
		if line == "" {
			return h, nil
		}
		if *fields++; *fields > maxHeaders {
			return nil, malformed("more than %d %s fields", maxHeaders, lr.what)
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, malformed("a folded %s line (obsolete, refused)", lr.what)
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || !token(name) {
			return nil, malformed("%s field %.40q has no name, or a name with a space or a separator", lr.what, line)
		}
		value = strings.Trim(value, " \t")
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
				return nil, malformed("%s field %s has a control character", lr.what, name)
			}
		}
		h = append(h, Field{name, value})
	}
}

// framing finds how r's body ends and sets r.body.
func framing(r *Response, br *bufio.Reader, maxHeaders, maxBytes int) error {
	var te, cl []string
	for _, f := range r.Header {
		switch {
		case strings.EqualFold(f.Name, "Transfer-Encoding"):
			te = append(te, f.Value)
		case strings.EqualFold(f.Name, "Content-Length"):
			cl = append(cl, f.Value)
		}
	}
	switch {
	case r.StatusCode == 204 || r.StatusCode == 304:
		r.body, r.ContentLength = strings.NewReader(""), 0
		return nil
	case len(te) > 0 && len(cl) > 0:
		return malformed("both Transfer-Encoding and Content-Length (a request smuggling sign)")
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") || r.Proto == "HTTP/1.0" {
			return malformed("Transfer-Encoding %.40q is not supported (only chunked, in HTTP/1.1)", strings.Join(te, ", "))
		}
		r.Chunked = true
		r.body = &chunked{br: br, maxHeaders: maxHeaders, maxBytes: maxBytes}
		return nil
	case len(cl) > 0:
		for _, v := range cl[1:] {
			if v != cl[0] {
				return malformed("Content-Length given twice, differently")
			}
		}
		n, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || !digits(cl[0]) {
			return malformed("Content-Length %.40q is not a number of bytes", cl[0])
		}
		r.ContentLength = n
		r.body = &exact{r: br, n: n}
		return nil
	}
	r.body = br // to the end of the connection
	return nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// token: RFC 9110 tchar only.
func token(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// exact reads n bytes; a connection that ends earlier is
// io.ErrUnexpectedEOF.
type exact struct {
	r io.Reader
	n int64
}

func (e *exact) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.n {
		p = p[:e.n]
	}
	n, err := e.r.Read(p)
	e.n -= int64(n)
	if err == io.EOF && e.n > 0 {
		err = io.ErrUnexpectedEOF
	}
	if e.n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

// chunked decodes Transfer-Encoding: chunked: hex size lines (with
// extensions, ignored) within 4 KiB, data, CRLF; a 0 chunk, trailers
// (read and dropped, bounded as headers), the empty line.
type chunked struct {
	br                   *bufio.Reader
	maxHeaders, maxBytes int
	left                 int64 // of the current chunk
	err                  error // sticky
}

func (c *chunked) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.left == 0 {
		if c.err = c.next(); c.err != nil {
			return 0, c.err
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		err = c.crlf()
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	c.err = err
	return n, err
}

// next reads a chunk-size line; at the last chunk it reads the trailers
// and returns io.EOF.
func (c *chunked) next() error {
	lr := &lineReader{br: c.br, budget: 4096, what: "chunk size line"}
	line, err := lr.line()
	if err != nil {
		return err
	}
	size, _, _ := strings.Cut(line, ";")
	size = strings.TrimRight(size, " \t")
	if size == "" || len(size) > 15 {
		return malformed("chunk size %.20q is empty or too large", size)
	}
	n, err := strconv.ParseInt(size, 16, 64)
	if err != nil || strings.ContainsAny(size, "+-xX_") {
		return malformed("chunk size %.20q is not hexadecimal", size)
	}
	if n > 0 {
		c.left = n
		return nil
	}
	fields := 0
	tr := &lineReader{br: c.br, budget: c.maxBytes, what: "trailers"}
	if _, err := readFields(tr, &fields, c.maxHeaders); err != nil {
		return err
	}
	return io.EOF
}

// crlf reads the CRLF after a chunk's data.
func (c *chunked) crlf() error {
	var b [2]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if b != [2]byte{'\r', '\n'} {
		return malformed("chunk data is not followed by CRLF")
	}
	return nil
}
