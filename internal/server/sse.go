package server

import (
	"strconv"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// sseEncoder writes Server-Sent Events. The id of each event resumes the
// subscription via Last-Event-ID: the message id for one channel, the
// session's resume cursor (positions and, for patterns, a time) otherwise.
type sseEncoder struct {
	single bool
	raw    bool
	// plain sends every message as the default event (the name stays in
	// the envelope), for clients that cannot know event names in advance.
	plain bool
	id    []byte
}

func (*sseEncoder) transport() int { return tSSE }

// start says where the stream starts, as an id (so a browser resumes from
// there even if it loses the stream before the first message), and in
// plain mode (pushctl.js) also as a pushctl-start event it can read.
func (e *sseEncoder) start(b *connrt.Batch, ss *session) {
	b.Add([]byte("retry: 2000\n: connected\n\n"))
	cur := ss.resume()
	if e.single {
		for _, p := range ss.cursor {
			cur = p.String()
		}
	}
	if cur == "" {
		return
	}
	b.AddCopy(append(append([]byte("id: "), cur...), '\n'))
	if e.plain {
		b.AddCopy(wire.AppendSSEEvent(nil, wire.SSEStart, []byte(cur)))
	} else {
		b.Add(newline) // an id alone dispatches no event
	}
}

func (e *sseEncoder) writeID(b *connrt.Batch, ss *session, p broker.Position) {
	e.id = append(e.id[:0], "id: "...)
	if e.single {
		e.id = append(e.id, p.Epoch...)
		e.id = append(e.id, '-')
		e.id = strconv.AppendUint(e.id, p.Seq, 10)
	} else {
		e.id = append(e.id, ss.resume()...)
	}
	e.id = append(e.id, '\n')
	b.AddCopy(e.id)
}

func (e *sseEncoder) message(b *connrt.Batch, ss *session, m *broker.Message) {
	e.writeID(b, ss, m.Position())
	switch {
	case e.raw:
		b.Add(wire.SSERaw(m))
	case e.plain:
		b.Add(wire.SSEPlain(m))
	default:
		b.Add(wire.SSE(m))
	}
}

func (e *sseEncoder) gap(b *connrt.Batch, ss *session, g *broker.Gap) {
	e.writeID(b, ss, g.To)
	j := wire.Gap(g)
	b.AddCopy(wire.AppendSSEEvent(nil, wire.SSEGap, j[:len(j)-1]))
}

func (*sseEncoder) keepalive(b *connrt.Batch) bool            { b.Add([]byte(": keepalive\n\n")); return true }
func (*sseEncoder) dropped(*connrt.Batch, string, error) bool { return false }
func (*sseEncoder) end(_ *session, err error) []byte {
	return endIf(err, func(err error) []byte {
		j := endLine(err)
		return wire.AppendSSEEvent(nil, wire.SSEError, j[:len(j)-1])
	})
}
