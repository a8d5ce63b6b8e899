package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"sync"

	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/wire"
)

// presenceError maps a join's refusal to its code.
func presenceError(err error) *Error {
	switch {
	case errors.Is(err, presence.ErrFull):
		return &Error{Status: http.StatusConflict, Code: wire.CodePresenceFull, Message: err.Error()}
	case errors.Is(err, presence.ErrInfoTooLong):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: err.Error()}
	case errors.Is(err, presence.ErrBadMember):
		return &Error{Status: http.StatusBadRequest, Code: wire.CodeInvalidMember, Message: err.Error()}
	}
	return nil
}

// memberOf decides who id joins a channel's presence as: the member its
// token names (a client cannot claim another), else the one the client
// names when tokens are off.
func (s *Server) memberOf(id *auth.Identity, asked string, info json.RawMessage) (string, json.RawMessage, error) {
	if member, tinfo, ok := id.PresenceID(); ok {
		if asked != "" && asked != member {
			return "", nil, errorf(http.StatusForbidden, CodeForbidden, "the token makes this connection member %q, not %q", member, asked)
		}
		if tinfo != nil {
			info = tinfo
		}
		return member, info, nil
	}
	if s.door.Auth().TokensEnabled() {
		return "", nil, errorf(http.StatusForbidden, CodeForbidden, "joining presence needs a token that names the member (pushctl token create --member ID)")
	}
	if asked == "" {
		return "", nil, errorf(http.StatusBadRequest, wire.CodeInvalidMember, "join needs the member's \"id\"")
	}
	return asked, info, nil
}

// memberships are one connection's presence, by channel.
type memberships struct {
	mu sync.Mutex
	m  map[string]*presence.Membership
}

func (ms *memberships) get(channel string) *presence.Membership {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.m[channel]
}

func (ms *memberships) add(m *presence.Membership) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.m == nil {
		ms.m = map[string]*presence.Membership{}
	}
	if ms.m[m.Channel()] != nil {
		return false
	}
	ms.m[m.Channel()] = m
	return true
}

func (ms *memberships) take(channel string) *presence.Membership {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m := ms.m[channel]
	delete(ms.m, channel)
	return m
}

func (ms *memberships) count() int {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return len(ms.m)
}

// leaveAll ends every membership: the connection dropped, so each member
// stays for the grace period in case it comes back.
func (ms *memberships) leaveAll() {
	ms.mu.Lock()
	m := ms.m
	ms.m = nil
	ms.mu.Unlock()
	for _, x := range m {
		x.Leave(false)
	}
}

// join executes a join frame.
func (rd *wsReader) join(f *wire.ClientFrame) []byte {
	s := rd.s
	if err := broker.ValidateChannel(f.Channel); err != nil {
		return errFrame(f.Ref, err)
	}
	c := rd.caller()
	if err := s.door.Allow(c, auth.Subscribe, f.Channel); err != nil {
		return errFrame(f.Ref, err)
	}
	member, info, err := s.memberOf(c.ID, f.ID, f.Info)
	if err != nil {
		return errFrame(f.Ref, err)
	}
	if m := rd.members.get(f.Channel); m != nil {
		return errFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidParameter, "already joined %s as %q; leave first", f.Channel, m.ID()))
	}
	if limit := s.channelsPerConn(); rd.members.count() >= limit {
		s.limitHit("channels_per_conn")
		return errFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidParameter, "more than %d joins on one connection", limit))
	}
	m, err := s.door.Join(rd.context(), c, f.Channel, member, info, s.opts.Presence)
	if err != nil {
		return errFrame(f.Ref, err)
	}
	if !rd.members.add(m) { // a join of the same channel raced this one
		m.Leave(true)
		return errFrame(f.Ref, errorf(http.StatusBadRequest, CodeInvalidParameter, "already joined %s; leave first", f.Channel))
	}
	list, _, err := s.door.Members(rd.context(), f.Channel)
	if err != nil {
		rd.members.take(f.Channel)
		m.Leave(true)
		return errFrame(f.Ref, err)
	}
	b, _ := json.Marshal(struct {
		Type    string            `json:"type"`
		Ref     string            `json:"ref,omitempty"`
		Channel string            `json:"channel"`
		ID      string            `json:"id"`
		Members []presence.Member `json:"members"`
	}{wire.TypeJoined, f.Ref, f.Channel, member, list})
	return textFrame(b)
}

// leave executes a leave frame: the member leaves at once (if this was
// its last connection).
func (rd *wsReader) leave(f *wire.ClientFrame) []byte {
	m := rd.members.take(f.Channel)
	if m == nil {
		return errFrame(f.Ref, errorf(http.StatusBadRequest, wire.CodeNotMember, "this connection has not joined %q", f.Channel))
	}
	m.Leave(true)
	b, _ := json.Marshal(struct {
		Type    string `json:"type"`
		Ref     string `json:"ref,omitempty"`
		Channel string `json:"channel"`
	}{wire.TypeLeft, f.Ref, f.Channel})
	return textFrame(b)
}

// channelPresence handles GET /channels/{channel}/presence.
func (s *Server) channelPresence(w http.ResponseWriter, r *http.Request) error {
	name, err := s.channelAccess(r, auth.Subscribe)
	if err != nil {
		return err
	}
	list, _, err := s.door.Members(r.Context(), name)
	if err != nil {
		return err
	}
	if list == nil {
		list = []presence.Member{}
	}
	return writeJSON(w, http.StatusOK, struct {
		Channel string            `json:"channel"`
		Count   int               `json:"count"`
		Members []presence.Member `json:"members"`
	}{name, len(list), list})
}
