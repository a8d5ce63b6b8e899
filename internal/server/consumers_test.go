package server_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

func lines(b []byte) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			m = map[string]any{"unparsed": l}
		}
		out = append(out, m)
	}
	return out
}

// The HTTP surface of durable consumers, and its refusals with stable codes.
func TestConsumersHTTP(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	code := func(resp_status int, body []byte) string {
		var r struct {
			Error struct{ Code string } `json:"error"`
		}
		json.Unmarshal(body, &r)
		return r.Error.Code
	}
	for _, c := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/consumers/w/fetch", "", 404, "consumer_not_found"},
		{"POST", "/consumers/bad%20name/fetch?channel=jobs", "", 400, "invalid_consumer"},
		{"POST", "/consumers/w/fetch?channel=jobs&max=0", "", 400, "invalid_parameter"},
		{"POST", "/consumers/w/fetch?channel=jobs&wait=forever", "", 400, "invalid_parameter"},
		{"POST", "/consumers/w/fetch?channel=a..b", "", 400, "invalid_channel"},
		{"GET", "/consumers/w/fetch?channel=jobs", "", 405, "method_not_allowed"},
		{"POST", "/consumers/w/ack", "1.1", 404, "consumer_not_found"},
		{"POST", "/pub/_dead.w", "x", 403, "forbidden"},
	} {
		resp, body := e.do(c.method, c.path, strings.NewReader(c.body))
		if resp.StatusCode != c.status || code(resp.StatusCode, body) != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, resp.StatusCode, body, c.status, c.code)
		}
	}
	if resp, body := e.do("PUT", "/consumers/w?channel=jobs&max_deliveries=2", nil); resp.StatusCode != 200 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	for _, d := range []string{"a", "b", "c"} {
		e.publish("jobs", d)
	}
	resp, body := e.do("POST", "/consumers/w/fetch?max=2&wait=10s", nil)
	ds := lines(body)
	if resp.StatusCode != 200 || len(ds) != 2 || ds[0]["type"] != "delivery" || ds[0]["data"] != "a" || ds[0]["delivery"] != "1.1" || ds[1]["data"] != "b" {
		t.Fatalf("fetch: %d %s", resp.StatusCode, body)
	}
	if _, body := e.do("POST", "/consumers/w/ack", strings.NewReader("1.1\n")); string(body) != "{\"acked\":1}\n" {
		t.Errorf("ack: %s", body)
	}
	if _, body := e.do("POST", "/consumers/w/nack?id=2.1", nil); string(body) != "{\"dead_lettered\":0,\"nacked\":1}\n" {
		t.Errorf("nack: %s", body)
	}
	if resp, body := e.do("POST", "/consumers/w/ack", strings.NewReader("1.01")); resp.StatusCode != 400 || code(400, body) != "invalid_delivery" {
		t.Errorf("ack 1.01: %d %s", resp.StatusCode, body)
	}
	// b again (its second delivery), then c.
	_, body = e.do("POST", "/consumers/w/fetch?max=5&wait=10s", nil)
	ds = lines(body)
	if len(ds) != 2 || ds[0]["data"] != "b" || ds[0]["deliveries"] != float64(2) || ds[0]["delivery"] != "2.2" || ds[1]["data"] != "c" {
		t.Fatalf("second fetch: %s", body)
	}
	if _, body := e.do("POST", "/consumers/w/nack", strings.NewReader("2.2")); string(body) != "{\"dead_lettered\":1,\"nacked\":1}\n" {
		t.Errorf("nack of the last delivery: %s", body)
	}
	_, body = e.do("GET", "/consumers/w", nil)
	var info map[string]any
	json.Unmarshal(body, &info)
	if info["dead_lettered"] != float64(1) || info["pending"] != float64(1) || info["inflight"] != float64(1) || info["acked"] != float64(1) {
		t.Errorf("info %s", body)
	}
	if _, body := e.do("GET", "/metrics", nil); !strings.Contains(string(body), `pushctl_consumer_dead_lettered_total{consumer="w"} 1`) ||
		!strings.Contains(string(body), `pushctl_consumer_pending{consumer="w"} 1`) {
		t.Errorf("metrics lack the consumer's:\n%s", body)
	}
	if resp, body := e.do("POST", "/consumers/w/fetch?channel=other", nil); resp.StatusCode != 409 || code(409, body) != "consumer_mismatch" {
		t.Errorf("other channel: %d %s", resp.StatusCode, body)
	}
	if resp, _ := e.do("DELETE", "/consumers/w", nil); resp.StatusCode != 200 {
		t.Errorf("delete: %d", resp.StatusCode)
	}
	if _, body := e.do("GET", "/consumers", nil); string(body) != "{\"consumers\":[]}\n" {
		t.Errorf("list after delete: %s", body)
	}
}

// Over WebSocket a consume frame pushes deliveries, at most max held at
// once; an ack frame makes room for the next.
func TestConsumersWebSocket(t *testing.T) {
	e := newEnv(t, broker.MemoryOptions{}, server.Options{})
	c := dialWS(t, e, "/ws")
	send := func(v string) {
		if err := c.WriteMessage(websocket.TextMessage, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"type":"consume","ref":"1","consumer":"w","channel":"jobs","max":1}`)
	if f := readFrame(t, c); f["type"] != "consuming" || f["ref"] != "1" || f["consumer"] != "w" {
		t.Fatalf("consume reply %v", f)
	}
	e.publish("jobs", "a")
	e.publish("jobs", "b")
	f := readFrame(t, c)
	if f["type"] != "delivery" || f["data"] != "a" || f["delivery"] != "1.1" {
		t.Fatalf("delivery %v", f)
	}
	send(`{"type":"ack","ref":"2","consumer":"w","ids":["1.1"]}`)
	if f := readFrame(t, c); f["type"] != "acked" || f["ref"] != "2" || f["acked"] != float64(1) {
		t.Fatalf("ack reply %v", f)
	}
	// b only now: the connection holds one at a time.
	if f := readFrame(t, c); f["type"] != "delivery" || f["data"] != "b" {
		t.Fatalf("second delivery %v", f)
	}
	send(`{"type":"nack","ref":"3","consumer":"w","ids":["2.1"],"delay":"0s"}`)
	if f := readFrame(t, c); f["type"] != "nacked" || f["nacked"] != float64(1) {
		t.Fatalf("nack reply %v", f)
	}
	if f := readFrame(t, c); f["type"] != "delivery" || f["data"] != "b" || f["deliveries"] != float64(2) {
		t.Fatalf("redelivery %v", f)
	}
	for _, bad := range []struct{ frame, code string }{
		{`{"type":"consume","ref":"4","consumer":"w"}`, "invalid_frame"},
		{`{"type":"consume","ref":"5","consumer":"x"}`, "consumer_not_found"},
		{`{"type":"ack","ref":"6","consumer":"w","ids":["x"]}`, "invalid_delivery"},
		{`{"type":"ack","ref":"7","consumer":"w"}`, "invalid_frame"},
		{`{"type":"nack","ref":"8","consumer":"w","ids":["2.2"],"delay":"2d"}`, "invalid_parameter"},
		{`{"type":"ack","ref":"9","consumer":"w","ids":"1.1"}`, "invalid_frame"},
	} {
		send(bad.frame)
		if f := readFrame(t, c); f["type"] != "error" || f["code"] != bad.code {
			t.Errorf("%s: %v, want %s", bad.frame, f, bad.code)
		}
	}
	// unconsume: no more deliveries come to the connection (it was
	// waiting with room for one: it would take c at once), and c goes to
	// whoever fetches.
	send(`{"type":"ack","ref":"10","consumer":"w","ids":["2.2"]}`)
	if f := readFrame(t, c); f["type"] != "acked" || f["acked"] != float64(1) {
		t.Fatalf("ack %v", f)
	}
	send(`{"type":"unconsume","ref":"11","consumer":"w"}`)
	if f := readFrame(t, c); f["type"] != "unconsumed" || f["ref"] != "11" || f["consumer"] != "w" {
		t.Fatalf("unconsume reply %v", f)
	}
	e.publish("jobs", "c")
	resp, body := e.do("POST", "/consumers/w/fetch?max=1&wait=5s", nil)
	if got := lines(body); resp.StatusCode != 200 || len(got) != 1 || got[0]["data"] != "c" {
		t.Fatalf("fetch after unconsume: %d %s", resp.StatusCode, body)
	}
	send(`{"type":"unconsume","ref":"12","consumer":"w"}`)
	if f := readFrame(t, c); f["type"] != "error" || f["code"] != "invalid_frame" {
		t.Fatalf("unconsume of what the connection does not consume: %v", f)
	}
	// Consuming again pushes what comes next; a delivery held when the
	// connection stops consuming may still be acked.
	send(`{"type":"consume","ref":"13","consumer":"w","max":1}`)
	if f := readFrame(t, c); f["type"] != "consuming" {
		t.Fatalf("consume again %v", f)
	}
	e.publish("jobs", "d")
	f = readFrame(t, c)
	if f["type"] != "delivery" || f["data"] != "d" {
		t.Fatalf("delivery after consuming again %v", f)
	}
	send(`{"type":"unconsume","ref":"14","consumer":"w"}`)
	if f := readFrame(t, c); f["type"] != "unconsumed" {
		t.Fatalf("unconsume %v", f)
	}
	send(`{"type":"ack","ref":"15","consumer":"w","ids":["` + f["delivery"].(string) + `"]}`)
	if f := readFrame(t, c); f["type"] != "acked" || f["acked"] != float64(1) {
		t.Fatalf("ack after unconsume %v", f)
	}
}
