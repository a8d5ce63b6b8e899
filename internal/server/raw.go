package server

import (
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// Raw streams for curl -N: the data alone, one message per line
// (format=raw), or channel<TAB>data for several channels.

type rawEncoder struct{ tagged bool }

func (rawEncoder) transport() int                { return tRaw }
func (rawEncoder) start(*connrt.Batch, *session) {}
func (e rawEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) {
	if e.tagged {
		b.Add(wire.RawTagged(m))
	} else {
		b.Add(wire.Raw(m))
	}
}
func (rawEncoder) gap(*connrt.Batch, *session, *broker.Gap)  {}
func (rawEncoder) keepalive(*connrt.Batch) bool              { return false }
func (rawEncoder) dropped(*connrt.Batch, string, error) bool { return false }
func (rawEncoder) end(*session, error) []byte                { return nil }
