package pusherd

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/wire"
)

// Pusher Channels protocol 7 over WebSocket (GET /app/{key}).

// conn is one Pusher client connection: the Handler of its Conn.
type conn struct {
	s        *Service
	app      *liveApp // nil: the key names no app (refused)
	c        Conn
	socketID string

	mu       sync.Mutex
	channels map[string]*sub // by Pusher name
	user     string          // signed in as
	events   *door.Bucket    // client events allowed (made on the first)
	ident    *auth.Identity  // who the connect hook said (nil: none asked)
}

type sub struct {
	member *presence.Membership
	userID string
	// after: presence events up to this position are already in the
	// member list the client was given.
	after broker.Position
}

// textFrame frames a JSON frame as a WebSocket text frame.
func textFrame(j []byte) []byte {
	return wire.AppendWSFrame(make([]byte, 0, len(j)+4), wire.OpText, j)
}

// webSocket handles GET /app/{key}: a Pusher client.
func (s *Service) webSocket(w http.ResponseWriter, r *http.Request) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "/app/{key} takes a WebSocket upgrade (the Pusher protocol); see docs/pusher.md")
	}
	release, err := s.host.ConnSlot(r)
	if err != nil {
		return err
	}
	a := s.byKey[r.PathValue("key")]
	pc := &conn{s: s, app: a, channels: map[string]*sub{}}
	pc.c = s.host.NewConn(pc)
	pc.c.NoEcho() // client events are not sent back to their sender
	var b [4]byte
	rand.Read(b[:])
	pc.socketID = strconv.FormatUint(pc.c.ID(), 10) + "." + strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[:])>>1), 10)
	q := r.URL.Query()
	refuse := func(code int, msg string) {
		// Said after the upgrade: Pusher clients only read close codes.
		pc.c.End(&closeError{code, msg})
	}
	switch p := q.Get("protocol"); {
	case a == nil:
		refuse(pusher.CloseAppNotFound, "App key "+r.PathValue("key")+" does not exist")
	case p == "":
		refuse(pusher.CloseNoProtocol, "No protocol version supplied")
	case p != "7" && p != "6" && p != "5":
		refuse(pusher.CloseUnsupportedProto, "Unsupported protocol version "+p+"; pushctl speaks 5 to 7")
	case s.door.HasConnectHook():
		// The application's connect hook says who the connection is (its
		// user goes to the subscribe and publish hooks); Pusher's own
		// signatures still authorize its channels.
		id, err := s.host.ConnectIdentity(r)
		if err != nil {
			e := s.host.Error(err)
			code := pusher.CloseUnauthorized
			if e.Code == wire.CodeHookUnavailable {
				code = pusher.CloseReconnect // try again: the application may be back
			}
			refuse(code, wire.CloseReason(e))
		}
		pc.ident = id
	}
	pc.c.Serve(w, r, release)
	return nil
}

// closeError ends a connection with a Pusher close code.
type closeError struct {
	code int
	msg  string
}

func (e *closeError) Error() string { return e.msg }

// errTerminated ends connections of a user the HTTP API terminated.
var errTerminated = &closeError{pusher.CloseUnauthorized, "Connection terminated by the server"}

// Opened makes the connection one of its app's sockets.
func (pc *conn) Opened() {
	if app := pc.app; app != nil {
		app.mu.Lock()
		app.sockets[pc.c.ID()] = pc
		app.mu.Unlock()
	}
}

// Ended releases what the connection held: presence (after the grace
// period), occupancy, its place among the app's sockets.
func (pc *conn) Ended() {
	app := pc.app
	if app == nil {
		return
	}
	app.mu.Lock()
	delete(app.sockets, pc.c.ID())
	app.mu.Unlock()
	pc.mu.Lock()
	chans := pc.channels
	pc.channels = map[string]*sub{}
	pc.mu.Unlock()
	for name, sub := range chans {
		pc.release(name, sub, false)
	}
}

// release undoes one subscription's presence and occupancy, and returns
// how many Pusher subscriptions the channel has left.
func (pc *conn) release(name string, sub *sub, now bool) int {
	if sub.member != nil {
		sub.member.Leave(now)
	}
	return pc.app.occupy(name, -1)
}

func (pc *conn) send(b []byte) { pc.c.Reply(textFrame(b)) }

func (pc *conn) fail(msg string) { pc.send(pusher.ErrorFrame(0, msg)) }

// NotText is the reply to a binary frame.
func (pc *conn) NotText() []byte { return textFrame(pusher.ErrorFrame(0, "frames are JSON text")) }

// Frame executes one client frame.
func (pc *conn) Frame(data []byte) {
	if pc.app == nil {
		return // refused: the close code is on its way
	}
	f, err := pusher.DecodeFrame(data)
	if err != nil {
		pc.fail(err.Error())
		return
	}
	switch {
	case f.Event == "pusher:ping":
		pc.send(pusher.Pong())
	case f.Event == "pusher:pong":
	case f.Event == "pusher:subscribe":
		pc.subscribe(f)
	case f.Event == "pusher:unsubscribe":
		pc.unsubscribe(f)
	case f.Event == "pusher:signin":
		pc.signin(f)
	case strings.HasPrefix(f.Event, "client-"):
		pc.clientEvent(f)
	default:
		pc.fail(fmt.Sprintf("unsupported event %q", f.Event))
	}
}

func (pc *conn) subscribe(f *pusher.Frame) {
	s, app := pc.s, pc.app
	var sd pusher.SubscribeData
	if err := pusher.DecodeData(f.Data, &sd); err != nil || sd.Channel == "" {
		pc.fail("pusher:subscribe needs data with a channel")
		return
	}
	name := sd.Channel
	refuse := func(kind, msg string, status int) {
		s.door.Refuse("pusher_subscribe")
		pc.send(pusher.SubscriptionError(name, kind, msg, status))
	}
	ch, err := app.brokerChannel(name)
	if err != nil {
		refuse("InvalidChannel", err.Error(), http.StatusBadRequest)
		return
	}
	if id, ok := strings.CutPrefix(name, pusher.UserPrefix); ok {
		pc.mu.Lock()
		user := pc.user
		pc.mu.Unlock()
		if user == "" || user != id {
			refuse("AuthError", "only the signed-in user "+strconv.Quote(id)+" may subscribe to "+name, http.StatusForbidden)
			return
		}
	}
	var member pusher.Member
	if pusher.IsPrivate(name) {
		cd := ""
		if pusher.IsPresence(name) {
			cd = sd.ChannelData
		}
		if err := app.CheckChannelAuth(sd.Auth, pc.socketID, name, cd); err != nil {
			s.door.Refuse("bad_token")
			refuse("AuthError", err.Error(), http.StatusUnauthorized)
			return
		}
		if pusher.IsPresence(name) {
			if member, err = pusher.ParseChannelData(sd.ChannelData, app.Limits); err != nil {
				refuse("InvalidChannelData", err.Error(), http.StatusBadRequest)
				return
			}
		}
	}
	pc.mu.Lock()
	_, dup := pc.channels[name]
	n := len(pc.channels)
	pc.mu.Unlock()
	if dup {
		return // already subscribed: Pusher clients do not ask twice
	}
	if limit := s.cfg.ChannelsPerConn; n >= limit {
		s.door.Refuse("channels_per_conn")
		refuse("LimitReached", fmt.Sprintf("more than %d channels on one connection", limit), http.StatusForbidden)
		return
	}
	o := broker.SubscribeOptions{Channels: []string{ch}, QueueSize: s.cfg.QueueSize, OnReady: pc.c.Signal}
	cache := pusher.IsCache(name)
	if cache {
		o.Last = 1
	}
	ctx := pc.c.Context()
	var bsub *broker.Subscription
	var m *presence.Membership
	if pusher.IsPresence(name) {
		bsub, m, err = s.door.SubscribeAsMember(ctx, pc.caller(), o, member.UserID, member.UserInfo, app.limits())
	} else {
		bsub, err = s.door.Subscribe(ctx, pc.caller(), o)
	}
	if err != nil {
		e := s.host.Error(err)
		refuse(e.Code, e.Message, e.Status)
		return
	}
	psub := &sub{}
	succeeded := []byte("{}")
	if m != nil {
		list, after, err := s.door.Members(ctx, ch)
		if err != nil {
			m.Leave(true)
			bsub.Close()
			e := s.host.Error(err)
			refuse(e.Code, e.Message, e.Status)
			return
		}
		psub.member, psub.userID, psub.after = m, member.UserID, after
		succeeded = presenceData(list)
	}
	frames := [][]byte{textFrame(pusher.AppendEvent(nil, "pusher_internal:subscription_succeeded", name, succeeded, ""))}
	if cache {
		if info, err := s.door.Channel(ctx, ch); err != nil || info.Messages == 0 {
			frames = append(frames, textFrame(pusher.CacheMiss(name)))
		}
	}
	pc.mu.Lock()
	pc.channels[name] = psub
	pc.mu.Unlock()
	if !pc.c.AddSub(ch, bsub, frames...) {
		pc.mu.Lock()
		delete(pc.channels, name)
		pc.mu.Unlock()
		if psub.member != nil {
			psub.member.Leave(true)
		}
		return
	}
	if count := app.occupy(name, 1); app.SubscriptionCount && !pusher.IsPresence(name) {
		pc.subscriptionCount(name, count)
	}
}

// subscriptionCount tells a channel's subscribers (and the webhooks) how
// many Pusher subscriptions it has now.
func (pc *conn) subscriptionCount(name string, count int) {
	app := pc.app
	app.mu.Lock()
	conns := make([]*conn, 0, len(app.sockets))
	for _, c := range app.sockets {
		conns = append(conns, c)
	}
	app.mu.Unlock()
	frame := textFrame(pusher.SubscriptionCount(name, count))
	for _, c := range conns {
		c.mu.Lock()
		_, ok := c.channels[name]
		c.mu.Unlock()
		if ok {
			c.c.Send(frame)
		}
	}
	app.hook(pusher.WebhookEvent{Name: "subscription_count", Channel: name, SubscriptionCount: count})
}

// presenceData is a presence channel's subscription_succeeded data.
func presenceData(list []presence.Member) []byte {
	ids := make([]string, 0, len(list))
	hash := make(map[string]json.RawMessage, len(list))
	for _, m := range list {
		ids = append(ids, m.ID)
		info := m.Info
		if info == nil {
			info = json.RawMessage("null")
		}
		hash[m.ID] = info
	}
	b, _ := json.Marshal(map[string]any{"presence": map[string]any{"ids": ids, "hash": hash, "count": len(ids)}})
	return b
}

func (pc *conn) unsubscribe(f *pusher.Frame) {
	var sd pusher.SubscribeData
	if err := pusher.DecodeData(f.Data, &sd); err != nil || sd.Channel == "" {
		pc.fail("pusher:unsubscribe needs data with a channel")
		return
	}
	pc.mu.Lock()
	sub := pc.channels[sd.Channel]
	delete(pc.channels, sd.Channel)
	pc.mu.Unlock()
	if sub == nil {
		return
	}
	if ch, err := pc.app.brokerChannel(sd.Channel); err == nil {
		pc.c.RemoveSub(ch)
	}
	if n := pc.release(sd.Channel, sub, true); pc.app.SubscriptionCount && !pusher.IsPresence(sd.Channel) {
		pc.subscriptionCount(sd.Channel, n)
	}
}

// signin authenticates the connection as a user (pusher:signin).
func (pc *conn) signin(f *pusher.Frame) {
	var sd pusher.SigninData
	if err := pusher.DecodeData(f.Data, &sd); err != nil {
		pc.fail("pusher:signin needs data with auth and user_data")
		return
	}
	app := pc.app
	id, err := pusher.ParseUserData(sd.UserData, app.Limits)
	if err == nil {
		err = app.CheckSigninAuth(sd.Auth, pc.socketID, sd.UserData)
	}
	if err != nil {
		pc.s.door.Refuse("bad_token")
		pc.c.EndWith(textFrame(pusher.ErrorFrame(pusher.CloseUnauthorized, "signin failed: "+err.Error())), &closeError{pusher.CloseUnauthorized, "signin failed"})
		return
	}
	pc.mu.Lock()
	pc.user = id
	pc.mu.Unlock()
	data, _ := json.Marshal(map[string]string{"user_data": sd.UserData})
	pc.send(pusher.AppendEvent(nil, "pusher:signin_success", "", data, ""))
}

// caller is the connection, for the door: the app's client, confined to
// the app's channels.
func (pc *conn) caller() door.Caller {
	c := door.Scoped(pc.app.Prefix, pc.c.Client())
	c.ID = pc.ident
	return c
}

// clientEvent publishes a client- event from this connection to the
// channel's other subscribers.
func (pc *conn) clientEvent(f *pusher.Frame) {
	s, app := pc.s, pc.app
	name := f.Channel
	pc.mu.Lock()
	sub := pc.channels[name]
	pc.mu.Unlock()
	switch {
	case !pusher.IsPrivate(name):
		pc.fail("client events are only for private and presence channels, not " + strconv.Quote(name))
		return
	case sub == nil:
		pc.fail("client event on " + strconv.Quote(name) + ", which this connection has not subscribed to")
		return
	case len(f.Data) > app.Limits.EventData:
		pc.fail(fmt.Sprintf("client event data larger than %d bytes", app.Limits.EventData))
		return
	case !pc.takeClientEvent(time.Now()):
		s.door.Refuse("publish_rate")
		pc.send(pusher.ErrorFrame(pusher.ErrClientEventRate, fmt.Sprintf("Client event rejected due to rate limit (%g per second)", app.Limits.ClientEventsPerSec)))
		return
	}
	ch, err := app.brokerChannel(name)
	if err != nil {
		pc.fail(err.Error())
		return
	}
	m := &broker.Message{Channel: ch, Event: f.Event, Origin: pc.c.ID()}
	m.Kind, m.Data = dataOf(f.Data)
	if _, _, err := s.door.Publish(pc.c.Context(), pc.caller().OnSocket(), m); err != nil {
		e := s.host.Error(err)
		if e.Code == wire.CodeRateLimited {
			pc.send(pusher.ErrorFrame(pusher.ErrClientEventRate, "Client event rejected due to rate limit: "+e.Message))
			return
		}
		// The stable code leads the message: Pusher's error frames have
		// no field for it.
		pc.fail("client event not published: " + e.Code + ": " + e.Message)
		return
	}
	app.hook(pusher.WebhookEvent{Name: "client_event", Channel: name, Event: f.Event, Data: string(m.Data), SocketID: pc.socketID, UserID: sub.userID})
}

// dataOf turns a frame's JSON data into a message's: a JSON string is its
// text (JSON text inside stays JSON), anything else JSON.
func dataOf(raw json.RawMessage) (broker.Kind, []byte) {
	var s string
	if len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &s) == nil {
		kind, _ := broker.ClassifyData("", []byte(s))
		if kind == broker.KindBinary {
			kind = broker.KindText
		}
		return kind, []byte(s)
	}
	if len(raw) == 0 {
		return broker.KindText, nil
	}
	return broker.KindJSON, append([]byte(nil), raw...)
}

// takeClientEvent spends one client event from the connection's bucket.
func (pc *conn) takeClientEvent(now time.Time) bool {
	rate := pc.app.Limits.ClientEventsPerSec
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.events == nil {
		pc.events = door.NewBucket(rate, now)
	}
	return pc.events.Take(rate, rate, now)
}

// Start is the connection_established frame (the runtime skips it for a
// refused connection).
func (pc *conn) Start(b *connrt.Batch) {
	if pc.app == nil {
		return
	}
	b.Add(textFrame(pusher.ConnectionEstablished(pc.socketID, pc.app.Limits.ActivityTimeoutSecs)))
}

// Message writes a broker message as a Pusher event; presence's member
// events become Pusher's member_added and member_removed.
func (pc *conn) Message(b *connrt.Batch, m *broker.Message) {
	name := pc.app.pusherChannel(m.Channel)
	event := m.Event
	data := m.Data
	if presence.Reserved(event) && pusher.IsPresence(name) {
		pc.mu.Lock()
		sub := pc.channels[name]
		pc.mu.Unlock()
		if sub == nil || sub.after.Epoch == m.Epoch && m.Seq <= sub.after.Seq {
			return // already in the member list the client has
		}
		var md struct {
			ID   string          `json:"id"`
			Info json.RawMessage `json:"info"`
		}
		json.Unmarshal(m.Data, &md)
		if event == presence.EventAdded {
			event = "pusher_internal:member_added"
			if md.Info == nil {
				md.Info = json.RawMessage("null")
			}
			data, _ = json.Marshal(map[string]any{"user_id": md.ID, "user_info": md.Info})
		} else {
			event = "pusher_internal:member_removed"
			data, _ = json.Marshal(map[string]any{"user_id": md.ID})
		}
	} else if m.Kind == broker.KindBinary {
		data = []byte(base64.StdEncoding.EncodeToString(m.Data))
	}
	if event == "" {
		event = broker.DefaultEvent
	}
	b.Add(textFrame(pusher.AppendEvent(nil, event, name, data, "")))
}

// Gap: Pusher has no such thing; the client is told under pushctl's own
// event name, so nothing is skipped silently.
func (pc *conn) Gap(b *connrt.Batch, g *broker.Gap) {
	b.Add(textFrame(pusher.Gap(pc.app.pusherChannel(g.Channel), g.From.String(), g.To.String())))
}

// Dropped: a subscription ended (its channel was deleted); the client is
// told with a pusher:error and the connection goes on.
func (pc *conn) Dropped(b *connrt.Batch, key string, err error) bool {
	name := pc.app.pusherChannel(key)
	pc.mu.Lock()
	sub := pc.channels[name]
	delete(pc.channels, name)
	pc.mu.Unlock()
	if sub != nil {
		pc.release(name, sub, true)
	}
	ae := pc.s.host.Error(err)
	b.Add(textFrame(pusher.ErrorFrame(0, "subscription to "+name+" ended: "+ae.Code+": "+ae.Message)))
	return true
}

// Close says why the connection ends with Pusher's codes: 4200 reconnect
// (shutdown, protocol errors), 4100 back off (slow consumer, stalled),
// 4009 (terminated, signin failed, the connect hook refused), and the
// refusals' 4001 (no such app), 4007 and 4008 (protocol version).
func (pc *conn) Close(reason error, code string) (int, string) {
	var ce *closeError
	if errors.As(reason, &ce) {
		return ce.code, ce.msg
	}
	switch code {
	case "client_closed", "write_error":
		return 0, ""
	case wire.CodeSlowConsumer, wire.CodeStalled:
		return pusher.CloseOverCapacity, code
	case wire.CodeShuttingDown:
		return pusher.CloseReconnect, "Server shutting down"
	case "protocol_error":
		return pusher.CloseReconnect, "protocol error"
	case wire.CodeTooLarge:
		return pusher.CloseReconnect, "frame too large"
	}
	return pusher.CloseReconnect, "internal error"
}

// terminate ends every connection of the app signed in as user.
func (a *liveApp) terminate(user string) int {
	a.mu.Lock()
	var conns []*conn
	for _, c := range a.sockets {
		c.mu.Lock()
		if c.user == user {
			conns = append(conns, c)
		}
		c.mu.Unlock()
	}
	a.mu.Unlock()
	for _, c := range conns {
		c.c.End(errTerminated)
	}
	return len(conns)
}

// origin returns the connection id a socket_id names in this app (0:
// none), so that the socket is left out of an event's delivery.
func (a *liveApp) origin(socketID string) uint64 {
	id, _, ok := strings.Cut(socketID, ".")
	if !ok {
		return 0
	}
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := a.sockets[n]; c != nil && c.socketID == socketID {
		return n
	}
	return 0
}
