package presence

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/pushctl/pushctl/internal/broker"
)

type recorder struct {
	mu     sync.Mutex
	seq    uint64
	events []string
}

func (r *recorder) publish(_ context.Context, m *broker.Message) (*broker.Message, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	r.events = append(r.events, m.Event+" "+string(m.Data))
	return &broker.Message{Channel: m.Channel, Event: m.Event, Kind: m.Kind, Data: m.Data, Epoch: "e", Seq: r.seq}, nil
}

// FuzzValidateMember: ids and infos are accepted only within the limits.
func FuzzValidateMember(f *testing.F) {
	f.Add("alice", []byte(`{"name":"A"}`))
	f.Add("", []byte(nil))
	f.Add("a\x00", []byte(`1`))
	f.Add("b", []byte(`{`))
	lim := Limits{}
	f.Fuzz(func(t *testing.T, id string, info []byte) {
		if ValidateMember(id, info, lim) != nil {
			return
		}
		if id == "" || len(id) > 128 || len(info) > 1024 || strings.ContainsAny(id, "\x00\n\x7f") || len(info) > 0 && !json.Valid(info) {
			t.Fatalf("accepted %q %q", id, info)
		}
	})
}

// TestCloseFlushesPendingLeaves: at shutdown, members waiting out their
// grace period leave (their events are published), and joins are refused.
func TestCloseFlushesPendingLeaves(t *testing.T) {
	rec := &recorder{}
	r := New(rec.publish, 1<<62)
	m, err := r.Join(context.Background(), "c", "a", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m.Leave(false)
	if n, _ := r.Count(context.Background(), "c"); n != 1 {
		t.Fatalf("%d members during the grace period", n)
	}
	r.Close()
	if got := strings.Join(rec.events, "|"); got != `member_added {"id":"a"}|member_removed {"id":"a"}` {
		t.Fatalf("events %s", got)
	}
	if _, err := r.Join(context.Background(), "c", "b", nil, Limits{}); err == nil {
		t.Fatal("join after Close")
	}
}
