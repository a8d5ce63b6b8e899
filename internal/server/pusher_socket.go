package server

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
	"github.com/pushctl/pushctl/internal/events"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/wire"
)

// Pusher Channels protocol 7 over the broker: a Pusher channel is the
// pushctl channel of the same name (after the app's prefix), so pub, sub,
// the TUI and bridges see Pusher traffic and Pusher clients see theirs.
// Presence is the registry's (member_added/member_removed on the channel).

// pusherState is every configured app and its live sockets.
type pusherState struct {
	byKey map[string]*pusherApp
	byID  map[string]*pusherApp
}

type pusherApp struct {
	pusher.App
	hooks *pusher.Sender // nil without webhooks
	// fromEvents: occupied and vacated come from the lifecycle events
	// (decided once for the cluster), not from this node's counts.
	fromEvents bool

	mu       sync.Mutex
	sockets  map[uint64]*pusherConn // by session id
	occupied map[string]int         // Pusher subscriptions by channel, on this node
}

func newPusherState(apps []pusher.App, s *Server) *pusherState {
	if len(apps) == 0 {
		return nil
	}
	ps := &pusherState{byKey: map[string]*pusherApp{}, byID: map[string]*pusherApp{}}
	em := s.door.Events()
	for _, a := range apps {
		pa := &pusherApp{App: a, sockets: map[uint64]*pusherConn{}, occupied: map[string]int{}}
		if len(a.Webhooks) > 0 {
			pa.hooks = pusher.NewSender(a, s.opts.PusherWebhookDelay, s.log)
			pa.fromEvents = em != nil
		}
		ps.byKey[a.Key], ps.byID[a.ID] = pa, pa
	}
	if em != nil {
		em.AddSink(ps.lifecycleEvent)
	}
	return ps
}

// pusherEventChannels names the channels of the apps with webhooks, whose
// occupancy the lifecycle events decide (nil: none).
func pusherEventChannels(apps []pusher.App) func(ch string) bool {
	var prefixes []string
	for _, a := range apps {
		if len(a.Webhooks) > 0 {
			prefixes = append(prefixes, a.Prefix)
		}
	}
	if len(prefixes) == 0 {
		return nil
	}
	return func(ch string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(ch, p) {
				return true
			}
		}
		return false
	}
}

// lifecycleEvent is the lifecycle events' word (on the node that decided
// it, once for the cluster) that a channel was occupied or vacated: the
// webhooks of the apps owning the channel are told.
func (ps *pusherState) lifecycleEvent(ev events.Event) {
	if ev.Name != events.ChannelOccupied && ev.Name != events.ChannelVacated {
		return
	}
	for _, a := range ps.byID {
		if a.hooks == nil || !strings.HasPrefix(ev.Channel, a.Prefix) {
			continue
		}
		a.hook(pusher.WebhookEvent{Name: ev.Name, Channel: a.pusherChannel(ev.Channel)})
	}
}

// presenceChanged tells the webhooks of the app owning a presence
// channel that a member came or went (once per member, not per
// connection, after the grace period for departures).
func (ps *pusherState) presenceChanged(ch, event, id string) {
	if ps == nil {
		return
	}
	for _, a := range ps.byID {
		name, ok := strings.CutPrefix(ch, a.Prefix)
		if !ok || !pusher.IsPresence(name) || a.hooks == nil {
			continue
		}
		a.hook(pusher.WebhookEvent{Name: event, Channel: name, UserID: id})
	}
}

func (ps *pusherState) close() {
	if ps == nil {
		return
	}
	for _, a := range ps.byID {
		if a.hooks != nil {
			a.hooks.Close()
		}
	}
}

// userChannelPart names, inside an app's prefix, the pushctl channel of a
// signed-in user: ':' cannot appear in a Pusher channel name, so no
// Pusher channel is confused with it.
const userChannelPart = "server-to-user:"

// brokerChannel maps a Pusher channel name to the app's pushctl channel.
func (a *pusherApp) brokerChannel(name string) (string, error) {
	if id, ok := strings.CutPrefix(name, pusher.UserPrefix); ok {
		ch := a.Prefix + userChannelPart + id
		if err := broker.ValidateChannel(ch); err != nil {
			return "", fmt.Errorf("user id %q cannot name a pushctl channel (use letters, digits and _-.@~+)", id)
		}
		return ch, nil
	}
	if err := pusher.ValidChannel(name); err != nil {
		return "", err
	}
	ch := a.Prefix + name
	if err := broker.ValidateChannel(ch); err != nil {
		return "", fmt.Errorf("%q is a valid Pusher channel but not a pushctl channel name: pushctl names are at most %d characters of letters, digits and _-.:@~+, in non-empty dot-separated segments", name, broker.MaxChannelLen)
	}
	return ch, nil
}

// pusherChannel maps a pushctl channel back to the Pusher name.
func (a *pusherApp) pusherChannel(ch string) string {
	name := strings.TrimPrefix(ch, a.Prefix)
	if id, ok := strings.CutPrefix(name, userChannelPart); ok {
		return pusher.UserPrefix + id
	}
	return name
}

func (a *pusherApp) limits() presence.Limits {
	return presence.Limits{MaxMembers: a.Limits.PresenceMembers, MaxInfo: a.Limits.UserInfo, MaxID: a.Limits.UserID}
}

// hook queues a webhook event, if the app has webhooks.
func (a *pusherApp) hook(ev pusher.WebhookEvent) {
	if a.hooks != nil {
		a.hooks.Send(ev)
	}
}

// occupy counts a Pusher subscription of name (delta ±1), telling
// webhooks when the channel becomes occupied or vacated, and returns the
// new count.
func (a *pusherApp) occupy(name string, delta int) int {
	a.mu.Lock()
	n := a.occupied[name] + delta
	if n <= 0 {
		delete(a.occupied, name)
		n = 0
	} else {
		a.occupied[name] = n
	}
	a.mu.Unlock()
	switch {
	case a.fromEvents:
	case delta > 0 && n == 1:
		a.hook(pusher.WebhookEvent{Name: "channel_occupied", Channel: name})
	case delta < 0 && n == 0:
		a.hook(pusher.WebhookEvent{Name: "channel_vacated", Channel: name})
	}
	return n
}

// pusherConn is one Pusher client connection.
type pusherConn struct {
	s        *Server
	app      *pusherApp
	ss       *session
	rd       *wsReader
	socketID string

	mu       sync.Mutex
	channels map[string]*pusherSub // by Pusher name
	user     string                // signed in as
	events   *door.Bucket          // client events allowed (made on the first)
	ident    *auth.Identity        // who the connect hook said (nil: none asked)
}

type pusherSub struct {
	member *presence.Membership
	userID string
	// after: presence events up to this position are already in the
	// member list the client was given.
	after broker.Position
}

// pusherWebSocket handles GET /app/{key}: a Pusher client.
func (s *Server) pusherWebSocket(w http.ResponseWriter, r *http.Request) error {
	if !websocket.IsWebSocketUpgrade(r) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "/app/{key} takes a WebSocket upgrade (the Pusher protocol); see docs/pusher.md")
	}
	release, err := s.connSlot(r)
	if err != nil {
		return err
	}
	app := s.pusher.byKey[r.PathValue("key")]
	pc := &pusherConn{s: s, app: app, channels: map[string]*pusherSub{}}
	ss := newSession(s, &pusherEncoder{pc: pc}, nil, true)
	ss.echo.Store(false) // client events are not sent back to their sender
	pc.ss = ss
	var b [4]byte
	rand.Read(b[:])
	pc.socketID = strconv.FormatUint(ss.id, 10) + "." + strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[:])>>1), 10)
	q := r.URL.Query()
	refuse := func(code int, msg string) {
		// Said after the upgrade: Pusher clients only read close codes.
		ss.mu.Lock()
		ss.ending = &pusherClose{code, msg}
		ss.mu.Unlock()
	}
	switch p := q.Get("protocol"); {
	case app == nil:
		refuse(pusher.CloseAppNotFound, "App key "+r.PathValue("key")+" does not exist")
	case p == "":
		refuse(pusher.CloseNoProtocol, "No protocol version supplied")
	case p != "7" && p != "6" && p != "5":
		refuse(pusher.CloseUnsupportedProto, "Unsupported protocol version "+p+"; pushctl speaks 5 to 7")
	case s.door.HasConnectHook():
		// The application's connect hook says who the connection is (its
		// user goes to the subscribe and publish hooks); Pusher's own
		// signatures still authorize its channels.
		id, err := s.connectIdentity(r)
		if err != nil {
			e := asError(err)
			code := pusher.CloseUnauthorized
			if e.Code == wire.CodeHookUnavailable {
				code = pusher.CloseReconnect // try again: the application may be back
			}
			refuse(code, closeReason(e))
		}
		pc.ident = id
	}
	s.runWebSocket(w, r, ss, nil, nil, release, func(rd *wsReader) {
		pc.rd = rd
		rd.onFrame = pc.frame
		rd.notText = func() []byte { return textFrame(pusher.ErrorFrame(0, "frames are JSON text")) }
		if app == nil {
			return
		}
		app.mu.Lock()
		app.sockets[ss.id] = pc
		app.mu.Unlock()
		ss.onEnd = append(ss.onEnd, pc.end)
	})
	return nil
}

// pusherClose ends a connection with a Pusher close code.
type pusherClose struct {
	code int
	msg  string
}

func (e *pusherClose) Error() string { return e.msg }

// errTerminated ends connections of a user the HTTP API terminated.
var errTerminated = &pusherClose{pusher.CloseUnauthorized, "Connection terminated by the server"}

// end releases what the connection held: presence (after the grace
// period), occupancy, its place among the app's sockets.
func (pc *pusherConn) end() {
	app := pc.app
	app.mu.Lock()
	delete(app.sockets, pc.ss.id)
	app.mu.Unlock()
	pc.mu.Lock()
	chans := pc.channels
	pc.channels = map[string]*pusherSub{}
	pc.mu.Unlock()
	for name, sub := range chans {
		pc.release(name, sub, false)
	}
}

// release undoes one subscription's presence and occupancy, and returns
// how many Pusher subscriptions the channel has left.
func (pc *pusherConn) release(name string, sub *pusherSub, now bool) int {
	if sub.member != nil {
		sub.member.Leave(now)
	}
	return pc.app.occupy(name, -1)
}

// endWith ends the connection for reason after the frame b.
func (pc *pusherConn) endWith(b []byte, reason error) {
	ss := pc.ss
	ss.mu.Lock()
	ss.control = append(ss.control, textFrame(b))
	if ss.ending == nil {
		ss.ending = reason
	}
	ss.mu.Unlock()
	ss.signal()
}

func (pc *pusherConn) send(b []byte) { pc.rd.reply(0, now(textFrame(b))) }

func (pc *pusherConn) fail(msg string) { pc.send(pusher.ErrorFrame(0, msg)) }

// frame executes one client frame.
func (pc *pusherConn) frame(data []byte) {
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

func (pc *pusherConn) subscribe(f *pusher.Frame) {
	s, ss, app := pc.s, pc.ss, pc.app
	var sd pusher.SubscribeData
	if err := pusher.DecodeData(f.Data, &sd); err != nil || sd.Channel == "" {
		pc.fail("pusher:subscribe needs data with a channel")
		return
	}
	name := sd.Channel
	refuse := func(kind, msg string, status int) {
		s.limitHit("pusher_subscribe")
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
			s.limitHit("bad_token")
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
	if n >= s.channelsPerConn() {
		s.limitHit("channels_per_conn")
		refuse("LimitReached", fmt.Sprintf("more than %d channels on one connection", s.channelsPerConn()), http.StatusForbidden)
		return
	}
	o := broker.SubscribeOptions{Channels: []string{ch}, QueueSize: s.opts.QueueSize, OnReady: ss.signal}
	cache := pusher.IsCache(name)
	if cache {
		o.Last = 1
	}
	ctx := pc.rd.context()
	var bsub *broker.Subscription
	var m *presence.Membership
	if pusher.IsPresence(name) {
		bsub, m, err = s.door.SubscribeAsMember(ctx, pc.caller(), o, member.UserID, member.UserInfo, app.limits())
	} else {
		bsub, err = s.door.Subscribe(ctx, pc.caller(), o)
	}
	if err != nil {
		e := asError(err)
		refuse(e.Code, e.Message, e.Status)
		return
	}
	psub := &pusherSub{}
	succeeded := []byte("{}")
	if m != nil {
		list, after, err := s.door.Members(ctx, ch)
		if err != nil {
			m.Leave(true)
			bsub.Close()
			e := asError(err)
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
	ss.mu.Lock()
	if ss.ending != nil {
		ss.mu.Unlock()
		bsub.Close()
		pc.mu.Lock()
		delete(pc.channels, name)
		pc.mu.Unlock()
		if psub.member != nil {
			psub.member.Leave(true)
		}
		return
	}
	ss.control = append(ss.control, frames...)
	ss.subs[ch] = bsub
	ss.mu.Unlock()
	ss.signal()
	if count := app.occupy(name, 1); app.SubscriptionCount && !pusher.IsPresence(name) {
		pc.subscriptionCount(name, count)
	}
}

// subscriptionCount tells a channel's subscribers (and the webhooks) how
// many Pusher subscriptions it has now.
func (pc *pusherConn) subscriptionCount(name string, count int) {
	app := pc.app
	app.mu.Lock()
	conns := make([]*pusherConn, 0, len(app.sockets))
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
			c.ss.send(frame)
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

func (pc *pusherConn) unsubscribe(f *pusher.Frame) {
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
		pc.ss.removeSub(ch, nil)
	}
	if n := pc.release(sd.Channel, sub, true); pc.app.SubscriptionCount && !pusher.IsPresence(sd.Channel) {
		pc.subscriptionCount(sd.Channel, n)
	}
}

// signin authenticates the connection as a user (pusher:signin).
func (pc *pusherConn) signin(f *pusher.Frame) {
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
		pc.s.limitHit("bad_token")
		pc.endWith(pusher.ErrorFrame(pusher.CloseUnauthorized, "signin failed: "+err.Error()), &pusherClose{pusher.CloseUnauthorized, "signin failed"})
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
func (pc *pusherConn) caller() door.Caller {
	c := door.Scoped(pc.app.Prefix, pc.rd.client)
	c.ID = pc.ident
	return c
}

// clientEvent publishes a client- event from this connection to the
// channel's other subscribers.
func (pc *pusherConn) clientEvent(f *pusher.Frame) {
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
		s.limitHit("publish_rate")
		pc.send(pusher.ErrorFrame(pusher.ErrClientEventRate, fmt.Sprintf("Client event rejected due to rate limit (%g per second)", app.Limits.ClientEventsPerSec)))
		return
	}
	ch, err := app.brokerChannel(name)
	if err != nil {
		pc.fail(err.Error())
		return
	}
	m := &broker.Message{Channel: ch, Event: f.Event, Origin: pc.ss.id}
	m.Kind, m.Data = dataOf(f.Data)
	if _, _, err := s.door.Publish(pc.rd.context(), pc.caller().OnSocket(), m); err != nil {
		e := asError(err)
		if e.Code == CodeRateLimited {
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
func (pc *pusherConn) takeClientEvent(now time.Time) bool {
	rate := pc.app.Limits.ClientEventsPerSec
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.events == nil {
		pc.events = door.NewBucket(rate, now)
	}
	return pc.events.Take(rate, rate, now)
}

// pusherEncoder writes broker events as Pusher frames.
type pusherEncoder struct{ pc *pusherConn }

func (*pusherEncoder) transport() int { return tPusher }

// start is the connection_established frame (or nothing, for a
// connection refused with a close code).
func (e *pusherEncoder) start(b *connrt.Batch, ss *session) {
	ss.mu.Lock()
	ending := ss.ending
	ss.mu.Unlock()
	if ending != nil || e.pc.app == nil {
		return
	}
	b.Add(textFrame(pusher.ConnectionEstablished(e.pc.socketID, e.pc.app.Limits.ActivityTimeoutSecs)))
}

func (e *pusherEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) {
	pc := e.pc
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

// gap: Pusher has no such thing; the client is told under pushctl's own
// event name, so nothing is skipped silently.
func (e *pusherEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap) {
	b.Add(textFrame(pusher.Gap(e.pc.app.pusherChannel(g.Channel), g.From.String(), g.To.String())))
}

func (*pusherEncoder) keepalive(b *connrt.Batch) bool { b.Add(pingFrame); return true }

// dropped: a subscription ended (its channel was deleted); the client is
// told with a pusher:error and the connection goes on.
func (e *pusherEncoder) dropped(b *connrt.Batch, key string, err error) bool {
	pc := e.pc
	name := pc.app.pusherChannel(key)
	pc.mu.Lock()
	sub := pc.channels[name]
	delete(pc.channels, name)
	pc.mu.Unlock()
	if sub != nil {
		pc.release(name, sub, true)
	}
	ae := asError(err)
	b.Add(textFrame(pusher.ErrorFrame(0, "subscription to "+name+" ended: "+ae.Code+": "+ae.Message)))
	return true
}

// end is the close frame, with Pusher's codes: 4200 reconnect (shutdown),
// 4100 back off (slow consumer, stalled), 4009 (terminated, signin failed).
func (e *pusherEncoder) end(ss *session, err error) []byte {
	if !ss.claimClose() || err == nil {
		return nil
	}
	var pcl *pusherClose
	if errors.As(err, &pcl) {
		return closeFrame(pcl.code, pcl.msg)
	}
	switch code := reasonCode(err); code {
	case "client_closed", "write_error":
		return nil
	case CodeSlowConsumer, CodeStalled:
		return closeFrame(pusher.CloseOverCapacity, code)
	case CodeShuttingDown:
		return closeFrame(pusher.CloseReconnect, "Server shutting down")
	case "protocol_error":
		return closeFrame(pusher.CloseReconnect, "protocol error")
	case CodeTooLarge:
		return closeFrame(pusher.CloseReconnect, "frame too large")
	}
	return closeFrame(pusher.CloseReconnect, "internal error")
}

// terminate ends every connection of app signed in as user.
func (a *pusherApp) terminate(user string) int {
	a.mu.Lock()
	var conns []*pusherConn
	for _, c := range a.sockets {
		c.mu.Lock()
		if c.user == user {
			conns = append(conns, c)
		}
		c.mu.Unlock()
	}
	a.mu.Unlock()
	for _, c := range conns {
		c.ss.end(errTerminated)
	}
	return len(conns)
}

// origin returns the session id a socket_id names in this app (0: none),
// so that the socket is left out of an event's delivery.
func (a *pusherApp) origin(socketID string) uint64 {
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
