// Package client is the Go client of a pushctl broker, used by the CLI.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/wire"
)

// DefaultServer is the broker URL when none is given.
const DefaultServer = "http://127.0.0.1:7070"

// Client talks to a broker, or to the first reachable of several nodes
// sharing channels (a comma-separated --server list): when one is down or
// shutting down it moves to the next.
type Client struct {
	bases  []*url.URL
	cur    atomic.Int32 // index of the node in use
	http   *http.Client
	token  atomic.Pointer[string]
	tlsCfg *tls.Config
	// connectTimeout bounds dialling (TCP, TLS) one node.
	connectTimeout time.Duration
}

// Options configure a client beyond the server URL.
type Options struct {
	// Token is sent as Authorization: Bearer on every request.
	Token string
	// CAFile holds PEM certificates to trust for https/wss, besides the
	// system's.
	CAFile string
	// ConnectTimeout bounds establishing one connection (TCP and TLS) to a
	// node; 0 means DefaultConnectTimeout. A node that does not answer
	// within it is unreachable (ErrUnreachable).
	ConnectTimeout time.Duration
}

// DefaultConnectTimeout is how long a connection to a node may take to
// establish before the node counts as unreachable.
const DefaultConnectTimeout = 5 * time.Second

// New returns a client for server: a URL (http, https, ws, wss) or a
// host:port.
func New(server string) (*Client, error) { return NewWithOptions(server, Options{}) }

// TLSConfig returns the TLS settings for CAFile (nil when empty).
func TLSConfig(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// NewWithOptions returns a client with a token and trusted CAs. server
// may list several nodes, separated by commas.
func NewWithOptions(server string, o Options) (*Client, error) {
	if server == "" {
		server = DefaultServer
	}
	var bases []*url.URL
	for _, one := range strings.Split(server, ",") {
		u, err := parseServer(strings.TrimSpace(one))
		if err != nil {
			return nil, err
		}
		bases = append(bases, u)
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	tr.DialContext = (&net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = o.ConnectTimeout
	tlsCfg, err := TLSConfig(o.CAFile)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		tr.TLSClientConfig = tlsCfg
	}
	c := &Client{bases: bases, http: &http.Client{Transport: tr}, tlsCfg: tlsCfg, connectTimeout: o.ConnectTimeout}
	c.SetToken(o.Token)
	return c, nil
}

// SetToken replaces the token sent from the next request on (a refreshed
// one, say); requests under way keep theirs.
func (c *Client) SetToken(token string) { c.token.Store(&token) }

func (c *Client) bearer() string {
	if t := c.token.Load(); t != nil {
		return *t
	}
	return ""
}

// parseServer checks one broker URL.
func parseServer(server string) (*url.URL, error) {
	if server == "" {
		return nil, errors.New("server: empty URL in the list")
	}
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	u, err := url.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("server %q: %w", server, err)
	}
	switch u.Scheme {
	case "http", "https":
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	default:
		return nil, fmt.Errorf("server %q: scheme must be http, https, ws or wss", server)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("server %q: no host", server)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// base is the node in use.
func (c *Client) base() *url.URL { return c.bases[c.cur.Load()] }

// failover moves to the node after i, unless another caller already moved.
func (c *Client) failover(i int32) {
	c.cur.CompareAndSwap(i, (i+1)%int32(len(c.bases)))
}

// movable reports whether err means this node cannot take the request
// and nothing was done: it is unreachable, shutting down or without its
// storage.
func movable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status == http.StatusServiceUnavailable && (ae.Code == "shutting_down" || ae.Code == "broker_unavailable")
	}
	return errors.Is(err, ErrUnreachable)
}

// header returns the headers every request carries.
func (c *Client) header() http.Header {
	h := http.Header{}
	if t := c.bearer(); t != "" {
		h.Set("Authorization", "Bearer "+t)
	}
	return h
}

// URL returns the broker's base URL.
func (c *Client) URL() string { return c.base().String() }

func (c *Client) url(path string, q url.Values) string {
	u := *c.base()
	u.Path += path
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// APIError is an error reply from the broker (wire.Error, said the way a
// person reads it).
type APIError wire.Error

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("broker replied %d %s", e.Status, e.Code)
	}
	return e.Message + " (" + e.Code + ")"
}

// ErrUnreachable is what every UnreachableError is (errors.Is): the
// broker did not answer at all.
var ErrUnreachable = errors.New("cannot reach the broker")

// UnreachableError says that a node did not answer: nothing listens there,
// the name does not resolve, or the connection did not establish within
// the connect timeout.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach %s (%s)", e.URL, Reason(e.Err))
}

// Unwrap returns the underlying network error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Is makes every UnreachableError match ErrUnreachable.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// Reason says in a few words why a connection failed: "connection
// refused", "no answer within 5s", "no such host", or the error itself.
func Reason(err error) string {
	var dnsErr *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to host"
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return "no such host"
	case errors.As(err, &ne) && ne.Timeout():
		return "no answer in time"
	}
	return err.Error()
}

func unreachable(base *url.URL, err error) error {
	return &UnreachableError{URL: base.String(), Err: err}
}

// do sends req (built with c.url) to the node in use; when that node is
// unreachable or refuses with 503 shutting_down or broker_unavailable, it
// tries the next ones, each once.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	if t := c.bearer(); t != "" {
		req.Header.Set("Authorization", "Bearer "+t)
	}
	i := c.cur.Load()
	var down []string // nodes that did not answer
	for tries := 1; ; tries++ {
		resp, err := c.doOnce(req, c.bases[i])
		var ue *UnreachableError
		if errors.As(err, &ue) {
			down = append(down, ue.URL)
			if len(down) > 1 && len(down) == tries {
				// None answered: name them all.
				err = &UnreachableError{URL: strings.Join(down, ", "), Err: ue.Err}
			}
		}
		if err == nil || !movable(err) || tries >= len(c.bases) || req.Context().Err() != nil {
			return resp, err
		}
		if req.Body != nil && req.GetBody == nil {
			return resp, err // the body cannot be sent again
		}
		c.failover(i)
		next := c.cur.Load()
		nreq := req.Clone(req.Context())
		u := *c.bases[next]
		u.Path += strings.TrimPrefix(req.URL.Path, c.bases[i].Path)
		u.RawQuery = req.URL.RawQuery
		nreq.URL, nreq.Host = &u, ""
		if req.GetBody != nil {
			if nreq.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		req, i = nreq, next
	}
}

func (c *Client) doOnce(req *http.Request, base *url.URL) (*http.Response, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		var ne net.Error
		if errors.As(err, &ne) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "connection") {
			return nil, unreachable(base, err)
		}
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readAPIError(resp)
	}
	return resp, nil
}

func readAPIError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var reply wire.ErrorReply
	if json.Unmarshal(body, &reply) == nil && reply.Error != nil {
		reply.Error.Status = resp.StatusCode
		return (*APIError)(reply.Error)
	}
	return &APIError{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: strings.TrimSpace(string(body))}
}

// Ack acknowledges a published message.
type Ack = wire.PublishAck

// PublishOptions describe one HTTP publish.
type PublishOptions struct {
	Event       string
	ContentType string
	// WaitSubscribers makes the broker wait for that many subscribers
	// (up to WaitTimeout) before publishing.
	WaitSubscribers int
	WaitTimeout     time.Duration
	// Key is the publish's idempotency key: the broker stores a key
	// once per channel within its window (two minutes), so a publish
	// sent again after its outcome was lost is not stored twice. When
	// empty and the client names several nodes (so that a publish whose
	// node went away mid-request is sent to the next), a random key is
	// used.
	Key string
}

// Publish sends one message over HTTP.
func (c *Client) Publish(ctx context.Context, channel string, data []byte, o PublishOptions) (*Ack, error) {
	q := url.Values{}
	if o.Event != "" {
		q.Set("event", o.Event)
	}
	if o.WaitSubscribers > 0 {
		q.Set("wait_subscribers", strconv.Itoa(o.WaitSubscribers))
		if o.WaitTimeout > 0 {
			q.Set("timeout", o.WaitTimeout.String())
		}
	}
	req, err := http.NewRequestWithContext(ctx, "POST", c.url("/pub/"+channel, q), bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	if o.ContentType != "" {
		req.Header.Set("Content-Type", o.ContentType)
	}
	if o.Key == "" && len(c.bases) > 1 {
		o.Key = NewKey()
	}
	if o.Key != "" {
		req.Header.Set("Idempotency-Key", o.Key)
	}
	resp, err := c.do(req)
	// A keyed publish whose outcome the broker could not learn (its Redis
	// did not answer in time) is sent again with the same key: the broker
	// stores a key once, so this either finds the first copy (the ack
	// says duplicate) or stores it now. The tries stay well inside the
	// key's window.
	for wait := 500 * time.Millisecond; err != nil && o.Key != "" && outcomeUnknown(err) && wait <= unknownRetries; wait *= 2 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		r := req.Clone(ctx)
		r.Body = io.NopCloser(bytes.NewReader(data))
		resp, err = c.do(r)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ack Ack
	if err := json.NewDecoder(resp.Body).Decode(&ack); err != nil {
		return nil, fmt.Errorf("reading ack: %w", err)
	}
	return &ack, nil
}

// unknownRetries is the longest pause before the last try of a keyed
// publish whose outcome was unknown (tries after 0.5, 1 and 2 s).
const unknownRetries = 2 * time.Second

func outcomeUnknown(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == wire.CodeOutcomeUnknown
}

// NewKey returns a random idempotency key.
func NewKey() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// WaitSubscribers waits until channel has n subscribers.
func (c *Client) WaitSubscribers(ctx context.Context, channel string, n int, timeout time.Duration) error {
	q := url.Values{"wait_subscribers": {strconv.Itoa(n)}}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	_, err := c.Channel(ctx, channel, q)
	return err
}

// call sends a request and decodes the JSON reply into v (if not nil).
func (c *Client) call(ctx context.Context, method, path string, q url.Values, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), nil)
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if v == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("reading the broker's reply: %w", err)
	}
	return nil
}

// Channel returns a channel's info.
func (c *Client) Channel(ctx context.Context, name string, q url.Values) (*broker.ChannelInfo, error) {
	var info broker.ChannelInfo
	return &info, c.call(ctx, "GET", "/channels/"+name, q, &info)
}

// Channels lists the broker's channels, optionally those matching a pattern.
func (c *Client) Channels(ctx context.Context, match string) ([]broker.ChannelInfo, error) {
	q := url.Values{}
	if match != "" {
		q.Set("match", match)
	}
	var out struct {
		Channels []broker.ChannelInfo `json:"channels"`
	}
	return out.Channels, c.call(ctx, "GET", "/channels", q, &out)
}

// Presence lists the members of a channel's presence.
func (c *Client) Presence(ctx context.Context, channel string) ([]presence.Member, error) {
	if err := broker.ValidateChannel(channel); err != nil {
		return nil, err
	}
	var out struct {
		Members []presence.Member `json:"members"`
	}
	return out.Members, c.call(ctx, "GET", "/channels/"+channel+"/presence", nil, &out)
}

// DeleteChannel deletes a channel.
func (c *Client) DeleteChannel(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/channels/"+name, nil, nil)
}

// Stats returns every counter of GET /stats, including those of optional
// parts such as ZeroMQ endpoints.
func (c *Client) Stats(ctx context.Context) (map[string]any, error) {
	var st map[string]any
	return st, c.call(ctx, "GET", "/stats", nil, &st)
}
