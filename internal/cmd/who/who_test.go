package who

import (
	"context"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

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
	out, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdWho), env, "room")
	if err != nil {
		t.Fatal(err)
	}
	if want := `[{"id":"alice","info":{"name":"Alice"},"connections":1},{"id":"bob","connections":1}]` + "\n"; out != want {
		t.Fatalf("who room: %q, want %q", out, want)
	}
	out, _, err = cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdWho), env, "empty")
	if err != nil || out != "[]\n" {
		t.Fatalf("who empty: %q %v", out, err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdWho), env, "news.*"); err == nil {
		t.Fatal("who accepted a pattern")
	}
}
