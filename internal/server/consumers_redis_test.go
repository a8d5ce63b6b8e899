package server_test

import (
	"context"
	"net/http/httptest"
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
	hub := broker.NewHub()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	l, err := redislog.Open(ctx, redislog.Options{URL: srv.URL(), Prefix: "wsr:", NodeTimeout: 600 * time.Millisecond,
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
	e := &env{t: t, b: b, srv: hs, s: s}
	t.Cleanup(func() {
		hs.CloseClientConnections()
		eng.Close()
		b.Close()
		hs.Close()
	})
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
