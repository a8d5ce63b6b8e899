package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/presence"
	"github.com/pushctl/pushctl/internal/server"
)

// wsDo sends a frame and returns the next frame read.
func wsDo(t *testing.T, c *websocket.Conn, frame map[string]any) map[string]any {
	t.Helper()
	if err := c.WriteJSON(frame); err != nil {
		t.Fatal(err)
	}
	return readFrame(t, c)
}

func wsJoin(t *testing.T, c *websocket.Conn, channel, id string, info any) map[string]any {
	t.Helper()
	f := wsDo(t, c, map[string]any{"type": "join", "channel": channel, "id": id, "info": info, "ref": "j"})
	if f["type"] != "joined" || f["ref"] != "j" {
		t.Fatalf("join %s as %s: %v", channel, id, f)
	}
	return f
}

type presenceList struct {
	Channel string            `json:"channel"`
	Count   int               `json:"count"`
	Members []presence.Member `json:"members"`
}

func (e *env) presence(ch string) presenceList {
	e.t.Helper()
	resp, body := e.do("GET", "/channels/"+ch+"/presence", nil)
	if resp.StatusCode != 200 {
		e.t.Fatalf("presence of %s: %d %s", ch, resp.StatusCode, body)
	}
	var l presenceList
	if err := json.Unmarshal(body, &l); err != nil {
		e.t.Fatal(err)
	}
	return l
}

// waitPresence waits (up to 10s, re-reading the list whenever it changes
// is not observable otherwise) until cond holds for the channel's list.
func (e *env) waitPresence(ch string, cond func(presenceList) bool) presenceList {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := e.presence(ch)
		if cond(l) {
			return l
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("presence of %s never reached the expected state: %+v", ch, l)
		}
		e.waitSubs(ch, 0) // a round trip to the broker, not a sleep
	}
}

// nextEvent reads the next message frame and returns its event and data.
func nextEvent(t *testing.T, c *websocket.Conn) (string, string) {
	t.Helper()
	f := readFrame(t, c)
	if f["type"] != "message" {
		t.Fatalf("want a message, got %v", f)
	}
	data, _ := json.Marshal(f["data"])
	ev, _ := f["event"].(string)
	return ev, string(data)
}

// TestPresenceMembersJoinAndLeave: a member with two connections is one
// member; joins and leaves are events on the channel, in order with its
// messages; a dropped connection leaves after the grace period, at once
// on a leave frame; GET /channels/{ch}/presence and channel info agree.
func TestPresenceMembersJoinAndLeave(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{PresenceGrace: 300 * time.Millisecond})
	watcher := dialWS(t, e, "/ws")
	wsSubscribe(t, watcher, map[string]any{"channels": []string{"room"}})

	a1 := dialWS(t, e, "/ws")
	f := wsJoin(t, a1, "room", "alice", map[string]any{"name": "Alice"})
	if got, _ := json.Marshal(f["members"]); string(got) != `[{"connections":1,"id":"alice","info":{"name":"Alice"}}]` {
		t.Fatalf("joined reply members: %s", got)
	}
	if ev, data := nextEvent(t, watcher); ev != "member_added" || data != `{"id":"alice","info":{"name":"Alice"}}` {
		t.Fatalf("watcher got %s %s, want member_added of alice", ev, data)
	}

	// A second connection of alice: no event, two connections.
	a2 := dialWS(t, e, "/ws")
	wsJoin(t, a2, "room", "alice", nil)
	e.publish("room", "marker-1")
	if ev, data := nextEvent(t, watcher); ev != "message" || data != `"marker-1"` {
		t.Fatalf("after alice's second join the watcher got %s %s, want only marker-1", ev, data)
	}
	l := e.presence("room")
	if l.Count != 1 || len(l.Members) != 1 || l.Members[0].ID != "alice" || l.Members[0].Connections != 2 {
		t.Fatalf("presence: %+v, want alice with 2 connections", l)
	}
	resp, body := e.do("GET", "/channels/room", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"members":1`) {
		t.Fatalf("channel info: %d %s, want members 1", resp.StatusCode, body)
	}

	// Leaving one connection keeps the member.
	if f := wsDo(t, a1, map[string]any{"type": "leave", "channel": "room", "ref": "l"}); f["type"] != "left" || f["ref"] != "l" {
		t.Fatalf("leave reply: %v", f)
	}
	e.publish("room", "marker-2")
	if ev, data := nextEvent(t, watcher); ev != "message" || data != `"marker-2"` {
		t.Fatalf("after one of two connections left the watcher got %s %s, want marker-2", ev, data)
	}
	if f := wsDo(t, a1, map[string]any{"type": "leave", "channel": "room", "ref": "l2"}); f["code"] != "not_a_member" {
		t.Fatalf("second leave: %v, want not_a_member", f)
	}

	// The last connection drops: after the grace period alice leaves.
	a2.Close()
	if ev, data := nextEvent(t, watcher); ev != "member_removed" || data != `{"id":"alice"}` {
		t.Fatalf("watcher got %s %s, want member_removed of alice", ev, data)
	}
	if l := e.presence("room"); l.Count != 0 || len(l.Members) != 0 {
		t.Fatalf("presence after alice left: %+v", l)
	}
}

// TestPresenceQuickReconnectIsNotALeave: a member whose connection drops
// and who joins again within the grace period never leaves.
func TestPresenceQuickReconnectIsNotALeave(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{PresenceGrace: time.Minute})
	watcher := dialWS(t, e, "/ws")
	wsSubscribe(t, watcher, map[string]any{"channels": []string{"room"}})
	b1 := dialWS(t, e, "/ws")
	wsJoin(t, b1, "room", "bob", nil)
	if ev, _ := nextEvent(t, watcher); ev != "member_added" {
		t.Fatalf("got %s, want member_added", ev)
	}
	b1.Close()
	e.waitPresence("room", func(l presenceList) bool { return len(l.Members) == 1 && l.Members[0].Connections == 0 })
	b2 := dialWS(t, e, "/ws")
	wsJoin(t, b2, "room", "bob", nil)
	e.publish("room", "marker")
	if ev, data := nextEvent(t, watcher); ev != "message" || data != `"marker"` {
		t.Fatalf("after bob reconnected the watcher got %s %s, want only the marker", ev, data)
	}
	// An explicit leave does not wait for the grace period.
	wsDo(t, b2, map[string]any{"type": "leave", "channel": "room"})
	if ev, _ := nextEvent(t, watcher); ev != "member_removed" {
		t.Fatalf("got %s, want member_removed at once", ev)
	}
}

// TestPresenceLimitsAndBadInput: members per channel, info size, bad ids
// and the reserved event names get clear errors and change nothing.
func TestPresenceLimitsAndBadInput(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Presence: presence.Limits{MaxMembers: 2, MaxInfo: 64}})
	c := dialWS(t, e, "/ws")
	for i, id := range []string{"m1", "m2"} {
		cc := c
		if i > 0 {
			cc = dialWS(t, e, "/ws")
		}
		wsJoin(t, cc, "full", id, nil)
	}
	third := dialWS(t, e, "/ws")
	cases := []struct {
		frame map[string]any
		code  string
	}{
		{map[string]any{"type": "join", "channel": "full", "id": "m3"}, "presence_full"},
		{map[string]any{"type": "join", "channel": "other", "id": "big", "info": strings.Repeat("x", 100)}, "message_too_large"},
		{map[string]any{"type": "join", "channel": "other", "id": ""}, "invalid_member"},
		{map[string]any{"type": "join", "channel": "other", "id": strings.Repeat("i", 129)}, "invalid_member"},
		{map[string]any{"type": "join", "channel": "other", "id": "a\x01b"}, "invalid_member"},
		{map[string]any{"type": "join", "channel": "news.*", "id": "p"}, "invalid_channel"},
		{map[string]any{"type": "publish", "channel": "full", "event": "member_added", "data": map[string]any{"id": "forged"}}, "invalid_parameter"},
	}
	for _, tc := range cases {
		if f := wsDo(t, third, tc.frame); f["type"] != "error" || f["code"] != tc.code {
			t.Errorf("%v: got %v, want error %s", tc.frame, f, tc.code)
		}
	}
	resp, body := e.do("POST", "/pub/full?event=member_removed", strings.NewReader(`{"id":"m1"}`))
	if resp.StatusCode != 400 || !strings.Contains(string(body), "reserved") {
		t.Errorf("HTTP publish of member_removed: %d %s, want 400 reserved", resp.StatusCode, body)
	}
	if l := e.presence("full"); l.Count != 2 {
		t.Errorf("full has %+v, want m1 and m2 only", l)
	}
	if l := e.presence("other"); l.Count != 0 {
		t.Errorf("other has %+v, want nobody", l)
	}
}

// TestPresenceTokenNamesTheMember: with tokens, the member id comes from
// the token and cannot be claimed otherwise.
func TestPresenceTokenNamesTheMember(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Auth: auth.New(auth.Config{Secret: secret})})
	alice := tok(t, auth.Grants{Subscribe: []string{"room.*"}, Presence: &auth.Presence{ID: "alice", Info: json.RawMessage(`{"role":"admin"}`)}}, time.Minute)
	plain := tok(t, auth.Grants{Subscribe: []string{"room.*"}}, time.Minute)

	c := dialWS(t, e, "/ws?token="+alice)
	if f := wsDo(t, c, map[string]any{"type": "join", "channel": "room.1", "id": "mallory"}); f["code"] != "forbidden" {
		t.Fatalf("claiming another id: %v, want forbidden", f)
	}
	if f := wsDo(t, c, map[string]any{"type": "join", "channel": "room.2", "id": "alice"}); f["code"] != "" && f["type"] != "joined" {
		t.Fatalf("join room.2: %v", f)
	}
	f := wsDo(t, c, map[string]any{"type": "join", "channel": "room.1", "info": map[string]any{"role": "forged"}})
	if got, _ := json.Marshal(f["members"]); f["id"] != "alice" || string(got) != `[{"connections":1,"id":"alice","info":{"role":"admin"}}]` {
		t.Fatalf("join with the token's id: %v", f)
	}
	if f := wsDo(t, c, map[string]any{"type": "join", "channel": "other", "id": "alice"}); f["code"] != "forbidden" {
		t.Fatalf("join outside the grants: %v, want forbidden", f)
	}
	c2 := dialWS(t, e, "/ws?token="+plain)
	if f := wsDo(t, c2, map[string]any{"type": "join", "channel": "room.1", "id": "bob"}); f["code"] != "forbidden" {
		t.Fatalf("join with a token that names no member: %v, want forbidden", f)
	}
	// The list needs subscribe permission too.
	resp, _ := e.do("GET", "/channels/room.1/presence", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("presence without a token: %d", resp.StatusCode)
	}
	resp, body := e.do("GET", "/channels/room.1/presence", nil, "Authorization", "Bearer "+plain)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"id":"alice"`) {
		t.Fatalf("presence with a token: %d %s", resp.StatusCode, body)
	}
}

// TestPresenceFloodIsRateLimited: joins count against the publish rate,
// as each one publishes an event.
func TestPresenceFloodIsRateLimited(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{Limits: server.Limits{PublishRate: 1, PublishBurst: 3}})
	c := dialWS(t, e, "/ws")
	limited := 0
	for i := range 10 {
		f := wsDo(t, c, map[string]any{"type": "join", "channel": fmt.Sprintf("flood.%d", i), "id": "x"})
		if f["code"] == "rate_limited" {
			limited++
		}
	}
	if limited < 6 {
		t.Fatalf("%d of 10 quick joins were rate limited, want at least 6", limited)
	}
}
