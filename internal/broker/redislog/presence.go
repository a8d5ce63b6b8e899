package redislog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker"
)

// Presence across nodes. A channel's members live in one hash in the
// channel's slot (see luaPresence), changed only by scripts that also
// publish the change's event, so "the first hold anywhere" and its
// member_added are one step. Each node keeps the set of channels where
// it holds members; when a node stops beating, the others end its holds
// (each ending publishes member_removed where it was the last hold) before
// they take its counts out, and a node that finds it was taken for dead
// adds its members again.

var _ broker.PresenceLog = (*Log)(nil)

// WatchPresence implements broker.PresenceLog.
func (l *Log) WatchPresence(lost func(node, channel, id string) error, rejoin func()) {
	l.presenceMu.Lock()
	defer l.presenceMu.Unlock()
	l.lost, l.rejoin = lost, rejoin
}

func (l *Log) presenceKey(ch string) string { return l.chanKey(ch, "p") }

// heldKey is the set of channels where node holds members.
func (l *Log) heldKey(node string) string { return l.key("presence:" + node) }

// presenceOp runs a presence script through the publisher, in line with
// the node's appends.
func (l *Log) presenceOp(ctx context.Context, script *redis.Script, node, channel, id string, info []byte, max int, ev *broker.Message) ([]any, error) {
	if err := l.refusing(); err != nil {
		return nil, fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	ev.Channel = channel
	o := &op{m: ev, script: script, args: []any{node, id, string(info), max}, res: make(chan opResult, 1)}
	if err := l.submit(ctx, o); err != nil {
		return nil, err
	}
	r := <-o.res
	return r.vals, r.err
}

// presenceReply reads a presence script's reply: {0, …} nothing changed,
// {-1, n} full, {1, epoch, seq, time, subscribers, …} the event was
// appended into m.
func (l *Log) presenceReply(m *broker.Message, vals []any) opResult {
	if len(vals) == 0 {
		return opResult{err: fmt.Errorf("redis: empty presence reply")}
	}
	if status, _ := vals[0].(int64); status == 1 {
		if len(vals) < 5 {
			return opResult{err: fmt.Errorf("redis: unexpected presence reply %v", vals)}
		}
		seq, _ := vals[2].(int64)
		us, _ := strconv.ParseInt(fmt.Sprint(vals[3]), 10, 64)
		m.Epoch, m.Seq, m.Time = fmt.Sprint(vals[1]), uint64(seq), time.UnixMicro(us).UTC()
	}
	return opResult{vals: vals}
}

// PresenceAdd implements broker.PresenceLog.
func (l *Log) PresenceAdd(ctx context.Context, channel, id string, info []byte, max int, ev *broker.Message) (bool, error) {
	// The channel is listed first, so that a reaper finds every hold.
	if err := l.rdb.SAdd(ctx, l.heldKey(l.node), channel).Err(); err != nil {
		return false, l.unavailable(err)
	}
	vals, err := l.presenceOp(ctx, presenceAddScript, l.node, channel, id, info, max, ev)
	if err != nil {
		return false, err
	}
	switch status, _ := vals[0].(int64); status {
	case 1:
		return true, nil
	case -1:
		n := int64(0)
		if len(vals) > 1 {
			n, _ = vals[1].(int64)
		}
		return false, fmt.Errorf("%w: %s has %d members, the limit", broker.ErrPresenceFull, channel, n)
	}
	return false, nil
}

// PresenceRemove implements broker.PresenceLog.
func (l *Log) PresenceRemove(ctx context.Context, node, channel, id string, ev *broker.Message) (bool, error) {
	self := node == "" || node == l.node
	if self {
		node = l.node
	}
	vals, err := l.presenceOp(ctx, presenceRemoveScript, node, channel, id, nil, 0, ev)
	if err != nil {
		return false, err
	}
	status, _ := vals[0].(int64)
	if held, _ := vals[len(vals)-1].(int64); self && held <= 0 {
		// Calls for one channel do not overlap on a node, so no hold can
		// have come since. A failure leaves a name a reaper skips.
		l.rdb.SRem(ctx, l.heldKey(node), channel)
	}
	return status == 1, nil
}

// PresenceList implements broker.PresenceLog.
func (l *Log) PresenceList(ctx context.Context, channel string) ([]broker.PresenceMember, broker.Position, error) {
	all, err := l.rdb.HGetAll(ctx, l.presenceKey(channel)).Result()
	if err != nil {
		return nil, broker.Position{}, l.unavailable(err)
	}
	var last broker.Position
	byID := map[string]*broker.PresenceMember{}
	get := func(id string) *broker.PresenceMember {
		m := byID[id]
		if m == nil {
			m = &broker.PresenceMember{ID: id}
			byID[id] = m
		}
		return m
	}
	for f, v := range all {
		switch {
		case strings.HasPrefix(f, "m:"):
			if v != "" {
				get(f[2:]).Info = []byte(v)
			} else {
				get(f[2:])
			}
		case strings.HasPrefix(f, "c:"):
			get(f[2:]).Nodes, _ = strconv.Atoi(v)
		case f == "l":
			if e, s, ok := strings.Cut(v, " "); ok {
				last.Epoch = e
				last.Seq, _ = strconv.ParseUint(s, 10, 64)
			}
		}
	}
	out := make([]broker.PresenceMember, 0, len(byID))
	for _, m := range byID {
		if m.Nodes > 0 {
			out = append(out, *m)
		}
	}
	slices.SortFunc(out, func(a, b broker.PresenceMember) int { return strings.Compare(a.ID, b.ID) })
	return out, last, nil
}

// PresenceCount implements broker.PresenceLog.
func (l *Log) PresenceCount(ctx context.Context, channel string) (int, error) {
	n, err := l.rdb.HGet(ctx, l.presenceKey(channel), "n").Int()
	if err == redis.Nil {
		return 0, nil
	}
	if err != nil {
		return 0, l.unavailable(err)
	}
	return n, nil
}

// reapNode takes a node that stopped beating out: its members first (so
// a failure leaves the node listed, and the next heartbeat tries again),
// then its lifecycle records, then its counts. It claims the reap first
// (see reapClaimScript): one survivor at a time reaps a node, only while
// it is silent, and the node, should it come back meanwhile, waits for
// the reap to end before it adds its members and records again (else the
// reap would go on ending what it had just added).
func (l *Log) reapNode(ctx context.Context, node string, cutoff int64) {
	c := &reapClaim{l: l, node: node, token: l.node + ":" + l.newEpoch(), life: claimLife(l.opts.NodeTimeout)}
	c.kept = time.Now()
	ok, err := reapClaimScript.Run(ctx, l.rdb, []string{l.key("nodes"), l.key("reaped:" + node), c.key()},
		node, cutoff, c.token, c.life.Milliseconds()).Int()
	if err != nil || ok == 0 {
		return // back already, reaped by another, or Redis not answering
	}
	defer c.release()
	if err := l.reapPresence(ctx, node, c); err != nil {
		l.opts.Logger.Warn("presence of a dead node not yet removed", "node", node, "err", err)
		return
	}
	if err := l.reapLifecycle(ctx, node, c); err != nil {
		l.opts.Logger.Warn("lifecycle events of a dead node not yet told", "node", node, "err", err)
		return
	}
	if err := c.keep(ctx); err != nil {
		return
	}
	reapScript.Run(ctx, l.rdb, l.countKeys(node), node, l.key("counts"), cutoff)
}

// reapClaim is a survivor's claim on reaping a node. The claim lives for
// life unless kept: a reaper that dies lets the node (back, waiting) or
// another reaper go on after that.
type reapClaim struct {
	l     *Log
	node  string
	token string
	life  time.Duration
	kept  time.Time // when the claim was last made to live life again
}

// claimLife is how long a reap's claim lives unless kept: three times the
// node timeout (at least 6 s). It is kept before each end, so one end
// would have to take three quarters of that (over 20 s by default; the
// ends' own calls give up after 10 s) for the claim to lapse under it.
func claimLife(nodeTimeout time.Duration) time.Duration { return 3 * max(nodeTimeout, 2*time.Second) }

// errClaimLost: a reap's claim expired (the reaper paused or cut off
// from Redis for longer than its life): it stops.
var errClaimLost = errors.New("the claim on the reap expired")

func (c *reapClaim) key() string { return c.l.key("reaping:" + c.node) }

// keep is called before each end: after a quarter of the claim's life it
// makes the claim live again, or reports it lost. Nil (a node ending its
// own records as it closes) claims nothing.
func (c *reapClaim) keep(ctx context.Context) error {
	if c == nil || time.Since(c.kept) < c.life/4 {
		return nil
	}
	now := time.Now()
	ok, err := reapKeepScript.Run(ctx, c.l.rdb, []string{c.key()}, c.token, c.life.Milliseconds(), 1).Int()
	if err != nil {
		return err
	}
	if ok == 0 {
		return errClaimLost
	}
	c.kept = now
	return nil
}

// release lets the node rejoin (or the next reaper go on).
func (c *reapClaim) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reapKeepScript.Run(ctx, c.l.rdb, []string{c.key()}, c.token, c.life.Milliseconds(), 0)
}

// reapPresence ends every hold of node, through the lost func (which
// builds the departures' events), while c holds.
func (l *Log) reapPresence(ctx context.Context, node string, c *reapClaim) error {
	l.presenceMu.Lock()
	lost := l.lost
	l.presenceMu.Unlock()
	if lost == nil {
		return nil // nothing here uses presence
	}
	chans, err := l.rdb.SMembers(ctx, l.heldKey(node)).Result()
	if err != nil {
		return err
	}
	prefix := "h:" + node + ":"
	for _, ch := range chans {
		fields, err := l.rdb.HKeys(ctx, l.presenceKey(ch)).Result()
		if err != nil {
			return err
		}
		for _, f := range fields {
			if id, ok := strings.CutPrefix(f, prefix); ok {
				if err := c.keep(ctx); err != nil {
					return err
				}
				if err := lost(node, ch, id); err != nil {
					return err
				}
			}
		}
	}
	return l.rdb.Del(ctx, l.heldKey(node)).Err()
}

// backFromDead reports (once) that the others took this node for dead.
func (l *Log) backFromDead() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reaped
	l.reaped = false
	return r
}

// rejoinPresence asks the registry to add this node's members again.
func (l *Log) rejoinPresence() {
	l.presenceMu.Lock()
	rejoin := l.rejoin
	l.presenceMu.Unlock()
	if rejoin != nil {
		l.opts.Logger.Warn("this node was taken for dead by the others (silent for longer than the node timeout): its counts and members are sent again")
		rejoin()
	}
}
