// Package hooks asks the application: who a connection is (connect), whether
// a caller may subscribe to a channel (subscribe), whether a client's
// message may be published and in what form (publish), and who a
// connection is once its first answer expired (refresh). Each hook is a
// JSON POST to a URL of the application, signed with HMAC-SHA256 so that
// the application can tell pushctl's requests from anyone else's; answers
// may be signed too, and then an unsigned or forged answer is never
// trusted.
package hooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of hook.
const (
	Connect   = "connect"
	Subscribe = "subscribe"
	Publish   = "publish"
	Refresh   = "refresh"
)

// SignatureHeader carries a request's (and, when asked, an answer's)
// signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">.
const SignatureHeader = "Pushctl-Signature"

// maxSkew bounds how old a signed answer may be.
const maxSkew = 5 * time.Minute

// maxReply bounds an answer's body.
const maxReply = 1 << 20

// Config configures the hooks.
type Config struct {
	// URLs of each hook ("": not asked).
	Connect, Subscribe, Publish, Refresh string
	// Secret signs requests (and verifies answers).
	Secret []byte
	// SignedAnswers: answers must carry a valid signature; others count
	// as the application being unavailable.
	SignedAnswers bool
	// Timeout bounds one hook call (default 3s).
	Timeout time.Duration
	// Concurrency bounds the calls under way at once (default 64); more
	// wait for a place within their timeout.
	Concurrency int
	// Headers are the request headers a connect hook is told of (Cookie
	// is always sent, parsed, as cookies).
	Headers []string
	// Now is the clock (tests).
	Now func() time.Time
}

// Client calls the hooks.
type Client struct {
	cfg  Config
	http *http.Client
	sem  chan struct{}

	duration *prometheus.HistogramVec
	outcomes *prometheus.CounterVec
}

// New returns a Client (nil when no hook is configured).
func New(cfg Config) *Client {
	if cfg.Connect == "" && cfg.Subscribe == "" && cfg.Publish == "" && cfg.Refresh == "" {
		return nil
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 64
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	tr := &http.Transport{
		Proxy:               nil, // the application is reached directly
		DialContext:         (&net.Dialer{Timeout: cfg.Timeout}).DialContext,
		MaxIdleConns:        cfg.Concurrency,
		MaxIdleConnsPerHost: cfg.Concurrency,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{
		cfg:  cfg,
		http: &http.Client{Transport: tr, Timeout: cfg.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		sem:  make(chan struct{}, cfg.Concurrency),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pushctl_hook_duration_seconds",
			Help:    "Time the application took to answer a hook.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"hook"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pushctl_hook_requests_total",
			Help: "Hook calls by outcome: allowed, denied, unavailable.",
		}, []string{"hook", "outcome"}),
	}
}

// Collectors are the hooks' metrics, for /metrics.
func (c *Client) Collectors() []prometheus.Collector {
	if c == nil {
		return nil
	}
	return []prometheus.Collector{c.duration, c.outcomes}
}

// Has reports whether hook is configured.
func (c *Client) Has(hook string) bool {
	if c == nil {
		return false
	}
	return c.url(hook) != ""
}

func (c *Client) url(hook string) string {
	switch hook {
	case Connect:
		return c.cfg.Connect
	case Subscribe:
		return c.cfg.Subscribe
	case Publish:
		return c.cfg.Publish
	case Refresh:
		return c.cfg.Refresh
	}
	return ""
}

// ForwardedHeaders are the request headers a connect hook is told of.
func (c *Client) ForwardedHeaders() []string { return c.cfg.Headers }

// ConnectRequest tells the application of a connection.
type ConnectRequest struct {
	Hook      string            `json:"hook"`
	Transport string            `json:"transport"`
	Remote    string            `json:"remote_addr"`
	Cookies   map[string]string `json:"cookies,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	Query     map[string]string `json:"query,omitempty"`
	// User is, for refresh, who the connection was.
	User string `json:"user,omitempty"`
}

// Identity is the application's answer to connect and refresh: who the
// connection is and what it may do, until when.
type Identity struct {
	User      string          `json:"user"`
	Info      json.RawMessage `json:"info,omitempty"`
	Publish   []string        `json:"publish,omitempty"`
	Subscribe []string        `json:"subscribe,omitempty"`
	// ExpiresAt (unix seconds) or TTL (seconds): when the answer must be
	// asked again (refresh) or the connection ends. Neither: never.
	ExpiresAt int64 `json:"expires_at,omitempty"`
	TTL       int64 `json:"ttl,omitempty"`
}

// SubscribeRequest asks whether user may subscribe to channel, or join
// its presence as member (Join).
type SubscribeRequest struct {
	Hook      string `json:"hook"`
	User      string `json:"user,omitempty"`
	Channel   string `json:"channel"`
	Namespace string `json:"namespace,omitempty"`
	Remote    string `json:"remote_addr,omitempty"`
	Join      bool   `json:"join,omitempty"`
	Member    string `json:"member,omitempty"`
}

// PublishRequest asks whether a client's message may be published.
type PublishRequest struct {
	Hook      string          `json:"hook"`
	User      string          `json:"user,omitempty"`
	Channel   string          `json:"channel"`
	Namespace string          `json:"namespace,omitempty"`
	Event     string          `json:"event,omitempty"`
	Data      json.RawMessage `json:"data"`
	Remote    string          `json:"remote_addr,omitempty"`
}

// reply is every answer's shape: an error refuses; otherwise the fields
// of the hook's answer.
type reply struct {
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Identity
	// Data, for publish, replaces the message's data.
	Data json.RawMessage `json:"data"`
}

// Denied is the application's refusal.
type Denied struct {
	Code    string // the application's own code, if it gave one
	Message string
}

func (e *Denied) Error() string {
	if e.Code != "" {
		return e.Code + ": " + e.Message
	}
	return e.Message
}

// ErrUnavailable wraps every failure to get an answer: the application
// down, slow, answering 5xx, something that is not an answer, or an
// answer without a valid signature where one is required.
var ErrUnavailable = errors.New("the application did not answer")

// Connect asks who a connection is; refresh asks again for user.
func (c *Client) Connect(ctx context.Context, hook string, req ConnectRequest) (*Identity, error) {
	req.Hook = hook
	var r reply
	if err := c.call(ctx, hook, req, &r); err != nil {
		return nil, err
	}
	id := r.Identity
	if id.User == "" {
		return nil, fmt.Errorf("%w: the %s answer names no user", ErrUnavailable, hook)
	}
	if id.TTL > 0 && id.ExpiresAt == 0 {
		id.ExpiresAt = c.cfg.Now().Add(time.Duration(id.TTL) * time.Second).Unix()
	}
	return &id, nil
}

// AllowSubscribe asks whether a subscription (or a join) may start; info,
// when the answer has one, is the member's presence info for a join.
func (c *Client) AllowSubscribe(ctx context.Context, req SubscribeRequest) (info json.RawMessage, err error) {
	req.Hook = Subscribe
	var r reply
	if err := c.call(ctx, Subscribe, req, &r); err != nil {
		return nil, err
	}
	if len(r.Info) > 0 && !bytes.Equal(r.Info, []byte("null")) {
		return r.Info, nil
	}
	return nil, nil
}

// Publish asks whether a client's message may be published; data, when
// not nil, replaces the message's (a JSON string: its text; other JSON:
// itself).
func (c *Client) Publish(ctx context.Context, req PublishRequest) (data json.RawMessage, err error) {
	req.Hook = Publish
	var r reply
	if err := c.call(ctx, Publish, req, &r); err != nil {
		return nil, err
	}
	if len(r.Data) > 0 && !bytes.Equal(r.Data, []byte("null")) {
		return r.Data, nil
	}
	return nil, nil
}

// call posts req to hook's URL and decodes the answer into r. A refusal
// is a *Denied; every other failure wraps ErrUnavailable.
func (c *Client) call(ctx context.Context, hook string, req any, r *reply) error {
	start := c.cfg.Now()
	outcome := "unavailable"
	defer func() {
		c.outcomes.WithLabelValues(hook, outcome).Inc()
		c.duration.WithLabelValues(hook).Observe(c.cfg.Now().Sub(start).Seconds())
	}()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	select {
	case c.sem <- struct{}{}:
		defer func() { <-c.sem }()
	case <-ctx.Done():
		return fmt.Errorf("%w: %d %s hooks already waiting for it", ErrUnavailable, cap(c.sem), hook)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	hreq, err := http.NewRequestWithContext(ctx, "POST", c.url(hook), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Pushctl-Hook", hook)
	reqSig := ""
	if len(c.cfg.Secret) > 0 {
		reqSig = Sign(c.cfg.Secret, c.cfg.Now(), body)
		hreq.Header.Set(SignatureHeader, reqSig)
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w within %s", ErrUnavailable, c.cfg.Timeout)
		}
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return fmt.Errorf("%w: reading the answer: %v", ErrUnavailable, err)
	}
	if len(b) > maxReply {
		return fmt.Errorf("%w: an answer larger than %d bytes", ErrUnavailable, maxReply)
	}
	if c.cfg.SignedAnswers {
		if err := Verify(c.cfg.Secret, resp.Header.Get(SignatureHeader), answerPayload(reqSig, b), c.cfg.Now()); err != nil {
			return fmt.Errorf("%w: the answer's signature: %v", ErrUnavailable, err)
		}
	}
	err = parseAnswer(resp.StatusCode, b, r)
	var denied *Denied
	switch {
	case err == nil:
		outcome = "allowed"
	case errors.As(err, &denied):
		outcome = "denied"
	}
	return err
}

// parseAnswer reads an answer: 2xx with JSON, whose "error" (or a 4xx
// status) refuses; anything else is the application being unavailable.
func parseAnswer(status int, body []byte, r *reply) error {
	if status >= 500 || status < 200 || status >= 300 && status < 400 {
		return fmt.Errorf("%w: HTTP %d", ErrUnavailable, status)
	}
	if err := json.Unmarshal(body, r); err != nil {
		if status >= 400 {
			return &Denied{Message: "refused by the application"}
		}
		return fmt.Errorf("%w: the answer is not JSON: %v", ErrUnavailable, err)
	}
	if r.Error != nil || status >= 400 {
		d := &Denied{Message: "refused by the application"}
		if r.Error != nil {
			d.Code = r.Error.Code
			if r.Error.Message != "" {
				d.Message = r.Error.Message
			}
		}
		return d
	}
	return nil
}

// Sign returns the signature header of body at time now.
func Sign(secret []byte, now time.Time, body []byte) string {
	t := strconv.FormatInt(now.Unix(), 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(t))
	m.Write([]byte{'.'})
	m.Write(body)
	return "t=" + t + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// SignAnswer returns the signature header of an answer body to the request
// whose signature header was requestSig: the answer's signature covers the
// request's, so an answer cannot be replayed to another request.
func SignAnswer(secret []byte, now time.Time, requestSig string, body []byte) string {
	return Sign(secret, now, answerPayload(requestSig, body))
}

// answerPayload is what an answer's signature covers: "<request v1>.<body>"
// (then, as for requests, "<t>." before it).
func answerPayload(requestSig string, body []byte) []byte {
	v1 := ""
	for _, part := range strings.Split(requestSig, ",") {
		if k, v, _ := strings.Cut(strings.TrimSpace(part), "="); k == "v1" {
			v1 = v
		}
	}
	return append([]byte(v1+"."), body...)
}

// Verify checks a signature header of body: made with secret, no more
// than five minutes from now.
func Verify(secret []byte, header string, body []byte, now time.Time) error {
	var t, v1 string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			t = v
		case "v1":
			v1 = v
		}
	}
	if t == "" || v1 == "" {
		return errors.New("missing")
	}
	ts, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return errors.New("bad time")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return errors.New("too old or from the future")
	}
	want, err := hex.DecodeString(v1)
	if err != nil {
		return errors.New("not hex")
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(t))
	m.Write([]byte{'.'})
	m.Write(body)
	if !hmac.Equal(m.Sum(nil), want) {
		return errors.New("does not match")
	}
	return nil
}
