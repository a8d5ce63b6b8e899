package server_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

// TestPatternResumeWithoutTimeIsRefused: a cursor for a pattern
// subscription that names some channels but has no "*=<time>" entry (and no
// since_time) cannot say where the channels it does not name start, so it
// is refused with invalid_position on every transport (issue 26: it started
// them silently at "now", losing what they held). With since_time or last
// it is a complete request and replays them.
func TestPatternResumeWithoutTimeIsRefused(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	a := e.publish("news.a", "a1")
	e.publish("news.b", "b1") // a channel the cursor does not name
	cursor := "news.a=" + a.ID

	refused := func(what string, status int, body []byte) {
		t.Helper()
		var eb struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		json.Unmarshal(body, &eb)
		if status != 400 || eb.Error.Code != "invalid_position" || !strings.Contains(eb.Error.Message, "*=<time>") {
			t.Errorf("%s: %d %s, want 400 invalid_position naming *=<time>", what, status, body)
		}
	}
	for _, tc := range []struct{ what, path string }{
		{"SSE Last-Event-ID", "/sub/news.>"},
		{"NDJSON since", "/sub/news.>?format=ndjson&since=" + urlQuery(cursor)},
		{"long-poll since", "/sub/news.>?poll=5s&since=" + urlQuery(cursor)},
		{"long-poll last_event_id", "/sub/news.>?poll=5s&last_event_id=" + urlQuery(cursor)},
	} {
		hdr := []string{"Accept", "text/event-stream"}
		if strings.HasPrefix(tc.what, "SSE") {
			hdr = append(hdr, "Last-Event-ID", cursor)
		}
		resp, body := e.do("GET", tc.path, nil, hdr...)
		refused(tc.what, resp.StatusCode, body)
	}

	c := dialWS(t, e, "/ws")
	c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"subscribe","ref":"r1","channels":["news.>"],"since":%q}`, cursor)))
	f := readFrame(t, c)
	if msg, _ := f["message"].(string); f["type"] != "error" || f["ref"] != "r1" || f["code"] != "invalid_position" || !strings.Contains(msg, "*=<time>") {
		t.Errorf("/ws subscribe: %v, want an invalid_position error for r1 naming *=<time>", f)
	}
	// A concrete channel beside the pattern does not make it complete.
	c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"subscribe","ref":"r2","channels":["news.a","news.>"],"since":%q}`, cursor)))
	if f := readFrame(t, c); f["type"] != "error" || f["ref"] != "r2" || f["code"] != "invalid_position" {
		t.Errorf("/ws subscribe to news.a and news.>: %v, want an invalid_position error for r2", f)
	}

	// Complete requests: the time (or count) for unnamed channels is given.
	pr, _ := e.poll("/sub/news.>?poll=5s&since=" + urlQuery(cursor) + "&since_time=2000-01-01T00:00:00Z")
	if got := pr.String(); got != "news.b=b1" {
		t.Errorf("long-poll with since_time: %q, want news.b=b1", got)
	}
	pr, _ = e.poll("/sub/news.>?poll=5s&last=10&since=" + urlQuery(cursor))
	if got := pr.String(); got != "news.b=b1" {
		t.Errorf("long-poll with last=10: %q, want news.b=b1", got)
	}
	c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"subscribe","ref":"r3","channels":["news.>"],"last":5,"since":%q}`, cursor)))
	if f := readFrame(t, c); f["type"] != "subscribed" {
		t.Fatalf("/ws subscribe with last: %v", f)
	}
	if f := readFrame(t, c); f["channel"] != "news.b" || f["data"] != "b1" {
		t.Errorf("/ws subscribe with last: %v, want news.b's b1", f)
	}
}
