package redislog

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
)

// Redis going back: when Redis comes back with less than it acknowledged
// (a restart from an older snapshot, an everysec AOF after a crash, a
// failover to a replica that had not received the last writes), the
// positions after what it kept are given again to new messages in the
// same epoch. A node that delivered past them notices (resync, and
// deliverLocked on hearing a later message at a delivered position) and
// moves the channel to a new epoch, so that no cursor of the old one
// passes over positions given twice; docs/cluster.md, "Durability with
// Redis".

// wentBack reports whether Redis no longer holds the message at st.pos
// (same epoch): it restarted from a snapshot older than that message, or
// a replica without it took over. Then either seq, Redis's newest
// position, is before st.pos, or the entry at st.pos is another message
// (a later time: times never go back). (An entry missing at st.pos with
// seq at or past it says nothing: it was trimmed, or never kept, with a
// history of none.) It returns the last entry both have (the newest at
// or before st.pos no later than st.at; Seq 0 when none is known), or nil
// when Redis has not gone back. It reads one entry, and more only when
// that one differs (lastShared).
func (l *Log) wentBack(ctx context.Context, ch string, st *seen, seq uint64) (*broker.Message, error) {
	key, from := l.chanKey(ch, "s"), fmt.Sprintf("%d-1", st.pos.Seq)
	entries, err := l.rdb.XRevRangeN(ctx, key, from, "-", 1).Result()
	if err != nil {
		return nil, err
	}
	top, err := firstEntry(ch, st.pos.Epoch, entries)
	if err != nil {
		return nil, err
	}
	if notBack(st, seq, top) {
		return nil, nil
	}
	if st.at == 0 || top == nil {
		return &broker.Message{}, nil // which entries this node had is not known
	}
	return l.lastShared(ctx, ch, st, top.Seq)
}

// firstEntry is the first of entries (nil when there is none) as channel
// ch's message in epoch; errUnreadable when pushctl did not write it.
func firstEntry(ch, epoch string, entries []redis.XMessage) (*broker.Message, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	m := entryMessage(ch, epoch, entries[0])
	if m == nil {
		return nil, fmt.Errorf("redis: %w %s of %s", errUnreadable, entries[0].ID, ch)
	}
	return m, nil
}

// notBack says Redis has not gone back on channel st (same epoch): seq
// is its newest position, top the newest entry at or before st.pos (nil:
// none). (An entry missing at st.pos with seq at or past it says nothing:
// it was trimmed, or never kept.)
func notBack(st *seen, seq uint64, top *broker.Message) bool {
	if top == nil || top.Seq < st.pos.Seq {
		return seq >= st.pos.Seq
	}
	return st.at == 0 || top.Time.UnixMicro() == st.at
}

// lastShared is the newest entry at or before seq hi no later than st.at
// (Seq 0: none): a binary search by position, as times never go back
// along a channel's positions (a few round trips however many positions
// were given again).
func (l *Log) lastShared(ctx context.Context, ch string, st *seen, hi uint64) (*broker.Message, error) {
	key := l.chanKey(ch, "s")
	// atOrAfter is the first entry at or after position p, within hi.
	atOrAfter := func(p uint64) (*broker.Message, error) {
		es, err := l.rdb.XRangeN(ctx, key, fmt.Sprintf("%d-1", p), fmt.Sprintf("%d-1", hi), 1).Result()
		if err != nil {
			return nil, err
		}
		return firstEntry(ch, st.pos.Epoch, es)
	}
	best, err := atOrAfter(1)
	if err != nil {
		return nil, err
	}
	if best == nil || best.Time.UnixMicro() > st.at {
		return &broker.Message{}, nil
	}
	lo := best.Seq
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		m, err := atOrAfter(mid)
		if err != nil {
			return nil, err
		}
		if m == nil || m.Time.UnixMicro() > st.at {
			hi = mid - 1
			continue
		}
		best, lo = m, m.Seq
	}
	return best, nil
}

// moveOnLocked moves channel ch, at st, to a new epoch because Redis went
// back (wentBack; back is the last entry both have): the positions after
// back are being given to other messages, so that no cursor of the old
// epoch passes over them. The node's subscribers get a gap notice from
// their position to back, in the new epoch. Another node may have moved
// it already: its epoch is taken. Called with lastMu held.
func (l *Log) moveOnLocked(ctx context.Context, ch string, st *seen, back *broker.Message) error {
	v, err := rebaseScript.Run(ctx, l.rdb, []string{l.chanKey(ch, "m")}, st.pos.Epoch, l.newEpoch()).Text()
	if err != nil {
		return err
	}
	epoch, retired, _ := strings.Cut(v, " ")
	if epoch == "" || retired != st.pos.Epoch {
		// Deleted meanwhile (and perhaps made anew): not a move; its
		// delete notice and new epoch come as for any channel.
		return nil
	}
	l.opts.Logger.Warn("redis lost messages of a channel it had acknowledged (a restart from an older snapshot, or a failover); the channel goes on in a new epoch",
		"channel", ch, "delivered", st.pos.String(), "kept", back.Seq)
	l.movedOnLocked(ch, st, epoch, back)
	return nil
}

// movedOnLocked gives the node's subscribers of channel ch the gap notice
// from st to back (the last message both have; nil: nothing this node
// delivered was lost) in epoch, and moves st there, retiring its epoch.
// Called with lastMu held.
func (l *Log) movedOnLocked(ch string, st *seen, epoch string, back *broker.Message) {
	to := broker.Position{Epoch: epoch, Seq: st.pos.Seq}
	at := st.at
	if back != nil {
		to.Seq, at = back.Seq, 0
		if back.Seq != 0 {
			at = back.Time.UnixMicro()
		}
	}
	l.sink.Gap(broker.Gap{Channel: ch, From: st.pos, To: to})
	st.retired = st.pos.Epoch
	st.pos, st.at = to, at
}

// joinLocked handles channel ch's epoch becoming epoch when another node
// moved it on from st's epoch (rebaseScript noted the epoch it retired):
// nothing of it is read again but what this node had not delivered (a
// gap notice from st to the last entry both have, in the new epoch, when
// Redis lost some). It reports whether it did; false: another epoch
// change (lost history, deleted and made anew). Called with lastMu held.
func (l *Log) joinLocked(ctx context.Context, ch string, st *seen, epoch string) bool {
	if st.pos.Seq == 0 {
		return false
	}
	v, err := l.rdb.HMGet(ctx, l.chanKey(ch, "m"), "e", "r").Result()
	if err != nil || len(v) != 2 || v[0] != epoch || v[1] != st.pos.Epoch {
		return false
	}
	back, err := l.wentBack(ctx, ch, st, 0)
	if err != nil {
		return false
	}
	l.movedOnLocked(ch, st, epoch, back)
	return true
}
