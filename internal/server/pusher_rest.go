package server

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
)

// The Pusher HTTP API (/apps/{id}/…): every request is signed with the
// app's secret (see pusher.CheckRequest).

type pusherHandler func(w http.ResponseWriter, r *http.Request, app *pusherApp, body []byte) error

// maxPusherBody bounds an HTTP API request body before it is read.
const maxPusherBody = 1 << 20

// pusherAPI wraps h with the app lookup and the request signature check.
func (s *Server) pusherAPI(h pusherHandler) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		app := s.pusher.byID[r.PathValue("app")]
		if app == nil {
			return errorf(http.StatusNotFound, CodeNotFound, "no Pusher app %q here", r.PathValue("app"))
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPusherBody))
		if err != nil {
			return err
		}
		if err := app.CheckRequest(r.Method, r.URL.Path, r.URL.Query(), body, time.Now()); err != nil {
			s.limitHit("bad_token")
			return errorf(http.StatusUnauthorized, CodeTokenInvalid, "%v", err)
		}
		return h(w, r, app, body)
	}
}

// pusherEvent is one event of POST /events or /batch_events.
type pusherEvent struct {
	Name     string          `json:"name"`
	Data     json.RawMessage `json:"data"`
	Channels []string        `json:"channels"`
	Channel  string          `json:"channel"`
	SocketID string          `json:"socket_id"`
	Info     string          `json:"info"`
}

// publishEvent checks and publishes one event to its channels and returns
// the info asked for each.
func (s *Server) publishEvent(r *http.Request, app *pusherApp, ev *pusherEvent) (map[string]map[string]int, error) {
	chans := ev.Channels
	if ev.Channel != "" {
		chans = append(chans, ev.Channel)
	}
	switch {
	case ev.Name == "":
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "the event has no name")
	case len(ev.Name) > 200:
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "event names are at most 200 characters")
	case strings.HasPrefix(ev.Name, "pusher:"), strings.HasPrefix(ev.Name, "pusher_internal:"), presence.Reserved(ev.Name):
		return nil, errorf(http.StatusBadRequest, CodeInvalidParameter, "event name %q is reserved", ev.Name)
	case len(chans) == 0:
		return nil, errorf(http.StatusBadRequest, CodeInvalidChannel, "the event names no channel")
	case len(chans) > app.Limits.ChannelsPerTrigger:
		return nil, errorf(http.StatusBadRequest, CodeInvalidChannel, "an event may name at most %d channels", app.Limits.ChannelsPerTrigger)
	}
	kind, data := dataOf(ev.Data)
	if len(data) > app.Limits.EventData {
		return nil, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "event data is %d bytes, the limit is %d", len(data), app.Limits.EventData)
	}
	names := make([]string, len(chans))
	for i, name := range chans {
		ch, err := app.brokerChannel(name)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, CodeInvalidChannel, "%v", err)
		}
		names[i] = ch
	}
	origin := app.origin(ev.SocketID)
	ms := make([]*broker.Message, len(names))
	for i, ch := range names {
		ms[i] = &broker.Message{Channel: ch, Event: ev.Name, Kind: kind, Data: data, Origin: origin}
	}
	if _, err := s.door.PublishEach(r.Context(), door.Scoped(app.Prefix, s.clientKey(r)), ms); err != nil {
		return nil, err
	}
	if ev.Info == "" {
		return nil, nil
	}
	out := map[string]map[string]int{}
	for i, name := range chans {
		out[name] = s.pusherInfo(r, app, name, names[i], ev.Info)
	}
	return out, nil
}

// pusherInfo answers the info attributes asked of a channel:
// subscription_count (every subscriber of the channel on this node,
// Pusher or not) and user_count (presence channels).
func (s *Server) pusherInfo(r *http.Request, app *pusherApp, name, ch, info string) map[string]int {
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

// pusherEvents handles POST /apps/{app}/events.
func (s *Server) pusherEvents(w http.ResponseWriter, r *http.Request, app *pusherApp, body []byte) error {
	var ev pusherEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "the body must be a JSON event {name, data, channels}")
	}
	info, err := s.publishEvent(r, app, &ev)
	if err != nil {
		return err
	}
	if info == nil {
		return writeJSON(w, http.StatusOK, struct{}{})
	}
	return writeJSON(w, http.StatusOK, map[string]any{"channels": info})
}

// pusherBatch handles POST /apps/{app}/batch_events.
func (s *Server) pusherBatch(w http.ResponseWriter, r *http.Request, app *pusherApp, body []byte) error {
	var b struct {
		Batch []pusherEvent `json:"batch"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "the body must be {\"batch\":[events]}")
	}
	if len(b.Batch) == 0 || len(b.Batch) > app.Limits.BatchEvents {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "a batch has 1 to %d events", app.Limits.BatchEvents)
	}
	for i := range b.Batch { // all are checked before any is published
		ev := &b.Batch[i]
		if len(ev.Channels) > 0 {
			return errorf(http.StatusBadRequest, CodeInvalidParameter, "a batch event names one channel (\"channel\")")
		}
		if _, err := app.brokerChannel(ev.Channel); err != nil {
			return errorf(http.StatusBadRequest, CodeInvalidChannel, "event %d: %v", i, err)
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
			return writeJSON(w, http.StatusOK, map[string]any{"batch": infos})
		}
	}
	return writeJSON(w, http.StatusOK, struct{}{})
}

// pusherChannels handles GET /apps/{app}/channels: occupied channels.
func (s *Server) pusherChannels(w http.ResponseWriter, r *http.Request, app *pusherApp, _ []byte) error {
	q := r.URL.Query()
	prefix, info := q.Get("filter_by_prefix"), q.Get("info")
	if strings.Contains(info, "user_count") && !strings.HasPrefix(prefix, pusher.PresencePrefix) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "info=user_count needs filter_by_prefix=presence-")
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
			out[name] = s.pusherInfo(r, app, name, ch, info)
		}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"channels": out})
}

// pusherChannel handles GET /apps/{app}/channels/{channel}.
func (s *Server) pusherChannelInfo(w http.ResponseWriter, r *http.Request, app *pusherApp, _ []byte) error {
	name := r.PathValue("channel")
	ch, err := app.brokerChannel(name)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidChannel, "%v", err)
	}
	info := r.URL.Query().Get("info")
	if strings.Contains(info, "user_count") && !pusher.IsPresence(name) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "user_count is only for presence channels")
	}
	n, err := s.door.Subscribers(r.Context(), ch)
	if err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	out := map[string]any{"occupied": n > 0}
	for k, v := range s.pusherInfo(r, app, name, ch, info) {
		out[k] = v
	}
	return writeJSON(w, http.StatusOK, out)
}

// pusherUsers handles GET /apps/{app}/channels/{channel}/users.
func (s *Server) pusherUsers(w http.ResponseWriter, r *http.Request, app *pusherApp, _ []byte) error {
	name := r.PathValue("channel")
	if !pusher.IsPresence(name) {
		return errorf(http.StatusBadRequest, CodeInvalidParameter, "users are only listed for presence channels")
	}
	ch, err := app.brokerChannel(name)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeInvalidChannel, "%v", err)
	}
	list, _, err := s.door.Members(r.Context(), ch)
	if err != nil {
		return err
	}
	users := make([]map[string]string, 0, len(list))
	for _, m := range list {
		users = append(users, map[string]string{"id": m.ID})
	}
	return writeJSON(w, http.StatusOK, map[string]any{"users": users})
}

// pusherTerminate handles POST /apps/{app}/users/{user}/terminate_connections.
func (s *Server) pusherTerminate(w http.ResponseWriter, r *http.Request, app *pusherApp, _ []byte) error {
	app.terminate(r.PathValue("user"))
	return writeJSON(w, http.StatusOK, struct{}{})
}

// pusherRoutes adds the Pusher endpoints when apps are configured.
func (s *Server) pusherRoutes() {
	if s.pusher == nil {
		return
	}
	s.mux.Handle("/app/{key}", s.methods(map[string]handlerFunc{"GET": s.pusherWebSocket}))
	s.mux.Handle("/apps/{app}/events", s.methods(map[string]handlerFunc{"POST": s.pusherAPI(s.pusherEvents)}))
	s.mux.Handle("/apps/{app}/batch_events", s.methods(map[string]handlerFunc{"POST": s.pusherAPI(s.pusherBatch)}))
	s.mux.Handle("/apps/{app}/channels", s.methods(map[string]handlerFunc{"GET": s.pusherAPI(s.pusherChannels)}))
	s.mux.Handle("/apps/{app}/channels/{channel}", s.methods(map[string]handlerFunc{"GET": s.pusherAPI(s.pusherChannelInfo)}))
	s.mux.Handle("/apps/{app}/channels/{channel}/users", s.methods(map[string]handlerFunc{"GET": s.pusherAPI(s.pusherUsers)}))
	s.mux.Handle("/apps/{app}/users/{user}/terminate_connections", s.methods(map[string]handlerFunc{"POST": s.pusherAPI(s.pusherTerminate)}))
}
