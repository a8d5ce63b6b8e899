package server

import (
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// NDJSON streams: one JSON envelope per line (format=ndjson).

// endLine is the error line that ends an NDJSON stream, saying why (the
// client can resume from its last id).
func endLine(err error) []byte {
	b := wire.AppendError(nil, "", asError(err))
	return append(b, '\n')
}

type ndjsonEncoder struct{}

func (ndjsonEncoder) transport() int                                         { return tNDJSON }
func (ndjsonEncoder) start(*connrt.Batch, *session)                          {}
func (ndjsonEncoder) message(b *connrt.Batch, _ *session, m *broker.Message) { b.Add(wire.JSON(m)) }
func (ndjsonEncoder) gap(b *connrt.Batch, _ *session, g *broker.Gap)         { b.Add(wire.Gap(g)) }
func (ndjsonEncoder) keepalive(b *connrt.Batch) bool                         { b.Add(newline); return true }
func (ndjsonEncoder) dropped(*connrt.Batch, string, error) bool              { return false }
func (ndjsonEncoder) end(_ *session, err error) []byte                       { return endIf(err, endLine) }
