package server

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// Durable consumers over HTTP (docs/consumers.md): fetch deliveries, ack
// or nack them, list, inspect and delete consumers.

func (s *Server) consumerRoutes() {
	s.mux.Handle("/consumers", s.methods(map[string]handlerFunc{"GET": s.listConsumers}))
	s.mux.Handle("/consumers/{name}", s.methods(map[string]handlerFunc{"GET": s.consumerInfo, "PUT": s.createConsumer, "DELETE": s.deleteConsumer}))
	s.mux.Handle("/consumers/{name}/fetch", s.methods(map[string]handlerFunc{"POST": s.fetchDeliveries}))
	s.mux.Handle("/consumers/{name}/ack", s.methods(map[string]handlerFunc{"POST": s.ackDeliveries}))
	s.mux.Handle("/consumers/{name}/nack", s.methods(map[string]handlerFunc{"POST": s.nackDeliveries}))
}

// consumerConfig is the consumer settings of a fetch's or create's query.
func consumerConfig(p wire.FetchParams) consumer.Config {
	return consumer.Config{Filter: p.Channel, AckWait: p.AckWait, MaxDeliveries: p.MaxDeliveries,
		MaxInflight: p.MaxInflight, MaxPending: p.MaxPending, MaxPendingBytes: p.MaxPendingBytes, Start: p.Start}
}

// consumerOf admits the request's caller to consumer {name} (creating it
// with the query's settings when it does not exist) through the door,
// and returns it with the query's parameters.
func (s *Server) consumerOf(r *http.Request) (consumer.Handle, wire.FetchParams, error) {
	p, err := wire.ParseFetch(r.URL.Query())
	if err != nil {
		return nil, p, err
	}
	id, err := s.connectIdentity(r)
	if err != nil {
		return nil, p, err
	}
	cons, err := s.door.Consume(r.Context(), s.caller(r, id), r.PathValue("name"), consumerConfig(p))
	if err != nil {
		return nil, p, door.ConsumerError(err)
	}
	return cons, p, nil
}

// createConsumer is PUT /consumers/{name}?channel=…: the consumer, created
// with these settings unless it exists (then its own are kept), before
// anything is fetched, so that nothing published from now on is missed.
func (s *Server) createConsumer(w http.ResponseWriter, r *http.Request) error {
	cons, _, err := s.consumerOf(r)
	if err != nil {
		return err
	}
	return writeInfo(w, r, cons)
}

// writeInfo replies with cons's description.
func writeInfo(w http.ResponseWriter, r *http.Request, cons consumer.Handle) error {
	info, err := cons.Describe(r.Context())
	if err != nil {
		return door.ConsumerError(err)
	}
	return writeJSON(w, http.StatusOK, info)
}

// fetchDeliveries is POST /consumers/{name}/fetch?max=&wait=&channel=…:
// up to max deliveries as NDJSON lines, waiting up to wait for the first
// (an empty reply when none came). Creating the consumer takes channel.
func (s *Server) fetchDeliveries(w http.ResponseWriter, r *http.Request) error {
	cons, p, err := s.consumerOf(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	ds, err := cons.Fetch(ctx, p.Max, min(p.Wait, s.opts.MaxPoll))
	if err != nil {
		if r.Context().Err() != nil {
			return nil // the client went away
		}
		if ctx.Err() != nil {
			return errorf(http.StatusServiceUnavailable, CodeShuttingDown, "the broker is shutting down; fetch again")
		}
		return door.ConsumerError(err)
	}
	bp := fetchBuffers.Get().(*[]byte)
	b := (*bp)[:0]
	for _, d := range ds {
		if d.Gap != nil {
			b = wire.AppendDeliveryGap(b, cons.Name(), d.Gap, d.Lost)
			continue
		}
		b = wire.AppendDelivery(b, cons.Name(), d.ID, d.Count, d.Msg)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(b); err != nil {
		// Not written: the deliveries go to the next fetch at once
		// rather than after the ack wait.
		cons.Giveback(ds)
	}
	if cap(b) <= maxPooledFetch {
		*bp = b
		fetchBuffers.Put(bp)
	}
	return nil
}

// fetchBuffers hold fetch replies between fetches: a reply of a thousand
// deliveries is hundreds of kilobytes, and growing a new one for every
// fetch was most of what a busy consumer allocated.
var fetchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// maxPooledFetch is the largest reply buffer kept for the next fetch.
const maxPooledFetch = 4 << 20

// saved waits until cons's state is saved (with --data-dir), so that the
// reply to an ack or nack means it survives a crash of the broker.
func saved(ctx context.Context, cons consumer.Handle) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := cons.Synced(ctx); err != nil {
		return errorf(http.StatusInsufficientStorage, CodeStoreFailed, "taken but not saved (%v): the messages may be delivered again", err)
	}
	return nil
}

// deliveryIDs reads the ids of an ack or nack: the body (one per line,
// or separated by spaces or commas) and ?id= parameters.
func (s *Server) deliveryIDs(w http.ResponseWriter, r *http.Request) ([]string, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		return nil, errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "ack and nack bodies are at most 1 MiB of delivery ids")
	}
	return wire.ParseDeliveryIDs(body, r.URL.Query()["id"])
}

func (s *Server) consumerFor(r *http.Request) (consumer.Handle, error) {
	id, err := s.identity(r)
	if err != nil {
		return nil, err
	}
	return s.door.ConsumerOf(s.caller(r, id), r.PathValue("name"))
}

// ackDeliveries is POST /consumers/{name}/ack: the messages of these
// deliveries are done. Replies {"acked": n}, n counting the messages this
// request removed (an id acknowledged before is not an error).
func (s *Server) ackDeliveries(w http.ResponseWriter, r *http.Request) error {
	ids, err := s.deliveryIDs(w, r)
	if err != nil {
		return err
	}
	cons, err := s.consumerFor(r)
	if err != nil {
		return err
	}
	n, err := cons.Ack(ids)
	if err != nil {
		return door.ConsumerError(err)
	}
	if err := saved(r.Context(), cons); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]int{"acked": n})
}

// nackDeliveries is POST /consumers/{name}/nack?delay=: deliver these
// again after delay (or dead-letter them when out of deliveries). Replies
// {"nacked": n, "dead_lettered": d}: n deliveries were still current, d
// of them went to the dead-letter channel.
func (s *Server) nackDeliveries(w http.ResponseWriter, r *http.Request) error {
	delay, err := wire.ParseNackDelay(r.URL.Query())
	if err != nil {
		return err
	}
	ids, err := s.deliveryIDs(w, r)
	if err != nil {
		return err
	}
	cons, err := s.consumerFor(r)
	if err != nil {
		return err
	}
	n, dead := 0, 0
	for _, id := range ids {
		ok, gone, err := cons.Nack(id, delay)
		if err != nil {
			return door.ConsumerError(err)
		}
		if ok {
			n++
		}
		if gone {
			dead++
		}
	}
	if err := saved(r.Context(), cons); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]int{"nacked": n, "dead_lettered": dead})
}

func (s *Server) listConsumers(w http.ResponseWriter, r *http.Request) error {
	if err := s.adminCheck(r); err != nil {
		return err
	}
	list, err := s.door.Consumers(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"consumers": list})
}

func (s *Server) consumerInfo(w http.ResponseWriter, r *http.Request) error {
	cons, err := s.consumerFor(r)
	if err != nil {
		return err
	}
	return writeInfo(w, r, cons)
}

func (s *Server) deleteConsumer(w http.ResponseWriter, r *http.Request) error {
	id, err := s.identity(r)
	if err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := s.door.DeleteConsumer(s.caller(r, id), name); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"deleted": name})
}
