package tui

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"github.com/pushctl/pushctl/internal/broker"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var t0 = time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)

func fixedClock() time.Time { return t0.Add(10 * time.Second) }

func newTestModel(t *testing.T, w, h int, channels ...string) (Model, *Store) {
	t.Helper()
	store := NewStore(1000, 1<<20, fixedClock)
	r := lipgloss.NewRenderer(&bytes.Buffer{})
	r.SetColorProfile(termenv.Ascii)
	m := New(Config{
		Source: "http://127.0.0.1:7070", Transport: "ndjson", Channels: channels, Store: store,
		Renderer: r, Location: time.UTC,
		Publish: func(context.Context, string, string, []byte) (string, error) { return "x-1", nil },
	})
	m.SetSize(w, h)
	return m, store
}

func msg(ch string, seq uint64, event string, kind broker.Kind, data string) *broker.Message {
	return &broker.Message{Channel: ch, Epoch: "dn2n", Seq: seq, Event: event, Kind: kind, Data: []byte(data),
		Time: t0.Add(time.Duration(seq) * 250 * time.Millisecond)}
}

func feed(s *Store) {
	s.SetState(State{Phase: "live"})
	s.Add(msg("news", 1, "message", broker.KindText, "deploy started"))
	s.Add(msg("chat.room", 1, "joined", broker.KindJSON, `{"user":"ada","roles":["admin","ops"],"age":36,"active":true}`))
	s.Add(msg("news", 2, "message", broker.KindText, "deploy done\nall green"))
	s.Add(msg("sensors.t1", 1, "message", broker.KindBinary, "\x00\x01\xfe\xffraw"))
	s.Add(msg("news", 3, "alert", broker.KindText, strings.Repeat("a very long line ", 20)))
}

func press(m Model, keys ...string) Model {
	for _, k := range keys {
		var km tea.KeyMsg
		switch k {
		case "enter":
			km = tea.KeyMsg{Type: tea.KeyEnter}
		case "esc":
			km = tea.KeyMsg{Type: tea.KeyEsc}
		case "tab":
			km = tea.KeyMsg{Type: tea.KeyTab}
		case "up":
			km = tea.KeyMsg{Type: tea.KeyUp}
		case " ":
			km = tea.KeyMsg{Type: tea.KeySpace, Runes: []rune{' '}}
		default:
			km = tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
		}
		nm, _ := m.Update(km)
		m = nm.(Model)
	}
	return m
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/tui -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (go test ./internal/tui -update rewrites it):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
	if lines := strings.Count(got, "\n") + 1; lines != screenH {
		t.Errorf("%s has %d lines, want %d", name, lines, screenH)
	}
}

const screenW, screenH = 80, 12

func TestScreens(t *testing.T) {
	m, s := newTestModel(t, screenW, screenH, "news", "chat.*", "sensors.>")
	feed(s)
	m.Refresh()
	golden(t, "list", m.View())

	golden(t, "paused", press(m, "up", "up").View())

	f := press(m, "/", "d", "e", "p", "l", "o", "y")
	golden(t, "filter-typing", f.View())
	golden(t, "filter-applied", press(f, "enter").View())
	golden(t, "filter-regexp", press(m, "/", "r", "e", ":", "^chat", "enter").View())

	golden(t, "detail-json", press(m, "up", "up", "up", "enter").View())
	golden(t, "detail-binary", press(m, "up", "enter").View())

	golden(t, "publish", press(m, "p", "tab", "@", "dtmf 5").View())

	s.SetState(State{Phase: "reconnecting", Attempt: 3, Err: "connection refused"})
	s.Gap()
	m.Refresh()
	golden(t, "reconnecting", m.View())

	m.help.ShowAll = true
	golden(t, "help", m.View())
}

func TestNarrowAndEmpty(t *testing.T) {
	m, s := newTestModel(t, 30, 8, "news")
	m.Refresh()
	out := m.View()
	if !strings.Contains(out, "waiting for messages") {
		t.Fatalf("empty screen:\n%s", out)
	}
	feed(s)
	m.Refresh()
	for i, line := range strings.Split(m.View(), "\n") {
		if w := lipgloss.Width(line); w > 30 {
			t.Fatalf("line %d is %d wide on a 30-column terminal: %q", i, w, line)
		}
	}
	nm, _ := m.Update(tea.WindowSizeMsg{Width: 120, Height: 40})
	if got := strings.Count(nm.(Model).View(), "\n") + 1; got != 40 {
		t.Fatalf("after resize: %d lines", got)
	}
}

func TestColorsWhenAvailable(t *testing.T) {
	store := NewStore(100, 1<<20, fixedClock)
	r := lipgloss.NewRenderer(&bytes.Buffer{})
	r.SetColorProfile(termenv.TrueColor)
	m := New(Config{Source: "s", Transport: "ndjson", Channels: []string{"news"}, Store: store, Renderer: r, Location: time.UTC})
	m.SetSize(80, 10)
	feed(store)
	m.Refresh()
	if !strings.Contains(m.View(), "\x1b[") {
		t.Fatal("no colour with a colour profile")
	}
}

// A burst far larger than the bounds: the UI keeps the newest and stays
// within its item and byte bounds, and counts everything.
func TestBurstStaysBounded(t *testing.T) {
	store := NewStore(1000, 256<<10, fixedClock)
	m := New(Config{Source: "s", Transport: "ndjson", Channels: []string{"b"}, Store: store, Location: time.UTC})
	m.SetSize(80, 24)
	payload := strings.Repeat("x", 500)
	for i := 1; i <= 200000; i++ {
		store.Add(&broker.Message{Channel: "b", Epoch: "e", Seq: uint64(i), Data: []byte(payload)})
		if i%7919 == 0 {
			m.Refresh()
		}
	}
	m.Refresh()
	if len(m.items) > 1000 || store.count > 1000 || store.bytes > 256<<10 {
		t.Fatalf("bounds exceeded: model %d items, store %d items %d bytes", len(m.items), store.count, store.bytes)
	}
	last := m.items[len(m.items)-1].Msg.Seq
	if last != 200000 {
		t.Fatalf("newest kept is %d", last)
	}
	if m.snap.Total != 200000 || m.snap.Bytes != 200000*500 {
		t.Fatalf("counters %d msgs %d bytes", m.snap.Total, m.snap.Bytes)
	}
	// The footer counts every message; the list shows the newest.
	if v := m.View(); !strings.Contains(v, "200000 msgs") || !strings.Contains(v, "95.4 MiB") || !strings.Contains(v, " b xxxx") {
		t.Fatalf("view:\n%s", v)
	}
}
