package consumer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/redistest"
)

// The consumer scripts against a model, with random batches: fetches of
// 1 to 300, acks of random sets of outstanding deliveries with ids named
// twice, with an older count (a late worker's: it acknowledges too), of
// messages acknowledged already, and nacks that make a message ready
// again at its place. Each fetch must give the ready messages in order
// with their counts, each ack must remove exactly the messages it names
// that are not acknowledged yet, and the consumer's counts must agree
// with the model throughout (the fetch, ack and append scripts work on
// whole batches: one command for many entries).
func TestRedisScriptsAgainstModel(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 7))
			n := redisNodes(t, srv.URL(), 1)[0]
			const total = 3000
			c := redisOpen(t, n, "model", Config{Filter: "mq", Start: StartAll, MaxInflight: 100000,
				AckWait: time.Hour, MaxDeliveries: 1000})
			// Published in random batches while the consumption goes on.
			published := 0
			publishSome := func() {
				k := min(total-published, 1+rnd.IntN(400))
				redisPublish(t, n.b, "mq", published+1, published+k)
				published += k
			}
			publishSome()

			// The model: per message (its data, 1…total), how often it
			// was delivered, and whether it is acknowledged or held.
			count := map[int]int{}
			acked := map[int]bool{}
			held := map[int]bool{}
			idOf := map[int]string{} // the latest delivery's id
			var seen []int           // each message's first delivery, in order
			ready := func() []int {  // what the next fetch gives, in order
				var r []int
				for d := 1; d <= len(seen); d++ {
					if !acked[d] && !held[d] {
						r = append(r, d)
					}
				}
				return r
			}
			for len(acked) < total {
				if published < total && rnd.IntN(3) == 0 {
					publishSome()
				}
				switch op := rnd.IntN(10); {
				case op < 5: // fetch
					max := 1 + rnd.IntN(300)
					want := ready()
					// Then the messages not delivered yet, as the feeder
					// kept them (all of what is published, eventually).
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					ds, err := c.Fetch(ctx, max, 0)
					cancel()
					if err != nil {
						t.Fatal(err)
					}
					for i, d := range ds {
						v, _ := strconv.Atoi(string(d.Msg.Data))
						switch {
						case i < len(want):
							if v != want[i] {
								t.Fatalf("fetch of %d: delivery %d is %d, want %d (ready %v)", max, i, v, want[i], want[:min(len(want), 10)])
							}
						case v != len(seen)+1:
							t.Fatalf("fetch of %d: delivery %d is %d, want the next new one, %d", max, i, v, len(seen)+1)
						default:
							seen = append(seen, v)
						}
						count[v]++
						if d.Count != count[v] {
							t.Fatalf("message %d delivered with count %d, want %d", v, d.Count, count[v])
						}
						held[v] = true
						idOf[v] = d.ID
					}
					if len(ds) < min(max, len(want)) {
						t.Fatalf("fetch of %d gave %d, with %d ready", max, len(ds), len(want))
					}
				case op < 9: // ack a random set
					var ids []string
					wantN := map[int]bool{}
					for v := range held {
						if rnd.IntN(3) > 0 {
							continue
						}
						id := idOf[v]
						if count[v] > 1 && rnd.IntN(4) == 0 {
							seq, _, _ := ParseDeliveryID(id)
							id = strconv.FormatUint(seq, 10) + "." + strconv.Itoa(1+rnd.IntN(count[v]-1))
						}
						ids = append(ids, id)
						if rnd.IntN(5) == 0 {
							ids = append(ids, id) // named twice
						}
						wantN[v] = true
					}
					for v := range acked {
						if rnd.IntN(50) == 0 {
							ids = append(ids, idOf[v]) // acknowledged already
						}
					}
					rnd.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
					got, err := c.Ack(ids)
					if err != nil {
						t.Fatal(err)
					}
					if got != len(wantN) {
						t.Fatalf("ack of %d ids removed %d, want %d", len(ids), got, len(wantN))
					}
					for v := range wantN {
						acked[v] = true
						delete(held, v)
					}
				default: // nack one: ready again, at its place
					for v := range held {
						ok, dead, err := c.Nack(idOf[v], 0)
						if err != nil || !ok || dead {
							t.Fatalf("nack of %d: %v %v %v", v, ok, dead, err)
						}
						delete(held, v)
						break
					}
				}
				inf := describe(t, c)
				deliveries := 0
				for _, k := range count {
					deliveries += k
				}
				if inf.Pending > published-len(acked) || inf.Inflight != len(held) || inf.Acked != uint64(len(acked)) ||
					inf.Delivered != uint64(deliveries) || inf.Redelivered != uint64(deliveries-len(count)) {
					t.Fatalf("info %+v; model: %d published, %d acknowledged, %d held, %d deliveries of %d messages",
						inf, published, len(acked), len(held), deliveries, len(count))
				}
			}
			inf := describe(t, c)
			if inf.Pending != 0 || inf.Inflight != 0 || inf.Acked != total {
				t.Fatalf("at the end: %+v", inf)
			}
		})
	}
}
