package channels

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestChannelsAndStats against a broker on loopback: the list as JSON,
// delete, and stats.
func TestChannelsAndStats(t *testing.T) {
	b, url := servertest.Start(t, server.Options{})
	ctx := context.Background()
	for _, ch := range []string{"a.one", "a.two", "b"} {
		b.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("x")})
	}
	env := map[string]string{"PUSHCTL_SERVER": url}
	out, _, err := cmdutil.RunForTest(ctx, NewCmdChannels, env, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var list []broker.ChannelInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 3 || list[0].Name != "a.one" || list[0].LastSeq != 1 || list[2].Name != "b" {
		t.Fatalf("channels: %s (%v)", out, err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, NewCmdChannels, env, "b", "--delete"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Channel(ctx, "b"); err == nil {
		t.Fatal("b was not deleted")
	}
	out, _, err = cmdutil.RunForTest(ctx, NewCmdStats, env, "--json")
	var st map[string]any
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st["published"] != float64(3) || st["channels"] != float64(2) {
		t.Fatalf("stats: %s (%v)", out, err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, NewCmdChannels, map[string]string{"PUSHCTL_SERVER": "http://127.0.0.1:1"}, "--json"); err == nil {
		t.Fatal("no error from an unreachable broker")
	}
}

// TestWho: pushctl who lists the members that joined over WebSocket.
func TestWho(t *testing.T) {
	_, url := servertest.Start(t, server.Options{})
	ctx := context.Background()
	ws := "ws" + strings.TrimPrefix(url, "http") + "/ws"
	for _, m := range []map[string]any{{"id": "bob"}, {"id": "alice", "info": map[string]any{"name": "Alice"}}} {
		c, _, err := websocket.DefaultDialer.DialContext(ctx, ws, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		m["type"], m["channel"] = "join", "room"
		if err := c.WriteJSON(m); err != nil {
			t.Fatal(err)
		}
		var reply map[string]any
		if err := c.ReadJSON(&reply); err != nil || reply["type"] != "joined" {
			t.Fatalf("join: %v %v", reply, err)
		}
	}
	env := map[string]string{"PUSHCTL_SERVER": url}
	out, _, err := cmdutil.RunForTest(ctx, NewCmdWho, env, "room")
	if err != nil {
		t.Fatal(err)
	}
	if want := `[{"id":"alice","info":{"name":"Alice"},"connections":1},{"id":"bob","connections":1}]` + "\n"; out != want {
		t.Fatalf("who room: %q, want %q", out, want)
	}
	out, _, err = cmdutil.RunForTest(ctx, NewCmdWho, env, "empty")
	if err != nil || out != "[]\n" {
		t.Fatalf("who empty: %q %v", out, err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, NewCmdWho, env, "news.*"); err == nil {
		t.Fatal("who accepted a pattern")
	}
}
