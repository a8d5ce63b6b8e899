package door

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/hooks"
	"github.com/pushctl/pushctl/internal/wire"
)

// The application in the loop: the door asks the hooks (internal/hooks)
// who a connection is, whether a subscription may start and whether a
// client's message may be published, at the same place for every way in.

// Failure policies: what the door does when the application does not
// answer (down, slow, a bad answer).
const (
	FailDeny  = "deny"
	FailAllow = "allow"
)

// HasConnectHook reports whether connections without a token are
// identified by the application.
func (d *Door) HasConnectHook() bool { return d.hooks.Has(hooks.Connect) }

// ForwardedHeaders are the request headers the connect hook is told of.
func (d *Door) ForwardedHeaders() []string {
	if d.hooks == nil {
		return nil
	}
	return d.hooks.ForwardedHeaders()
}

// AsksConnectHook reports whether a connection bringing token is
// identified by the application's connect hook. A token decides where
// tokens are configured; where they are not, it would make the caller
// anonymous (allowed everything), so the application is asked as if there
// were none.
func (d *Door) AsksConnectHook(token string) bool {
	return d.hooks.Has(hooks.Connect) && (token == "" || !d.auth.TokensEnabled())
}

// Connect identifies a connection: by its token when it has one, else by
// the application's connect hook when there is one (req says what the
// application sees of the connection), else as anonymous.
func (d *Door) Connect(ctx context.Context, token string, remote net.Addr, req hooks.ConnectRequest) (*auth.Identity, error) {
	if !d.AsksConnectHook(token) {
		return d.Identify(token, remote)
	}
	hid, err := d.hooks.Connect(ctx, hooks.Connect, req)
	if err != nil {
		if err := d.hookFailure("connect", nil, err); err != nil {
			return nil, err
		}
		return d.Identify("", remote) // policy allow: as without a hook
	}
	id, err := identityOf(hid)
	if err != nil {
		return nil, d.hookFailure("connect", nil, err)
	}
	return id, nil
}

// Refresh asks the application again who a connection that it identified
// is, when that answer expires (nil, nil: there is no refresh hook).
func (d *Door) Refresh(ctx context.Context, id *auth.Identity, remote string) (*auth.Identity, error) {
	if id == nil || !id.Hook || !d.hooks.Has(hooks.Refresh) {
		return nil, nil
	}
	hid, err := d.hooks.Connect(ctx, hooks.Refresh, hooks.ConnectRequest{Remote: remote, User: id.Claims.Subject})
	if err != nil {
		return nil, d.hookFailure("refresh", nil, err)
	}
	return identityOf(hid)
}

// identityOf turns the application's answer into an identity whose grants
// the door checks like a token's.
func identityOf(h *hooks.Identity) (*auth.Identity, error) {
	for _, p := range append(slices.Clone(h.Publish), h.Subscribe...) {
		if err := broker.ValidatePattern(p); err != nil {
			return nil, errors.Join(hooks.ErrUnavailable, errors.New("the answer grants an invalid pattern "+p))
		}
	}
	c := &auth.Claims{Grants: auth.Grants{Publish: h.Publish, Subscribe: h.Subscribe,
		Presence: &auth.Presence{ID: h.User, Info: h.Info}}}
	c.Subject = h.User
	id := &auth.Identity{Claims: c, Hook: true}
	if h.ExpiresAt > 0 && !time.Unix(h.ExpiresAt, 0).After(time.Now()) {
		return nil, errors.Join(hooks.ErrUnavailable, errors.New("the answer expired already"))
	}
	if h.ExpiresAt > 0 {
		id.Expires = time.Unix(h.ExpiresAt, 0)
		c.ExpiresAt = jwt.NewNumericDate(id.Expires)
	}
	return id, nil
}

// hookWanted reports whether hook applies to channel's namespace.
func (d *Door) hookWanted(hook string, ns *nsState) bool {
	if !d.hooks.Has(hook) {
		return false
	}
	if ns == nil || ns.Rules.Hooks == nil {
		return true
	}
	return slices.Contains(*ns.Rules.Hooks, hook)
}

// askSubscribe asks the subscribe hook about channel, where it applies.
func (d *Door) askSubscribe(ctx context.Context, c Caller, channel string) error {
	_, err := d.askSubscribeOrJoin(ctx, c, channel, d.namespaceOf(channel), "", false)
	return err
}

// askSubscribeOrJoin asks the subscribe hook about a subscription or, with
// join, a presence join as member; for a join the answer may give the
// member's info.
func (d *Door) askSubscribeOrJoin(ctx context.Context, c Caller, channel string, ns *nsState, member string, join bool) (json.RawMessage, error) {
	if c.trusted || !d.hookWanted(hooks.Subscribe, ns) {
		return nil, nil
	}
	req := hooks.SubscribeRequest{User: c.user(), Channel: channel, Remote: c.Client, Join: join, Member: member}
	if ns != nil {
		req.Namespace = ns.Name
	}
	info, err := d.hooks.AllowSubscribe(ctx, req)
	if err != nil {
		return nil, d.hookFailure("subscribe", ns, err)
	}
	return info, nil
}

// askPublish asks the publish hook about a client's message, where it
// applies; the application may replace the message's data.
func (d *Door) askPublish(ctx context.Context, c Caller, m *broker.Message, ns *nsState) error {
	if !c.socket || c.trusted || !d.hookWanted(hooks.Publish, ns) {
		return nil
	}
	req := hooks.PublishRequest{User: c.user(), Channel: m.Channel, Event: m.Event, Remote: c.Client}
	if ns != nil {
		req.Namespace = ns.Name
	}
	switch m.Kind {
	case broker.KindJSON:
		req.Data = m.Data
	case broker.KindBinary:
		req.Data, _ = json.Marshal(map[string]string{"base64": base64.StdEncoding.EncodeToString(m.Data)})
	default:
		req.Data, _ = json.Marshal(string(m.Data))
	}
	data, err := d.hooks.Publish(ctx, req)
	if err != nil {
		return d.hookFailure("publish", ns, err)
	}
	if data != nil {
		var s string
		if data[0] == '"' && json.Unmarshal(data, &s) == nil {
			m.Kind, m.Data = broker.KindText, []byte(s)
		} else {
			m.Kind, m.Data = broker.KindJSON, append([]byte(nil), data...)
		}
		if err := d.admitSize(m, ns); err != nil {
			return err
		}
	}
	return nil
}

// hookFailure is the door's answer when a hook refused (hook_denied, with
// the application's message) or did not answer (the namespace's failure
// policy: hook_unavailable, or nil to go on).
func (d *Door) hookFailure(hook string, ns *nsState, err error) error {
	var denied *hooks.Denied
	if errors.As(err, &denied) {
		d.refuse("hook_denied")
		msg := denied.Message
		if denied.Code != "" {
			msg = denied.Code + ": " + msg
		}
		return wire.Errorf(http.StatusForbidden, wire.CodeHookDenied, "%s", msg)
	}
	policy := d.hookPolicy
	if ns != nil && ns.Rules.HookFailure != "" {
		policy = ns.Rules.HookFailure
	}
	d.refuse("hook_unavailable")
	if policy == FailAllow {
		return nil
	}
	return wire.Errorf(http.StatusServiceUnavailable, wire.CodeHookUnavailable, "the application's %s hook did not answer; try again later", hook)
}

// user is who the caller is for the application ("" unknown).
func (c Caller) user() string {
	if c.ID == nil || c.ID.Claims == nil {
		return ""
	}
	return c.ID.Claims.Subject
}
