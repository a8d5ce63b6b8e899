package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/redistest"
)

// A Redis Cluster resharded while two nodes publish and deliver, as when
// a site adds a shard: a fourth master joins (`redis-cli --cluster
// add-node`); every test channel's slot, the slot of pushctl's own keys
// and the durable consumer's move to it, then half of them move on to
// another shard, one key per MIGRATE (so a slot's keys spend as long as
// they can split between two shards). Publishers on node A (HTTP one by
// one, one channel each, and NDJSON batches of 10) keep going throughout;
// on node B, WebSocket subscribers follow each channel and the pattern
// rs.* (from the start: ?since=all), and `pushctl sub --durable` one
// channel. Every publish is acknowledged (a reshard is not an outage);
// each channel's history holds every acknowledged message once, at its
// position, in order; each subscriber on B gets every one of them in
// order with no gap notice, and the durable consumer prints each.
func TestRedisClusterReshardWhilePublishing(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{c.Servers[0].Addr()}})
	defer rdb.Close()
	pa, a := serve(t, "--broker", c.URL(), "--history", "1000000")
	defer func() {
		if t.Failed() {
			t.Log(pa.Stderr())
		}
	}()
	pb, b := serve(t, "--broker", c.URL(), "--history", "1000000", "--log-level", "debug")
	defer func() {
		if t.Failed() {
			t.Log("node B:\n" + pb.Stderr())
		}
	}()

	const nch = 4
	chans := []string{"rs.batch"}
	for i := range nch {
		chans = append(chans, "rs."+strconv.Itoa(i))
	}

	// Subscribers on B: one WebSocket per channel, and one following the
	// pattern rs.* (classic Pub/Sub on Redis Cluster): what each got of
	// each channel, in order.
	type got struct {
		mu    sync.Mutex
		data  []string
		other []string // frames that are not messages (a gap notice)
		more  chan struct{}
	}
	subs, psubs := map[string]*got{}, map[string]*got{}
	for _, ch := range chans {
		subs[ch] = &got{more: make(chan struct{}, 1)}
		psubs[ch] = &got{more: make(chan struct{}, 1)}
	}
	follow := func(path string, of map[string]*got) {
		ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(b, "http")+"/sub/"+path+"?since=all", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		go func() {
			for {
				_, frame, err := ws.ReadMessage()
				if err != nil {
					return
				}
				var m struct{ Type, Channel, Data string }
				json.Unmarshal(frame, &m)
				g := of[m.Channel]
				if g == nil {
					g = of[chans[0]] // a frame without a channel of ours
				}
				g.mu.Lock()
				if m.Type == "message" && of[m.Channel] != nil {
					g.data = append(g.data, m.Data)
				} else {
					g.other = append(g.other, string(frame))
				}
				g.mu.Unlock()
				select {
				case g.more <- struct{}{}:
				default:
				}
			}
		}()
	}
	for _, ch := range chans {
		follow(ch, subs)
	}
	follow("rs.*", psubs)
	// And a durable consumer on B, from the start of rs.2.
	durable := start(t, nil, nil, "sub", "rs.2", "--durable", "reshard", "--since", "all", "-s", b)
	stop := make(chan struct{})
	all := map[string]*replies{}
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 60 * time.Second}
	const after = 50 // acknowledged by each publisher once the slots moved
	for _, ch := range chans {
		r := newReplies()
		all[ch] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := -1
			for i := 0; ; {
				select {
				case <-stop:
					if base < 0 {
						base = r.acked()
					}
					if r.acked()-base >= after {
						return
					}
				default:
				}
				if ch != "rs.batch" {
					r.publishOne(hc, a, ch, strconv.Itoa(i))
					i++
					continue
				}
				r.publishBatch(t, hc, a, ch, i, 10)
				i += 10
			}
		}()
	}
	warm := time.After(60 * time.Second)
	for ch, r := range all {
		select {
		case <-r.warmed:
		case <-warm:
			t.Fatalf("%s: publishing did not get going", ch)
		}
	}

	// The reshard: a new shard takes the channels' slots, pushctl's own
	// (the counts and the nodes) and the durable consumer's, then half
	// move on again.
	added := c.AddShard(t)
	slots := []int{c.Slot(t, "pushctl:{=}:nodes"), c.Slot(t, "pushctl:{c!reshard}:x")}
	for _, ch := range chans {
		slots = append(slots, c.Slot(t, "pushctl:{"+ch+"}:m"))
	}
	keys := 0
	for _, s := range slots {
		keys += c.MoveSlot(t, s, added)
	}
	for i, s := range slots {
		if i%2 == 0 {
			keys += c.MoveSlot(t, s, c.Servers[i%3])
		}
	}
	t.Logf("moved %d slots and %d keys, then %d slots again", len(slots), keys, (len(slots)+1)/2)
	close(stop)
	wg.Wait()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, ch := range chans {
		r := all[ch]
		checkHistory(t, ctx, rdb, ch, r)
		var failed []string
		var acked []int
		for d, reply := range r.got {
			if strings.HasPrefix(reply, "seq ") {
				acked = append(acked, mustAtoi(d))
			} else {
				failed = append(failed, d+": "+reply)
			}
		}
		slices.Sort(acked)
		if len(failed) > 0 {
			t.Errorf("%s: %d publishes not acknowledged during the reshard, e.g. %v", ch, len(failed), failed[:min(5, len(failed))])
		}
		if ch == "rs.2" {
			// The durable consumer: every acknowledged message, first
			// printed in order (one printed again is counted: a
			// delivery whose acknowledgement failed is delivered again).
			seen, again := map[string]bool{}, 0
			for i := 0; len(seen) < len(acked); {
				l := durable.readLine(30 * time.Second)
				if seen[l] {
					again++
					continue
				}
				seen[l] = true
				if l != strconv.Itoa(acked[i]) {
					t.Errorf("%s: pushctl sub --durable on B: message %d is %q, want %d", ch, i, l, acked[i])
					break
				}
				i++
			}
			t.Logf("%s: pushctl sub --durable printed all %d, %d of them again", ch, len(seen), again)
		}
		// B's subscribers: every acknowledged message, in order, and no
		// gap notice.
		for who, g := range map[string]*got{"subscriber": subs[ch], "pattern subscriber": psubs[ch]} {
			deadline := time.After(30 * time.Second)
			for {
				g.mu.Lock()
				n := len(g.data)
				g.mu.Unlock()
				if n >= len(acked) {
					break
				}
				select {
				case <-g.more:
				case <-deadline:
					t.Fatalf("%s: %s on B got %d messages of the %d acknowledged", ch, who, n, len(acked))
				}
			}
			g.mu.Lock()
			for i, d := range g.data {
				if i >= len(acked) || d != strconv.Itoa(acked[i]) {
					t.Errorf("%s: %s on B: message %d is %q, want %v", ch, who, i, d, acked[i:min(i+1, len(acked))])
					break
				}
			}
			if len(g.other) > 0 {
				t.Errorf("%s: %s on B got %v", ch, who, g.other[:min(5, len(g.other))])
			}
			g.mu.Unlock()
		}
	}
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}
