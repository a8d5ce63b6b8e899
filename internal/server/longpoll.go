package server

import (
	"net"
	"net/http"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// pollEncoder writes one long-poll reply: {"events":[…],"cursor":"…"}.
// The events are those of the first batch, in publish order; the cursor
// resumes after them, with the time for channels that appear later.
type pollEncoder struct{ n int }

func (*pollEncoder) transport() int                { return tPoll }
func (*pollEncoder) start(*connrt.Batch, *session) {}
func (e *pollEncoder) item(b *connrt.Batch, j []byte) {
	if e.n == 0 {
		b.Add([]byte(`{"events":[`))
	} else {
		b.Add([]byte{','})
	}
	e.n++
	b.Add(j[:len(j)-1])
}
func (e *pollEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) {
	e.item(b, wire.JSON(m))
}
func (e *pollEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap) { e.item(b, wire.Gap(g)) }
func (*pollEncoder) keepalive(*connrt.Batch) bool                     { return false }
func (*pollEncoder) dropped(*connrt.Batch, string, error) bool        { return false }
func (e *pollEncoder) end(ss *session, err error) []byte {
	var out []byte
	if e.n == 0 {
		out = append(out, `{"events":[`...)
	}
	out = append(out, `],"cursor":`...)
	out = wire.AppendString(out, ss.resume())
	if err != nil {
		out = append(out, `,"error":`...)
		out = wire.AppendErrorObject(out, asError(err))
	}
	return append(out, "}\n"...)
}

// longPoll answers with what is new since the request's position, waiting
// up to wait for the first message. The reply's cursor resumes.
func (s *Server) longPoll(w http.ResponseWriter, r *http.Request, ss *session, sub *broker.Subscription, enc *pollEncoder, since time.Time, wait time.Duration) error {
	s.metrics.connections[tPoll].Add(1)
	defer s.metrics.connections[tPoll].Add(-1)
	w.Header().Set("Content-Type", "application/json")
	cw := &connrt.Writer{RW: w, RC: http.NewResponseController(w), Timeout: s.opts.WriteTimeout}
	ss.w = cw
	ss.trackCursor, ss.oneShot = true, true
	ss.startCursor(sub, since)
	// poll=0s answers at once with what is there (and the cursor).
	reason := ss.run(r.Context().Done(), 0, max(wait, time.Nanosecond))
	ss.closeSubs()
	if errorsIsPeer(reason) {
		return nil // the client is gone
	}
	if reason != nil {
		s.metrics.disconnected(tPoll, reasonCode(reason))
		if enc.n == 0 {
			return reason // nothing written yet: an ordinary error reply
		}
	}
	return cw.Write(net.Buffers{enc.end(ss, reason)})
}
