// Package pusher holds what pushctl needs to speak the Pusher Channels
// protocol (version 7) and HTTP API: apps and their limits, the channel
// and request signatures, and the frames. The server wires it to the
// broker: a Pusher channel is a pushctl channel.
package pusher

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// App is one Pusher application: its credentials, where its channels live
// among pushctl's, and its limits.
type App struct {
	ID     string
	Key    string
	Secret string
	// Prefix is put before a Pusher channel's name to make the pushctl
	// channel ("" for a single app: "chat" is "chat").
	Prefix string
	Limits Limits
	// Webhooks are the URLs events are POSTed to.
	Webhooks []string
	// SubscriptionCount sends pusher_internal:subscription_count events.
	SubscriptionCount bool
}

// Limits are an app's bounds; zero values take Pusher's defaults.
type Limits struct {
	PresenceMembers     int     // members of one presence channel (100)
	UserInfo            int     // bytes of a member's user_info (1024)
	UserID              int     // bytes of a user id (128)
	EventData           int     // bytes of an event's data (10240)
	ChannelsPerTrigger  int     // channels one POST /events names (100)
	BatchEvents         int     // events of one batch (10)
	ClientEventsPerSec  float64 // client events per second per connection (10)
	ActivityTimeoutSecs int     // told to clients in connection_established (120)
}

// Filled returns l with defaults for zero values.
func (l Limits) Filled() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.PresenceMembers, 100)
	def(&l.UserInfo, 1024)
	def(&l.UserID, 128)
	def(&l.EventData, 10240)
	def(&l.ChannelsPerTrigger, 100)
	def(&l.BatchEvents, 10)
	def(&l.ActivityTimeoutSecs, 120)
	if l.ClientEventsPerSec <= 0 {
		l.ClientEventsPerSec = 10
	}
	return l
}

// ParseApp parses an app as given to --pusher-app:
//
//	ID:KEY:SECRET[?option=value&…]
//
// with options prefix, webhook (repeatable), subscription_count and the
// limits max_presence_members, max_user_info, max_user_id,
// max_event_data, max_channels_per_trigger, max_batch_events,
// client_events_per_second and activity_timeout.
func ParseApp(s string) (App, error) {
	spec, opts, _ := strings.Cut(s, "?")
	parts := strings.Split(spec, ":")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return App{}, errors.New("a Pusher app is ID:KEY:SECRET (three non-empty parts)")
	}
	a := App{ID: parts[0], Key: parts[1], Secret: parts[2]}
	for _, c := range a.ID {
		if c < '0' || c > '9' {
			return App{}, fmt.Errorf("the Pusher app id %q must be digits (the SDKs require it)", a.ID)
		}
	}
	if strings.ContainsAny(a.Key, "/?#&= ") {
		return App{}, errors.New("the Pusher app key may not contain / ? # & = or spaces")
	}
	if len(a.Secret) < 16 {
		return App{}, errors.New("the Pusher app secret must be at least 16 characters")
	}
	q, err := url.ParseQuery(opts)
	if err != nil {
		return App{}, fmt.Errorf("Pusher app options: %v", err)
	}
	ints := map[string]*int{
		"max_presence_members":     &a.Limits.PresenceMembers,
		"max_user_info":            &a.Limits.UserInfo,
		"max_user_id":              &a.Limits.UserID,
		"max_event_data":           &a.Limits.EventData,
		"max_channels_per_trigger": &a.Limits.ChannelsPerTrigger,
		"max_batch_events":         &a.Limits.BatchEvents,
		"activity_timeout":         &a.Limits.ActivityTimeoutSecs,
	}
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "prefix":
			a.Prefix = v
		case "webhook":
			for _, w := range vs {
				u, err := url.Parse(w)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
					return App{}, fmt.Errorf("webhook %q: want an http:// or https:// URL", w)
				}
				a.Webhooks = append(a.Webhooks, w)
			}
		case "subscription_count":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return App{}, fmt.Errorf("subscription_count=%q: want true or false", v)
			}
			a.SubscriptionCount = b
		case "client_events_per_second":
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				return App{}, fmt.Errorf("client_events_per_second=%q: want a positive number", v)
			}
			a.Limits.ClientEventsPerSec = f
		default:
			p, ok := ints[k]
			if !ok {
				return App{}, fmt.Errorf("unknown Pusher app option %q", k)
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return App{}, fmt.Errorf("%s=%q: want a positive whole number", k, v)
			}
			*p = n
		}
	}
	a.Limits = a.Limits.Filled()
	return a, nil
}

// CheckApps refuses apps that would be confused with each other.
func CheckApps(apps []App) error {
	for i, a := range apps {
		for _, b := range apps[:i] {
			switch {
			case a.ID == b.ID:
				return fmt.Errorf("two Pusher apps have the id %s", a.ID)
			case a.Key == b.Key:
				return fmt.Errorf("Pusher apps %s and %s have the same key", b.ID, a.ID)
			case a.Prefix == b.Prefix:
				return fmt.Errorf("Pusher apps %s and %s would share channels: give each a distinct ?prefix=", b.ID, a.ID)
			}
		}
	}
	return nil
}

// MaxChannelName is the longest Pusher channel name.
const MaxChannelName = 200

// ValidChannel checks a Pusher channel name: [-a-zA-Z0-9_=@,.;] up to
// 200 characters ("#server-to-user-" names are the server's).
func ValidChannel(name string) error {
	if name == "" || len(name) > MaxChannelName {
		return fmt.Errorf("channel names are 1 to %d characters", MaxChannelName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_=@,.;", c) >= 0 {
			continue
		}
		return fmt.Errorf("channel name %q: character %q is not allowed", name, c)
	}
	return nil
}

// Channel kinds by prefix.
const (
	PrivatePrefix   = "private-"
	EncryptedPrefix = "private-encrypted-"
	PresencePrefix  = "presence-"
	CachePrefix     = "cache-"
	// UserPrefix names the channel of a signed-in user.
	UserPrefix = "#server-to-user-"
)

// IsPrivate reports whether a channel needs an auth signature.
func IsPrivate(ch string) bool {
	return strings.HasPrefix(ch, PrivatePrefix) || strings.HasPrefix(ch, PresencePrefix) ||
		strings.HasPrefix(ch, "private-cache-") || strings.HasPrefix(ch, "presence-cache-")
}

// IsPresence reports whether a channel has presence.
func IsPresence(ch string) bool { return strings.HasPrefix(ch, PresencePrefix) }

// IsCache reports whether a channel replays its last event on subscribe.
func IsCache(ch string) bool {
	for _, p := range []string{"cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-"} {
		if strings.HasPrefix(ch, p) {
			return true
		}
	}
	return false
}

// Sign returns the hex HMAC-SHA256 of s with secret.
func Sign(secret, s string) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(s))
	return hex.EncodeToString(h.Sum(nil))
}

// equalSig compares a hex signature with the expected one in constant time.
func equalSig(got, want string) bool {
	g, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	w, _ := hex.DecodeString(want)
	return hmac.Equal(g, w)
}

// ErrAuth is wrapped by every signature failure.
var ErrAuth = errors.New("invalid signature")

// CheckAuth verifies "KEY:SIGNATURE" over toSign.
func (a *App) CheckAuth(auth, toSign string) error {
	key, sig, ok := strings.Cut(auth, ":")
	switch {
	case auth == "":
		return fmt.Errorf("%w: no auth given", ErrAuth)
	case !ok || key != a.Key:
		return fmt.Errorf("%w: the auth is not KEY:SIGNATURE with this app's key", ErrAuth)
	case !equalSig(sig, Sign(a.Secret, toSign)):
		return fmt.Errorf("%w: the signature does not match", ErrAuth)
	}
	return nil
}

// ChannelAuth returns the auth a private or presence subscription must
// carry (what a server SDK's authorize computes).
func (a *App) ChannelAuth(socketID, channel, channelData string) string {
	s := socketID + ":" + channel
	if channelData != "" {
		s += ":" + channelData
	}
	return a.Key + ":" + Sign(a.Secret, s)
}

// CheckChannelAuth verifies a subscription's auth.
func (a *App) CheckChannelAuth(auth, socketID, channel, channelData string) error {
	s := socketID + ":" + channel
	if channelData != "" {
		s += ":" + channelData
	}
	return a.CheckAuth(auth, s)
}

// CheckSigninAuth verifies a pusher:signin's auth over its user_data.
func (a *App) CheckSigninAuth(auth, socketID, userData string) error {
	return a.CheckAuth(auth, socketID+"::user::"+userData)
}

// RequestWindow is how far an HTTP API request's auth_timestamp may be
// from the server's clock.
const RequestWindow = 600 * time.Second

// CheckRequest verifies a signed HTTP API request: auth_key is the app's,
// auth_timestamp within RequestWindow of now, auth_version 1.0, body_md5
// the body's (when there is a body) and auth_signature the HMAC of
// "METHOD\nPATH\nsorted query".
func (a *App) CheckRequest(method, path string, query url.Values, body []byte, now time.Time) error {
	get := func(k string) string {
		if vs := query[k]; len(vs) == 1 {
			return vs[0]
		}
		return ""
	}
	if get("auth_key") != a.Key {
		return fmt.Errorf("%w: auth_key is missing or not this app's key", ErrAuth)
	}
	ts, err := strconv.ParseInt(get("auth_timestamp"), 10, 64)
	if err != nil {
		return fmt.Errorf("%w: auth_timestamp is missing or not a number", ErrAuth)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > RequestWindow || d < -RequestWindow {
		return fmt.Errorf("%w: auth_timestamp is %s away from the server's clock (the window is %s): check the clock, or this is a replay", ErrAuth, d.Round(time.Second), RequestWindow)
	}
	if v := get("auth_version"); v != "1.0" {
		return fmt.Errorf("%w: auth_version must be 1.0", ErrAuth)
	}
	if len(body) > 0 {
		sum := md5.Sum(body)
		if get("body_md5") != hex.EncodeToString(sum[:]) {
			return fmt.Errorf("%w: body_md5 does not match the body", ErrAuth)
		}
	}
	sig := get("auth_signature")
	if sig == "" {
		return fmt.Errorf("%w: auth_signature is missing", ErrAuth)
	}
	if !equalSig(sig, Sign(a.Secret, StringToSign(method, path, query))) {
		return fmt.Errorf("%w: auth_signature does not match", ErrAuth)
	}
	return nil
}

// StringToSign is what an HTTP API request's signature covers: the
// method, the path and the query without auth_signature, keys lower-cased
// and sorted, "k=v" joined by "&" without escaping.
func StringToSign(method, path string, query url.Values) string {
	keys := make([]string, 0, len(query))
	lower := make(map[string][]string, len(query))
	for k, vs := range query {
		lk := strings.ToLower(k)
		if lk == "auth_signature" {
			continue
		}
		if _, ok := lower[lk]; !ok {
			keys = append(keys, lk)
		}
		lower[lk] = append(lower[lk], vs...)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		for _, v := range lower[k] {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(k)
			b.WriteByte('=')
			b.WriteString(v)
		}
	}
	return method + "\n" + path + "\n" + b.String()
}

// SignRequest returns query with the auth parameters of a signed request
// (for tests and clients).
func (a *App) SignRequest(method, path string, query url.Values, body []byte, now time.Time) url.Values {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("auth_key", a.Key)
	q.Set("auth_timestamp", strconv.FormatInt(now.Unix(), 10))
	q.Set("auth_version", "1.0")
	if len(body) > 0 {
		sum := md5.Sum(body)
		q.Set("body_md5", hex.EncodeToString(sum[:]))
	}
	q.Set("auth_signature", Sign(a.Secret, StringToSign(method, path, q)))
	return q
}
