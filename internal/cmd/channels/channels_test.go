package channels

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/server"
	"github.com/pushctl/pushctl/internal/server/servertest"
)

// TestChannels against a broker on loopback: the list as JSON, and
// delete.
func TestChannels(t *testing.T) {
	b, url := servertest.Start(t, server.Options{})
	ctx := context.Background()
	for _, ch := range []string{"a.one", "a.two", "b"} {
		b.Publish(ctx, &broker.Message{Channel: ch, Data: []byte("x")})
	}
	env := map[string]string{"PUSHCTL_SERVER": url}
	out, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdChannels), env, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var list []broker.ChannelInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 3 || list[0].Name != "a.one" || list[0].LastSeq != 1 || list[2].Name != "b" {
		t.Fatalf("channels: %s (%v)", out, err)
	}
	if _, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdChannels), env, "b", "--delete"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Channel(ctx, "b"); err == nil {
		t.Fatal("b was not deleted")
	}
	if _, _, err := cmdutil.RunForTest(ctx, cmdutil.Real(NewCmdChannels), map[string]string{"PUSHCTL_SERVER": "http://127.0.0.1:1"}, "--json"); err == nil {
		t.Fatal("no error from an unreachable broker")
	}
}
