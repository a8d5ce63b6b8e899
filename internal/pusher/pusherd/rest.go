package pusherd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/pusher"
	"github.com/pushctl/pushctl/internal/wire"
)

// The Pusher HTTP API (/apps/{id}/…): every request is signed with the
// app's secret (see pusher.CheckRequest).

type apiHandler func(w http.ResponseWriter, r *http.Request, a *liveApp, body []byte) error

// maxBody bounds an HTTP API request body before it is read.
const maxBody = 1 << 20

// api wraps h with the app lookup and the request signature check.
func (s *Service) api(h apiHandler) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		app := s.byID[r.PathValue("app")]
		if app == nil {
			return wire.Errorf(http.StatusNotFound, wire.CodeNotFound, "no Pusher app %q here", r.PathValue("app"))
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			return err
		}
		if err := app.CheckRequest(r.Method, r.URL.Path, r.URL.Query(), body, time.Now()); err != nil {
			s.door.Refuse("bad_token")
			return wire.Errorf(http.StatusUnauthorized, wire.CodeTokenInvalid, "%v", err)
		}
		return h(w, r, app, body)
	}
}

// event is one event of POST /events or /batch_events.
type event struct {
	Name     string          `json:"name"`
	Data     json.RawMessage `json:"data"`
	Channels []string        `json:"channels"`
	Channel  string          `json:"channel"`
	SocketID string          `json:"socket_id"`
	Info     string          `json:"info"`
}

// publishEvent checks and publishes one event to its channels and returns
// the info asked for each.
func (s *Service) publishEvent(r *http.Request, app *liveApp, ev *event) (map[string]map[string]int, error) {
	chans := ev.Channels
	if ev.Channel != "" {
		chans = append(chans, ev.Channel)
	}
	switch {
	case ev.Name == "":
		return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "the event has no name")
	case len(ev.Name) > 200:
		return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "event names are at most 200 characters")
	case strings.HasPrefix(ev.Name, "pusher:"), strings.HasPrefix(ev.Name, "pusher_internal:"), presence.Reserved(ev.Name):
		return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "event name %q is reserved", ev.Name)
	case len(chans) == 0:
		return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "the event names no channel")
	case len(chans) > app.Limits.ChannelsPerTrigger:
		return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "an event may name at most %d channels", app.Limits.ChannelsPerTrigger)
	}
	kind, data := dataOf(ev.Data)
	if len(data) > app.Limits.EventData {
		return nil, wire.Errorf(http.StatusRequestEntityTooLarge, wire.CodeTooLarge, "event data is %d bytes, the limit is %d", len(data), app.Limits.EventData)
	}
	names := make([]string, len(chans))
	for i, name := range chans {
		ch, err := app.brokerChannel(name)
		if err != nil {
			return nil, wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "%v", err)
		}
		names[i] = ch
	}
	origin := app.origin(ev.SocketID)
	ms := make([]*broker.Message, len(names))
	for i, ch := range names {
		ms[i] = &broker.Message{Channel: ch, Event: ev.Name, Kind: kind, Data: data, Origin: origin}
	}
	if _, err := s.door.PublishEach(r.Context(), door.Scoped(app.Prefix, s.host.ClientKey(r)), ms); err != nil {
		return nil, err
	}
	if ev.Info == "" {
		return nil, nil
	}
	out := map[string]map[string]int{}
	for i, name := range chans {
		out[name] = s.info(r, app, name, names[i], ev.Info)
	}
	return out, nil
}

// info answers the info attributes asked of a channel:
// subscription_count (every subscriber of the channel on this node,
// Pusher or not) and user_count (presence channels).
func (s *Service) info(r *http.Request, app *liveApp, name, ch, info string) map[string]int {
	out := map[string]int{}
	for _, attr := range strings.Split(info, ",") {
		switch strings.TrimSpace(attr) {
		case "subscription_count":
			n, _ := s.door.Subscribers(r.Context(), ch)
			out["subscription_count"] = n
		case "user_count":
			if pusher.IsPresence(name) {
				out["user_count"], _ = s.door.MemberCount(r.Context(), ch)
			}
		}
	}
	return out
}

// events handles POST /apps/{app}/events.
func (s *Service) events(w http.ResponseWriter, r *http.Request, app *liveApp, body []byte) error {
	var ev event
	if err := json.Unmarshal(body, &ev); err != nil {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidJSON, "the body must be a JSON event {name, data, channels}")
	}
	info, err := s.publishEvent(r, app, &ev)
	if err != nil {
		return err
	}
	if info == nil {
		return wire.WriteJSON(w, http.StatusOK, struct{}{})
	}
	return wire.WriteJSON(w, http.StatusOK, map[string]any{"channels": info})
}

// batch handles POST /apps/{app}/batch_events.
func (s *Service) batch(w http.ResponseWriter, r *http.Request, app *liveApp, body []byte) error {
	var b struct {
		Batch []event `json:"batch"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidJSON, "the body must be {\"batch\":[events]}")
	}
	if len(b.Batch) == 0 || len(b.Batch) > app.Limits.BatchEvents {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "a batch has 1 to %d events", app.Limits.BatchEvents)
	}
	for i := range b.Batch { // all are checked before any is published
		ev := &b.Batch[i]
		if len(ev.Channels) > 0 {
			return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "a batch event names one channel (\"channel\")")
		}
		if _, err := app.brokerChannel(ev.Channel); err != nil {
			return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "event %d: %v", i, err)
		}
	}
	var infos []map[string]int
	for i := range b.Batch {
		info, err := s.publishEvent(r, app, &b.Batch[i])
		if err != nil {
			return fmt.Errorf("event %d (%d before it were published): %w", i, i, err)
		}
		if info != nil {
			infos = append(infos, info[b.Batch[i].Channel])
		} else {
			infos = append(infos, map[string]int{})
		}
	}
	for i := range b.Batch {
		if b.Batch[i].Info != "" {
			return wire.WriteJSON(w, http.StatusOK, map[string]any{"batch": infos})
		}
	}
	return wire.WriteJSON(w, http.StatusOK, struct{}{})
}

// channels handles GET /apps/{app}/channels: occupied channels.
func (s *Service) channels(w http.ResponseWriter, r *http.Request, app *liveApp, _ []byte) error {
	q := r.URL.Query()
	prefix, info := q.Get("filter_by_prefix"), q.Get("info")
	if strings.Contains(info, "user_count") && !strings.HasPrefix(prefix, pusher.PresencePrefix) {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "info=user_count needs filter_by_prefix=presence-")
	}
	occupied := map[string]bool{}
	app.mu.Lock()
	for name := range app.occupied {
		occupied[name] = true
	}
	app.mu.Unlock()
	list, err := s.door.Channels(r.Context())
	if err != nil {
		return err
	}
	for _, c := range list {
		if c.Subscribers > 0 && strings.HasPrefix(c.Name, app.Prefix) && !strings.Contains(c.Name[len(app.Prefix):], ":") && !broker.IsReserved(c.Name) {
			occupied[app.pusherChannel(c.Name)] = true
		}
	}
	out := map[string]map[string]int{}
	names := make([]string, 0, len(occupied))
	for name := range occupied {
		if strings.HasPrefix(name, prefix) && !strings.HasPrefix(name, "#") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		ch, _ := app.brokerChannel(name)
		out[name] = map[string]int{}
		if info != "" {
			out[name] = s.info(r, app, name, ch, info)
		}
	}
	return wire.WriteJSON(w, http.StatusOK, map[string]any{"channels": out})
}

// channelInfo handles GET /apps/{app}/channels/{channel}.
func (s *Service) channelInfo(w http.ResponseWriter, r *http.Request, app *liveApp, _ []byte) error {
	name := r.PathValue("channel")
	ch, err := app.brokerChannel(name)
	if err != nil {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "%v", err)
	}
	info := r.URL.Query().Get("info")
	if strings.Contains(info, "user_count") && !pusher.IsPresence(name) {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "user_count is only for presence channels")
	}
	n, err := s.door.Subscribers(r.Context(), ch)
	if err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	out := map[string]any{"occupied": n > 0}
	for k, v := range s.info(r, app, name, ch, info) {
		out[k] = v
	}
	return wire.WriteJSON(w, http.StatusOK, out)
}

// users handles GET /apps/{app}/channels/{channel}/users.
func (s *Service) users(w http.ResponseWriter, r *http.Request, app *liveApp, _ []byte) error {
	name := r.PathValue("channel")
	if !pusher.IsPresence(name) {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidParameter, "users are only listed for presence channels")
	}
	ch, err := app.brokerChannel(name)
	if err != nil {
		return wire.Errorf(http.StatusBadRequest, wire.CodeInvalidChannel, "%v", err)
	}
	list, _, err := s.door.Members(r.Context(), ch)
	if err != nil {
		return err
	}
	users := make([]map[string]string, 0, len(list))
	for _, m := range list {
		users = append(users, map[string]string{"id": m.ID})
	}
	return wire.WriteJSON(w, http.StatusOK, map[string]any{"users": users})
}

// terminate handles POST /apps/{app}/users/{user}/terminate_connections.
func (s *Service) terminate(w http.ResponseWriter, r *http.Request, app *liveApp, _ []byte) error {
	app.terminate(r.PathValue("user"))
	return wire.WriteJSON(w, http.StatusOK, struct{}{})
}
