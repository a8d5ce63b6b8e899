package server

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/wire"
)

// A Durable Stream's state: what its PUT said (content type, expiry),
// whether it is closed, and what its writers have done (Stream-Seq,
// idempotent producers). It is one JSON record, the newest message of the
// stream's state channel (wire.StateChannel), so it lives wherever the
// broker's log does: in memory, on disk with --data-dir, in Redis.
type streamState struct {
	ContentType string    `json:"content_type"`
	TTL         *int64    `json:"ttl,omitempty"` // seconds
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	Created     time.Time `json:"created"`
	// Epoch is the data channel's epoch when the stream was made: a
	// channel deleted and made again under it (DELETE /channels/…) is
	// not this stream.
	Epoch string `json:"epoch"`
	// Touched is when a read or write last renewed a TTL, as of the
	// newest record (this node keeps a fresher one in memory).
	Touched time.Time `json:"touched,omitzero"`
	Closed  bool      `json:"closed,omitempty"`
	// ClosedAt is the sequence of the stream's last message once closed:
	// messages published to the channel after it (POST /pub) are not the
	// stream's.
	ClosedAt  uint64               `json:"closed_at,omitempty"`
	ClosedBy  *producerRef         `json:"closed_by,omitempty"`
	StreamSeq string               `json:"stream_seq,omitempty"`
	Producers map[string]*producer `json:"producers,omitempty"`
	// A fork's source (its channel) and the fork point as the PUT named
	// it; a source's forks (their channels), and whether it was deleted
	// while they still read it (streams_fork.go).
	Source     string   `json:"source,omitempty"`
	ForkOffset string   `json:"fork_offset,omitempty"`
	ForkSub    uint64   `json:"fork_sub,omitempty"`
	Forks      []string `json:"forks,omitempty"`
	Deleted    bool     `json:"deleted,omitempty"`
}

// producer is an idempotent producer's place: its epoch and the highest
// sequence accepted in it.
type producer struct {
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// producerRef names one request of a producer.
type producerRef struct {
	ID    string `json:"id"`
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
}

// mediaType is a content type without parameters, lower case, for
// comparisons.
func mediaType(ct string) string {
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	ct, _, _ = strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(ct))
}

// offset is the offset of position p of the stream's channel: the
// stream's epoch (the channel's when the stream was made) and p's
// sequence.
func (st *streamState) offset(p broker.Position) string {
	return wire.FormatOffset(broker.Position{Epoch: st.Epoch, Seq: p.Seq})
}

// isJSON says whether the stream keeps JSON messages (JSON mode).
func (st *streamState) isJSON() bool { return mediaType(st.ContentType) == "application/json" }

// isText says whether its SSE data is sent as text (else base64).
func (st *streamState) isText() bool {
	mt := mediaType(st.ContentType)
	return st.isJSON() || strings.HasPrefix(mt, "text/")
}

// expiryGrace is how long after its TTL or Expires-At a stream may still
// be served: a write that left its client just in time, slowed down on
// the way, still finds the stream.
const expiryGrace = time.Second

// expired says whether the stream has expired at now, given when it was
// last touched.
func (st *streamState) expired(now, touched time.Time) bool {
	if !st.ExpiresAt.IsZero() && !now.Before(st.ExpiresAt.Add(expiryGrace)) {
		return true
	}
	if st.TTL != nil {
		return !now.Before(touched.Add(time.Duration(*st.TTL)*time.Second + expiryGrace))
	}
	return false
}

// producerCheck is the outcome of an idempotent producer's request.
type producerCheck int

const (
	producerAccept    producerCheck = iota // new data: append it
	producerDuplicate                      // already appended: 204
	producerFenced                         // stale epoch: 403
	producerGap                            // a sequence was skipped: 409
	producerBadEpoch                       // new epoch not at sequence 0: 400
)

// checkProducer applies the protocol's validation of (epoch, seq) against
// what the stream knows of the producer (nil: nothing yet).
func checkProducer(p *producer, epoch, seq uint64) producerCheck {
	switch {
	case p == nil || epoch > p.Epoch:
		if seq != 0 {
			if p == nil {
				return producerGap
			}
			return producerBadEpoch
		}
		return producerAccept
	case epoch < p.Epoch:
		return producerFenced
	case seq <= p.Seq:
		return producerDuplicate
	case seq == p.Seq+1:
		return producerAccept
	}
	return producerGap
}

// streamLocks serialize the writes of one stream on this node (the
// protocol asks that a producer's checks and append be one step).
type streamLocks [64]sync.Mutex

func (l *streamLocks) of(ch string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(ch))
	return &l[h.Sum32()%uint32(len(l))]
}

// streamsState is what this node keeps of streams besides the log: the
// locks, and when each stream with a TTL was last touched.
type streamsState struct {
	locks   streamLocks
	topo    sync.Mutex // taken by creates and deletes, before any stream lock
	mu      sync.Mutex
	touched map[string]time.Time
}

// touch records a read or write of ch at now.
func (ss *streamsState) touch(ch string, now time.Time) {
	ss.mu.Lock()
	if ss.touched == nil {
		ss.touched = map[string]time.Time{}
	}
	ss.touched[ch] = now
	ss.mu.Unlock()
}

// lastTouch is when ch was last touched (the record's time when this node
// has not touched it).
func (ss *streamsState) lastTouch(ch string, st *streamState) time.Time {
	ss.mu.Lock()
	t, ok := ss.touched[ch]
	ss.mu.Unlock()
	if !ok || t.Before(st.Touched) {
		return st.Touched
	}
	return t
}

func (ss *streamsState) forget(ch string) {
	ss.mu.Lock()
	delete(ss.touched, ch)
	ss.mu.Unlock()
}

var errNoStream = errors.New("no such stream")

// loadStream reads the state of the stream whose channel is ch: nil and
// errNoStream when there is none (or it expired, which deletes it).
func (s *Server) loadStream(ctx context.Context, ch string) (*streamState, error) {
	res, err := s.door.ReadHistory(ctx, door.System, wire.StateChannel(ch), broker.ReadRequest{Last: 1})
	if errors.Is(err, broker.ErrNotFound) {
		return nil, errNoStream
	}
	if err != nil {
		return nil, err
	}
	var st *streamState
	for _, ev := range res.Events {
		if ev.Msg != nil {
			st = new(streamState)
			if err := json.Unmarshal(ev.Msg.Data, st); err != nil {
				return nil, err
			}
		}
	}
	if st == nil {
		return nil, errNoStream
	}
	now := time.Now()
	if st.expired(now, s.streams.lastTouch(ch, st)) {
		s.dropStream(ctx, ch)
		return nil, errNoStream
	}
	return st, nil
}

// saveCreated records a stream just made (by PUT or a fork) in epoch,
// created now, its sliding TTL started, closed at tail when it was made
// closed.
func (s *Server) saveCreated(ctx context.Context, ch string, st *streamState, epoch string, tail broker.Position) error {
	now := time.Now()
	st.Created, st.Epoch = now, epoch
	if st.TTL != nil {
		s.streams.touch(ch, now)
	}
	if st.Closed {
		st.ClosedAt = tail.Seq
	}
	return s.saveStream(ctx, ch, st)
}

// saveStream writes st as the stream's newest state.
func (s *Server) saveStream(ctx context.Context, ch string, st *streamState) error {
	if st.TTL != nil {
		st.Touched = s.streams.lastTouch(ch, st)
	}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, _, err = s.door.Publish(ctx, door.System, &broker.Message{Channel: wire.StateChannel(ch), Event: "stream.state", Kind: broker.KindJSON, Data: data})
	return err
}

// dropStream deletes a stream's state and data (what is gone already is
// no error).
func (s *Server) dropStream(ctx context.Context, ch string) error {
	s.streams.forget(ch)
	err := s.door.DeleteChannel(ctx, door.System, wire.StateChannel(ch))
	if err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	if err := s.door.DeleteChannel(ctx, door.System, ch); err != nil && !errors.Is(err, broker.ErrNotFound) {
		return err
	}
	return nil
}

// noStream is the 404 of a stream that does not exist.
func noStream(path string) *Error {
	return errorf(http.StatusNotFound, wire.CodeStreamNotFound, "no stream %q: create it with PUT /v1/stream/%s", path, path)
}
