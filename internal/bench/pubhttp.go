package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxPublishReply bounds how much of a publish reply's body is read: a
// reply is a small JSON object (nchan: a few lines of channel info).
const maxPublishReply = 1 << 20

// httpPublisher sends publishes as HTTP/1.1 requests, one at a time, on a
// keep-alive connection of its own. It does without net/http's Transport,
// whose connection goroutines and per-request channel handoffs made the
// bench client spend about as much CPU per publish as the broker it
// measures, on the same machine. Replies are read with http.ReadResponse.
// A connection the broker closes (or one that failed) is redialled on the
// next publish; a publish that failed is reported, never sent again.
type httpPublisher struct {
	ctx      context.Context // the run: cancelling it ends a publish under way
	addr     string          // host:port to dial
	tls      *tls.Config     // https; nil for http
	head     []byte          // request line and headers, up to the Content-Length value
	conn     net.Conn
	br       *bufio.Reader
	stopConn func() bool // undoes the context.AfterFunc that closes conn
	buf      []byte
	pre, suf []byte // around the data in the body (centrifugo: a JSON object)
}

// newPublisher is the HTTP publisher of c's flavor.
func (c *Config) newPublisher(ctx context.Context) (*httpPublisher, error) {
	if c.Flavor != "centrifugo" {
		return newHTTPPublisher(ctx, c.Server, c.Channel)
	}
	p, err := newHTTPPublisherPath(ctx, c.Server, "/api/publish", "application/json")
	if err != nil {
		return nil, err
	}
	// The bench's payloads are JSON-safe: a JSON string as they are.
	ch, _ := json.Marshal(c.Channel)
	p.pre = fmt.Appendf(nil, `{"channel":%s,"data":"`, ch)
	p.suf = []byte(`"}`)
	return p, nil
}

// newHTTPPublisher prepares a publisher of POST /pub/CHANNEL at server
// (a base URL, http or https, possibly with a path prefix) for the run
// ctx.
func newHTTPPublisher(ctx context.Context, server, channel string) (*httpPublisher, error) {
	return newHTTPPublisherPath(ctx, server, "/pub/"+channel, "text/plain")
}

// newHTTPPublisherPath prepares a publisher of POST path, with bodies of
// type ctype.
func newHTTPPublisherPath(ctx context.Context, server, path, ctype string) (*httpPublisher, error) {
	base, err := url.Parse(server)
	if err != nil {
		return nil, err
	}
	if base.Host == "" {
		return nil, fmt.Errorf("publish URL %q has no host", server)
	}
	u := *base
	u.Path, u.RawPath = strings.TrimSuffix(base.Path, "/")+path, ""
	p := &httpPublisher{ctx: ctx, addr: u.Host}
	switch u.Scheme {
	case "http":
		if u.Port() == "" {
			p.addr = net.JoinHostPort(u.Hostname(), "80")
		}
	case "https":
		if u.Port() == "" {
			p.addr = net.JoinHostPort(u.Hostname(), "443")
		}
		p.tls = &tls.Config{ServerName: u.Hostname()}
	default:
		return nil, fmt.Errorf("publish URL %q: want http or https", server)
	}
	p.head = fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: pushctl-bench\r\nContent-Type: %s\r\n", u.EscapedPath(), u.Host, ctype)
	if u.User != nil { // as net/http's client does with a URL's user and password
		pass, _ := u.User.Password()
		cred := base64.StdEncoding.EncodeToString([]byte(u.User.Username() + ":" + pass))
		p.head = fmt.Appendf(p.head, "Authorization: Basic %s\r\n", cred)
	}
	p.head = append(p.head, "Content-Length: "...)
	return p, nil
}

// publish sends data and waits for the reply; a status of 300 or more is
// an error.
func (p *httpPublisher) publish(data []byte) error {
	if p.conn == nil {
		if err := p.dial(); err != nil {
			return err
		}
	}
	p.buf = append(p.buf[:0], p.head...)
	p.buf = strconv.AppendInt(p.buf, int64(len(p.pre)+len(data)+len(p.suf)), 10)
	p.buf = append(p.buf, "\r\n\r\n"...)
	p.buf = append(p.buf, p.pre...)
	p.buf = append(p.buf, data...)
	p.buf = append(p.buf, p.suf...)
	if _, err := p.conn.Write(p.buf); err != nil {
		return p.fail(err)
	}
	resp, err := http.ReadResponse(p.br, nil)
	if err != nil {
		return p.fail(err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxPublishReply+1))
	resp.Body.Close()
	if err == nil && n > maxPublishReply {
		err = fmt.Errorf("reply body longer than %d bytes", maxPublishReply)
	}
	if err != nil {
		return p.fail(err)
	}
	if resp.Close {
		p.close()
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("publish: HTTP %d", resp.StatusCode)
	}
	return nil
}

func (p *httpPublisher) dial() error {
	ctx := p.ctx
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return err
	}
	if p.tls != nil {
		tc := tls.Client(conn, p.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return err
		}
		conn = tc
	}
	p.conn = conn
	p.stopConn = context.AfterFunc(ctx, func() { conn.Close() })
	if p.br == nil {
		p.br = bufio.NewReaderSize(conn, 4096)
	} else {
		p.br.Reset(conn)
	}
	return nil
}

// fail closes the connection after err; when the run was cancelled, the
// cancellation is the error.
func (p *httpPublisher) fail(err error) error {
	p.close()
	if err := p.ctx.Err(); err != nil {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("publish: connection closed before the reply: %w", err)
	}
	return fmt.Errorf("publish: %w", err)
}

func (p *httpPublisher) close() {
	if p.conn == nil {
		return
	}
	p.stopConn()
	p.conn.Close()
	p.conn = nil
}
