package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pushctl/pushctl/internal/auth"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/server"
)

func heapMiB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapInuse) / (1 << 20)
}

// TestAbuse runs a hostile campaign against a real server on loopback
// while a well-behaved subscriber and publisher use it: the server stays
// up, memory stays bounded, and the well-behaved client loses nothing.
func TestAbuse(t *testing.T) {
	b := broker.NewMemory(broker.MemoryOptions{Retention: broker.Retention{HistorySize: 100}})
	defer b.Close()
	good := auth.Grants{Publish: []string{"good", "flood.>"}, Subscribe: []string{"good", "flood.>"}}
	s := server.New(b, server.Options{
		MaxMessageSize: 64 << 10,
		Auth:           auth.New(auth.Config{Secret: secret}),
		Limits:         server.Limits{ConnsPerIP: 200, ChannelsPerConn: 32, ReadTimeout: time.Second},
	})
	srv := httptest.NewUnstartedServer(s)
	srv.Config.ReadHeaderTimeout = time.Second
	srv.Config.MaxHeaderBytes = 16 << 10
	srv.Start()
	defer srv.Close()
	e := &env{t: t, b: b, srv: srv, s: s}
	token := tok(t, good, time.Hour)

	// The well-behaved subscriber, connected throughout.
	req, _ := http.NewRequest("GET", srv.URL+"/sub/good?format=raw", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	goodSub, err := http.DefaultClient.Do(req)
	if err != nil || goodSub.StatusCode != 200 {
		t.Fatalf("good subscriber: %v", err)
	}
	defer goodSub.Body.Close()
	e.waitSubs("good", 1)
	received := make(chan string, 10000)
	go func() {
		br := bufio.NewReader(goodSub.Body)
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				close(received)
				return
			}
			received <- strings.TrimSuffix(l, "\n")
		}
	}()
	goodSent := 0
	publishGood := func() {
		goodSent++
		req, _ := http.NewRequest("POST", srv.URL+"/pub/good", strings.NewReader(fmt.Sprint("g", goodSent)))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("well-behaved publish %d failed: %v %v", goodSent, err, resp)
		}
		resp.Body.Close()
	}

	before := heapMiB()
	codes := map[string]int{}
	var mu sync.Mutex
	count := func(k string) { mu.Lock(); codes[k]++; mu.Unlock() }
	raw := func(payload string) string { // a raw request on its own connection
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, payload)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	do := func(method, path, body string, hdr ...string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			count("transport error")
			return
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		count(fmt.Sprint(resp.StatusCode))
	}

	// 1. Malformed upgrades.
	for _, h := range []string{
		"GET /sub/good HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET /sub/good HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: x\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
		"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n",
	} {
		count("raw: " + strings.SplitN(raw(h), " ", 3)[1])
	}
	publishGood()
	// 2. Oversized headers and bodies.
	count("raw: " + strings.SplitN(raw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n"), " ", 3)[1])
	do("POST", "/pub/good", strings.Repeat("x", 1<<20), "Authorization", "Bearer "+token)
	do("POST", "/pub", strings.Repeat(`{"channel":"good","data":"`+strings.Repeat("y", 100<<10)+`"}`+"\n", 5), "Authorization", "Bearer "+token)
	publishGood()
	// 3. Slowloris: headers never finished, bodies dribbled.
	var slow sync.WaitGroup
	for i := 0; i < 20; i++ {
		slow.Add(1)
		go func() {
			defer slow.Done()
			c, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				count("slowloris cut")
			} else {
				count("slowloris answered")
			}
		}()
	}
	slow.Add(1)
	go func() {
		defer slow.Done()
		c, _ := net.Dial("tcp", srv.Listener.Addr().String())
		defer c.Close()
		io.WriteString(c, "POST /pub/good HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+token+"\r\nContent-Length: 1000\r\n\r\nabc")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		count("slow body: " + strings.TrimSpace(line))
	}()
	// 4. Invalid UTF-8, binary where text is expected, deep JSON.
	do("POST", "/pub/go\xffod", "x", "Authorization", "Bearer "+token)
	do("POST", "/pub/good?event=%ff%fe", "\xff\xfe", "Authorization", "Bearer "+token)
	do("POST", "/pub/good", strings.Repeat("[", 50000), "Authorization", "Bearer "+token, "Content-Type", "application/json")
	do("POST", "/pub", `{"channel":"good","data":`+strings.Repeat("[", 50000)+"}", "Authorization", "Bearer "+token)
	c, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/ws?token="+token), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.WriteMessage(websocket.BinaryMessage, []byte{0xff, 0, 1})
	c.WriteMessage(websocket.TextMessage, []byte(`{"type":"publish","channel":"good","data":`+strings.Repeat("{\"a\":", 20000)+"1"+strings.Repeat("}", 20000)+"}"))
	for _, want := range []string{"invalid_frame", "invalid_json"} {
		f := readFrame(t, c)
		count("ws " + fmt.Sprint(f["code"]))
		if f["code"] != want {
			t.Errorf("hostile frame: got %v, want code %s", f, want)
		}
	}
	// Invalid UTF-8 in a text frame fails the connection with 1007 (RFC 6455 §8.1).
	c.WriteMessage(websocket.TextMessage, []byte("\xff\xfe not json"))
	if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseInvalidFramePayloadData) {
		t.Errorf("invalid UTF-8: got %v, want close 1007", err)
	}
	c.Close()
	// A frame over the read limit closes that connection only, with 1009.
	c, _, err = websocket.DefaultDialer.Dial(wsURL(e, "/ws?token="+token), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("z", 300<<10)))
	if _, _, err := c.ReadMessage(); websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
		count("ws oversized: closed")
	} else {
		t.Errorf("oversized frame: got %v, want close 1009", err)
	}
	c.Close()
	publishGood()
	// 5. Thousands of bogus tokens.
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 250; i++ {
				do("POST", "/pub/good", "x", "Authorization", fmt.Sprintf("Bearer eyJhbGciOiJIUzI1NiJ9.%d.%d", w, i))
			}
		}(w)
	}
	wg.Wait()
	publishGood()
	// 6. Subscription floods: many channels on one WebSocket, many connections.
	c, _, err = websocket.DefaultDialer.Dial(wsURL(e, "/ws?token="+token), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":"subscribe","channels":["flood.%d"]}`, i)))
	}
	for i := 0; i < 100; i++ {
		f := readFrame(t, c)
		count("ws subscribe " + fmt.Sprint(f["type"], f["code"]))
	}
	c.Close()
	var conns []*http.Response
	for i := 0; i < 250; i++ {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/sub/flood.%d?format=raw&token=%s", srv.URL, i, token), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			count("transport error")
			continue
		}
		count(fmt.Sprint("flood ", resp.StatusCode))
		if resp.StatusCode == 200 {
			conns = append(conns, resp)
		} else {
			resp.Body.Close()
		}
	}
	for _, r := range conns {
		r.Body.Close()
	}
	slow.Wait()
	publishGood()
	after := heapMiB()

	// The well-behaved client got everything, in order.
	for i := 1; i <= goodSent; i++ {
		select {
		case l, ok := <-received:
			if !ok || l != fmt.Sprint("g", i) {
				t.Fatalf("well-behaved subscriber: message %d is %q (open %v)", i, l, ok)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("well-behaved subscriber never got message %d", i)
		}
	}
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("server not healthy after the campaign: %v", err)
	}
	resp.Body.Close()
	if after-before > 16 { // about 4 MiB is seen; the campaign must not keep what it sent
		t.Fatalf("heap grew from %.1f to %.1f MiB", before, after)
	}
	keys := make([]string, 0, len(codes))
	total := 0
	for k, n := range codes {
		keys = append(keys, fmt.Sprintf("%s: %d", k, n))
		total += n
	}
	sort.Strings(keys)
	t.Logf("abuse: %d hostile requests; outcomes: %s; heap %.1f -> %.1f MiB; well-behaved messages %d sent, 0 lost",
		total, strings.Join(keys, ", "), before, after, goodSent)
	// Expected refusals happened.
	for _, want := range []string{"raw: 400", "raw: 431", "413", "401", "flood 429", "ws subscribe errorinvalid_parameter", "slowloris cut", "slow body: HTTP/1.1 408"} {
		found := false
		for k := range codes {
			if strings.HasPrefix(k, want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %q outcome: %v", want, codes)
		}
	}
}
