package server_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/broker/redislog"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/redistest"
	"github.com/pushctl/pushctl/internal/server"
)

// A WebSocket connection consuming a consumer on Redis goes on after a
// short Redis outage (its fetch failed meanwhile); when the consumer is
// deleted its consuming ends with an error frame, and a consume frame
// for it, created again, is accepted.
func TestConsumersWebSocketSurvivesRedisOutage(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	e, b := redisConsumersEnv(t, srv, "wsr:")
	failed := make(chan error, 10)
	server.OnWSFetchError(func(err error) {
		select {
		case failed <- err:
		default:
		}
	})
	t.Cleanup(func() { server.OnWSFetchError(nil) })

	c := dialWS(t, e, "/ws")
	send := func(v string) {
		if err := c.WriteMessage(websocket.TextMessage, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"type":"consume","ref":"1","consumer":"w","channel":"jobs","max":1}`)
	if f := readFrame(t, c); f["type"] != "consuming" {
		t.Fatalf("consume reply %v", f)
	}
	srv.Kill()
	select {
	case <-failed:
	case <-time.After(15 * time.Second):
		t.Fatal("the fetch did not fail with Redis down")
	}
	srv.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := b.Publish(context.Background(), &broker.Message{Channel: "jobs", Data: []byte("a")})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after the restart: %v", err)
		}
	}
	f := readFrame(t, c)
	if f["type"] != "delivery" || f["data"] != "a" {
		t.Fatalf("after the outage: %v", f)
	}
	send(`{"type":"ack","ref":"3","consumer":"w","ids":["` + f["delivery"].(string) + `"]}`)
	if f := readFrame(t, c); f["type"] != "acked" || f["acked"] != float64(1) {
		t.Fatalf("ack %v", f)
	}
	// Deleted: the consuming ends for good, and may start again.
	if resp, body := e.do("DELETE", "/consumers/w", nil); resp.StatusCode != 200 && resp.StatusCode != 204 {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	if f := readFrame(t, c); f["type"] != "error" || f["code"] != "consumer_not_found" {
		t.Fatalf("after delete: %v", f)
	}
	send(`{"type":"consume","ref":"2","consumer":"w","channel":"jobs","max":1}`)
	if f := readFrame(t, c); f["type"] != "consuming" {
		t.Fatalf("consume after delete: %v", f)
	}
}

// redisConsumersEnv is a server whose broker and consumers are on srv,
// under prefix.
func redisConsumersEnv(t *testing.T, srv *redistest.Server, prefix string) (*env, broker.Broker) {
	t.Helper()
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: prefix, NodeTimeout: 600 * time.Millisecond,
		Retention: broker.Retention{HistorySize: 100}}, hub)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	b := broker.New(hub, l, broker.CoreOptions{})
	eng, err := consumer.NewRedis(b, consumer.RedisOptions{Client: l.Client(), Prefix: l.Prefix(), LeaseTTL: l.LeaseTTL()})
	if err != nil {
		t.Fatal(err)
	}
	s := server.New(b, server.Options{Consumers: eng})
	hs := httptest.NewServer(s)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		eng.Close()
		b.Close()
		hs.Close()
	})
	return &env{t: t, b: b, srv: hs, s: s}, b
}

// wsFetchErrors receives the errors of WebSocket consumes' fetches for
// the rest of the test.
func wsFetchErrors(t *testing.T) <-chan error {
	failed := make(chan error, 100)
	server.OnWSFetchError(func(err error) {
		select {
		case failed <- err:
		default:
		}
	})
	t.Cleanup(func() { server.OnWSFetchError(nil) })
	return failed
}

// While Redis, restarted, loads its data (and answers every command
// LOADING, for seconds with a large dataset), consumers on it are
// unavailable, not failing: a WebSocket connection's fetches are tried
// again and it gets no error frame, then the message published once Redis
// loaded is delivered to it; an HTTP fetch and an ack meanwhile are
// answered 503 broker_unavailable (before: 500 internal_error, and the
// WebSocket consuming ended with an internal_error frame).
func TestConsumersRedisLoading(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	e, b := redisConsumersEnv(t, srv, "wsl:")
	failed := wsFetchErrors(t)

	c := dialWS(t, e, "/ws")
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"consume","ref":"1","consumer":"w","channel":"jobs","max":1}`)); err != nil {
		t.Fatal(err)
	}
	if f := readFrame(t, c); f["type"] != "consuming" {
		t.Fatalf("consume reply %v", f)
	}
	srv.Ballast(50000) // about 5s of loading
	srv.Kill()
	select {
	case <-failed:
	case <-time.After(15 * time.Second):
		t.Fatal("the fetch did not fail with Redis down")
	}
	srv.RestartLoading()
	// A fetch while Redis loads: Redis is unavailable for now.
	deadline := time.After(20 * time.Second)
	for loading := false; !loading; {
		select {
		case err := <-failed:
			if strings.Contains(err.Error(), "LOADING") {
				loading = true
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Fatalf("a fetch while redis loads: %v, not broker.ErrUnavailable", err)
				}
			}
		case <-deadline:
			t.Fatal("no fetch while redis loaded")
		}
	}
	for _, req := range []struct{ path, body string }{
		{"/consumers/w/fetch?max=1", ""},
		{"/consumers/w/ack", "1.1"},
	} {
		// (A request that needs a new connection to Redis can first get
		// the dial error go-redis keeps for up to a second after Redis
		// was down: also 503 broker_unavailable.)
		for tries := 0; ; tries++ {
			resp, body := e.do("POST", req.path, strings.NewReader(req.body))
			if resp.StatusCode != 503 || !strings.Contains(string(body), `"broker_unavailable"`) {
				t.Fatalf("POST %s while redis loads: %d %s", req.path, resp.StatusCode, body)
			}
			if strings.Contains(string(body), "LOADING") {
				break
			}
			if !strings.Contains(string(body), "connection refused") || tries == 100 {
				t.Fatalf("POST %s while redis loads: %d %s", req.path, resp.StatusCode, body)
			}
			<-time.After(20 * time.Millisecond) // go-redis dials again every second
		}
	}
	if err := srv.WaitLoaded(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	pubDeadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := b.Publish(context.Background(), &broker.Message{Channel: "jobs", Data: []byte("a")})
		if err == nil {
			break
		}
		if time.Now().After(pubDeadline) {
			t.Fatalf("publish after loading: %v", err)
		}
	}
	f := readFrame(t, c)
	if f["type"] != "delivery" || f["data"] != "a" {
		t.Fatalf("after loading: %v", f)
	}
}

// While Redis refuses writes for want of room (here a failed save,
// MISCONF; over maxmemory, OOM, is the same), a publish and an HTTP fetch
// with a message to take are answered 507 store_failed naming why
// (before: 500 internal_error), a WebSocket consume stays attached (its
// fetches are tried again; before: an error frame ended it), and once
// Redis takes writes the WebSocket gets the message and the channel has
// nothing of the refused publish.
func TestConsumersRedisStoreRefused(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	e, b := redisConsumersEnv(t, srv, "full:")
	failed := wsFetchErrors(t)

	for _, name := range []string{"h", "w"} { // made on first use, nothing to take yet
		if resp, body := e.do("POST", "/consumers/"+name+"/fetch?channel=jobs&max=1&wait=0", nil); resp.StatusCode != 200 {
			t.Fatalf("fetch: %d %s", resp.StatusCode, body)
		}
	}
	if resp, body := e.do("POST", "/pub/jobs", strings.NewReader("before")); resp.StatusCode != 200 {
		t.Fatalf("publish: %d %s", resp.StatusCode, body)
	}
	srv.FailSaves()
	for _, req := range []struct{ path, body string }{
		{"/pub/jobs", "refused"},
		{"/consumers/h/fetch?max=1&wait=0", ""},
	} {
		resp, body := e.do("POST", req.path, strings.NewReader(req.body))
		if resp.StatusCode != 507 || !strings.Contains(string(body), `"store_failed"`) || !strings.Contains(string(body), "MISCONF") {
			t.Fatalf("POST %s while redis refuses writes: %d %s", req.path, resp.StatusCode, body)
		}
	}
	c := dialWS(t, e, "/ws")
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"consume","ref":"1","consumer":"w","max":1}`)); err != nil {
		t.Fatal(err)
	}
	if f := readFrame(t, c); f["type"] != "consuming" {
		t.Fatalf("consume reply %v", f)
	}
	select {
	case err := <-failed:
		if !errors.Is(err, broker.ErrStore) || !strings.Contains(err.Error(), "MISCONF") {
			t.Fatalf("a fetch while redis refuses writes: %v, not broker.ErrStore", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no fetch while redis refused writes")
	}
	srv.SavesWork()
	f := readFrame(t, c)
	if f["type"] != "delivery" || f["data"] != "before" {
		t.Fatalf("once redis took writes again: %v", f)
	}
	inf, err := b.Channel(context.Background(), "jobs")
	if err != nil || inf.LastSeq != 1 {
		t.Fatalf("channel: %+v %v, want only the message published before", inf, err)
	}
}
