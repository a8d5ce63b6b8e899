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
	"github.com/pushctl/pushctl/internal/broker/redisreply"
)

// Follow implements broker.Follower: the first local subscription to a
// channel or pattern subscribes this node to it in Redis. It returns once
// Redis confirmed (a PING sent after the SUBSCRIBE came back), so every
// message published from then on reaches the hub.
func (l *Log) Follow(ctx context.Context, name string) error {
	l.mu.Lock()
	r := l.refs[name]
	first := r == nil
	if first {
		r = &ref{}
		l.refs[name] = r
	}
	r.all++
	routed := l.routed(name)
	if routed {
		l.deltas["r:"+name]++
	}
	var err error
	if first {
		switch {
		case broker.IsPattern(name):
			err = l.ps.PSubscribe(ctx, l.globFor(name))
		case l.cluster != nil:
			if r.shard, err = l.shardFor(ctx, name); err == nil {
				err = r.shard.subscribe(ctx, l.pubsubChannel(name))
			}
		default:
			err = l.ps.Subscribe(ctx, l.pubsubChannel(name))
		}
	}
	ps, sh := l.ps, r.shard
	l.mu.Unlock()
	if err == nil && sh != nil {
		// A shard without a connection up subscribes it when its
		// rebuild makes the next: the PING goes after that.
		ps, err = sh.ready(ctx)
	}
	if err == nil {
		err = l.ping(ctx, ps)
	}
	if err == nil && routed {
		// On Redis Cluster every publish from now on goes out where
		// patterns hear it.
		err = l.sendCounts(false)
	}
	if err != nil {
		l.Unfollow(name, false)
		return l.unavailable(err)
	}
	return nil
}

// Count implements broker.Follower: the subscription is counted in Redis
// before Count returns, so any node's waits and channel info include it.
func (l *Log) Count(ctx context.Context, names []string) error {
	l.mu.Lock()
	for _, name := range names {
		if r := l.refs[name]; r != nil {
			r.counted++
			l.deltas[countField(name)]++
		}
	}
	l.mu.Unlock()
	if err := l.sendCounts(false); err != nil {
		return l.unavailable(err)
	}
	return nil
}

// Unfollow implements broker.Follower.
// Lock order: lastMu, then mu.
func (l *Log) Unfollow(name string, counted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.refs[name]
	if r == nil {
		return
	}
	r.all--
	if counted {
		r.counted--
		l.deltas[countField(name)]--
	}
	if l.routed(name) {
		l.deltas["r:"+name]--
	}
	if r.all == 0 {
		delete(l.refs, name)
		ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
		switch {
		case broker.IsPattern(name):
			l.ps.PUnsubscribe(ctx, l.globFor(name))
		case r.shard != nil:
			r.shard.unsubscribe(ctx, l.pubsubChannel(name))
		default:
			l.ps.Unsubscribe(ctx, l.pubsubChannel(name))
		}
		cancel()
		go l.forget() // takes lastMu, which is never taken after mu
	}
	l.kick()
}

// forget drops the positions of channels no longer followed. (It lists
// the patterns followed once: asking followed for each channel looked
// through every followed name for each, which, with a pattern keeping
// thousands of channels' positions, made each unfollow cost their
// product.)
func (l *Log) forget() {
	l.lastMu.Lock()
	defer l.lastMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	var pats []string
	for name := range l.refs {
		if broker.IsPattern(name) {
			pats = append(pats, name)
		}
	}
	for ch := range l.last {
		if _, ok := l.refs[ch]; ok {
			continue
		}
		if !slices.ContainsFunc(pats, func(p string) bool { return broker.Match(p, ch) }) {
			delete(l.last, ch)
		}
	}
}

// routed reports whether following name must be known to publishers: on
// Redis Cluster a pattern is only heard when publishes also go out on
// classic Pub/Sub.
func (l *Log) routed(name string) bool { return l.cluster != nil && broker.IsPattern(name) }

func countField(name string) string {
	if broker.IsPattern(name) {
		return "p:" + name
	}
	return "c:" + name
}

// followedExactly reports whether channel is followed by its name.
func (l *Log) followedExactly(channel string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.refs[channel]
	return ok
}

// followed reports whether a local subscription wants channel.
func (l *Log) followed(channel string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.followedLocked(channel)
}

func (l *Log) followedLocked(channel string) bool {
	if _, ok := l.refs[channel]; ok {
		return true
	}
	for name := range l.refs {
		if broker.IsPattern(name) && broker.Match(name, channel) {
			return true
		}
	}
	return false
}

// ping sends a PING down a Pub/Sub connection and waits for its PONG:
// every (un)subscribe sent before it on that connection has then taken
// effect.
func (l *Log) ping(ctx context.Context, ps *redis.PubSub) error {
	l.mu.Lock()
	l.pingID++
	payload := "p" + strconv.FormatUint(l.pingID, 10)
	done := make(chan bool, 1)
	l.pings[payload] = done
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.pings, payload)
		l.mu.Unlock()
	}()
	if err := ps.Ping(ctx, payload); err != nil {
		return err
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return errors.New("no answer from the Pub/Sub connection in 10s")
	case <-ctx.Done():
		return ctx.Err()
	case <-l.ctx.Done():
		return broker.ErrClosed
	}
}

// receive is the one reader of the Pub/Sub connection. After the
// connection broke it resynchronizes every followed channel once the
// resubscription took effect.
func (l *Log) receive() {
	defer l.wg.Done()
	broken := false
	backoff := 50 * time.Millisecond
	for {
		msg, err := l.ps.Receive(l.ctx)
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			broken = true
			l.hold(l.onClassic)
			l.setHealth(sidePubSub, err)
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if broken {
			broken = false
			if f := l.opts.beforeResync; f != nil {
				go func() {
					f("classic")
					l.ps.Ping(l.ctx, "resync")
				}()
			} else if err := l.pingResync(); err != nil {
				// Asked again with the next message. This one is
				// handled still: one of a channel on hold waits for
				// the resync anyway (dispatch), and one of a channel
				// keeping no history would be lost.
				broken = true
			}
		}
		switch m := msg.(type) {
		case *redis.Message:
			l.dispatch(m, false)
		case *redis.Pong:
			if m.Payload == "resync" {
				if err := l.resync(l.onClassic); err != nil {
					broken = true // try again after the next message
					l.setHealth(sidePubSub, err)
					// ... or a second from now: no message may come (a
					// quiet channel, or Redis still loading and every
					// publish refused; a resync that met it stayed
					// failed until then).
					time.AfterFunc(time.Second, func() {
						if l.ctx.Err() == nil {
							l.ps.Ping(l.ctx, "resync")
						}
					})
					continue
				}
				l.setHealth(sidePubSub, nil)
				l.mu.Lock()
				l.synced = false // Redis may have lost this node's counts
				l.mu.Unlock()
				l.kick()
				continue
			}
			l.pong(m.Payload)
		}
	}
}

// pingResync asks the classic connection for its resync.
func (l *Log) pingResync() error {
	if f := l.opts.resyncPing; f != nil {
		return f()
	}
	return l.ps.Ping(l.ctx, "resync")
}

// pong wakes the ping waiting for payload.
func (l *Log) pong(payload string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if done, ok := l.pings[payload]; ok {
		done <- true
	}
}

// dispatch hands one Pub/Sub message to the hub, in sequence order,
// refilling from the stream what it missed. sharded says it came from a
// shard's connection (Redis Cluster). A message for a channel on hold
// (seen.hold: a connection that carried it broke) is left for the resync,
// which refills it from the stream once it has compared the channel with
// Redis. (Delivered now, a message at the position after the node's would
// be taken for the next one even when Redis came back older and gave that
// position again.) A channel keeping no history cannot be refilled, nor
// compared: its messages are delivered.
func (l *Log) dispatch(pm *redis.Message, sharded bool) {
	if pm.Channel == l.key("counts") {
		l.countsChanged()
		return
	}
	ch, ok := l.channelOf(pm.Channel)
	if !ok || broker.ValidateChannel(ch) != nil || !l.followed(ch) {
		return // a glob matches more than the pattern
	}
	if !sharded && !l.onClassic(pm.Channel) {
		return // its shard's connection carries it
	}
	if pm.Payload == "D" {
		l.lastMu.Lock()
		delete(l.last, ch)
		l.lastMu.Unlock()
		l.sink.Deleted(ch)
		return
	}
	msgs, err := l.decodeBatch(ch, pm.Payload)
	if err != nil {
		l.opts.Logger.Warn("redis: undecodable message", "channel", ch, "err", err)
		return
	}
	l.lastMu.Lock()
	defer l.lastMu.Unlock()
	if st := l.last[ch]; st != nil && st.hold && l.retention(ch).HistorySize > 0 {
		return
	}
	for _, m := range msgs {
		l.deliverLocked(ch, m)
	}
}

// deliverLocked hands one message heard over Pub/Sub to the hub, in
// sequence order, refilling from the stream what was missed. Called with
// lastMu held.
func (l *Log) deliverLocked(ch string, m *broker.Message) {
	st := l.last[ch]
	if st == nil || !st.delivered {
		// The first message heard: subscribers' replays (and their
		// filters) cover what came before.
		l.last[ch] = &seen{pos: m.Position(), delivered: true, at: m.Time.UnixMicro()}
		l.sink.Deliver(m)
		return
	}
	switch {
	case st.retired != "" && m.Epoch == st.retired:
		// Published before the channel moved on (wentBack): the stream
		// has it at its position, read under the new epoch.
		if m.Seq > st.pos.Seq {
			l.refillOrHoldLocked(ch, st, st.pos.Epoch, m.Seq)
		}
		return
	case m.Epoch == st.pos.Epoch && m.Seq <= st.pos.Seq:
		// Delivered already (a channel and a pattern both match; a batch
		// sent again), unless it is a later message at a position
		// delivered: Redis went back (a batch's messages share one time).
		if st.at == 0 || m.Time.UnixMicro() <= st.at {
			return
		}
		ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
		defer cancel()
		back, err := l.wentBack(ctx, ch, st, 0)
		if err == nil && back != nil {
			err = l.moveOnLocked(ctx, ch, st, back)
		}
		if err != nil {
			l.opts.Logger.Warn("redis: a channel's position was given again; cannot move it to a new epoch", "channel", ch, "err", err)
		}
		if st.retired == m.Epoch && m.Seq > st.pos.Seq {
			l.refillOrHoldLocked(ch, st, st.pos.Epoch, m.Seq)
		}
		return
	case m.Epoch == st.pos.Epoch && m.Seq == st.pos.Seq+1:
	case m.Epoch == st.pos.Epoch:
		if !l.refillOrHoldLocked(ch, st, m.Epoch, m.Seq-1) {
			return
		}
	default: // the channel lost its history, was deleted and made anew, or moved on
		ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
		defer cancel()
		if l.joinLocked(ctx, ch, st, m.Epoch) {
			if m.Seq <= st.pos.Seq {
				return
			}
			if m.Seq > st.pos.Seq+1 && !l.refillOrHoldLocked(ch, st, m.Epoch, m.Seq-1) {
				return
			}
			break
		}
		l.sink.Gap(broker.Gap{Channel: ch, From: st.pos, To: broker.Position{Epoch: m.Epoch}})
		st.pos, st.at, st.retired = broker.Position{Epoch: m.Epoch}, 0, ""
		if m.Seq > 1 && !l.refillOrHoldLocked(ch, st, m.Epoch, m.Seq-1) {
			return
		}
	}
	st.pos, st.delivered, st.at = m.Position(), true, m.Time.UnixMicro()
	l.sink.Deliver(m)
}

// refillLocked delivers channel's messages after st up to seq `upTo` from
// the stream; what the stream no longer has becomes a gap. When the
// stream cannot be read (Redis did not answer in time, a connection
// broke) nothing is delivered and st is left as it was: it returns the
// error. Called with lastMu held.
func (l *Log) refillLocked(ch string, st *seen, epoch string, upTo uint64) error {
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second)
	defer cancel()
	entries, err := l.rdb.XRange(ctx, l.chanKey(ch, "s"),
		fmt.Sprintf("(%d-1", st.pos.Seq), fmt.Sprintf("%d-1", upTo)).Result()
	if err != nil {
		return err
	}
	l.refillFromLocked(ch, st, epoch, upTo, entries)
	return nil
}

// refillOrHoldLocked refills channel ch as refillLocked does, for a
// message heard after a jump, and reports whether it did. When the
// stream cannot be read, the channel is put on hold instead: what it
// missed, the message heard and what is heard meanwhile wait for a
// resync (the heartbeat asks for one after 3 s) rather than being
// skipped with a gap notice while the stream holds them. (A channel
// keeping no history has nothing to refill: its gap is given.) Called
// with lastMu held.
func (l *Log) refillOrHoldLocked(ch string, st *seen, epoch string, upTo uint64) bool {
	err := l.refillLocked(ch, st, epoch, upTo)
	if err == nil {
		return true
	}
	if l.retention(ch).HistorySize <= 0 {
		l.refillFromLocked(ch, st, epoch, upTo, nil)
		return true
	}
	l.opts.Logger.Warn("redis: cannot refill a channel; it waits for a resync", "channel", ch, "err", err)
	if !l.holding.Load() {
		l.heldAt.Store(time.Now().UnixNano())
	}
	st.hold = true
	l.holding.Store(true)
	return false
}

// refillFromLocked delivers entries, channel's stream entries after st
// (the first may be later than the next position: a gap), and makes what
// is missing up to seq upTo a gap. Called with lastMu held.
func (l *Log) refillFromLocked(ch string, st *seen, epoch string, upTo uint64, entries []redis.XMessage) {
	for _, e := range entries {
		m := entryMessage(ch, epoch, e)
		if m == nil || m.Seq <= st.pos.Seq {
			continue
		}
		if m.Seq != st.pos.Seq+1 {
			l.sink.Gap(broker.Gap{Channel: ch, From: st.pos, To: broker.Position{Epoch: epoch, Seq: m.Seq - 1}})
		}
		st.pos, st.delivered, st.at = m.Position(), true, m.Time.UnixMicro()
		l.sink.Deliver(m)
	}
	if st.pos.Seq < upTo {
		l.sink.Gap(broker.Gap{Channel: ch, From: st.pos, To: broker.Position{Epoch: epoch, Seq: upTo}})
		st.pos, st.at = broker.Position{Epoch: epoch, Seq: upTo}, 0
	}
}

func entryMessage(ch, epoch string, e redis.XMessage) *broker.Message {
	fields := make([]any, 0, 2*len(e.Values))
	for k, v := range e.Values {
		fields = append(fields, k, fmt.Sprint(v))
	}
	return decodeEntry(ch, epoch, []any{e.ID, fields})
}

// onClassic says the classic Pub/Sub connection carries psChannel: every
// channel on a single Redis; on Redis Cluster, where each channel has its
// shard's connection, those followed only through a pattern.
func (l *Log) onClassic(psChannel string) bool {
	if l.cluster == nil {
		return true
	}
	ch, ok := l.channelOf(psChannel)
	return !ok || !l.followedExactly(ch)
}

// hold puts on hold the channels the node has a position in whose
// Pub/Sub channel name which accepts: their connection broke. The next
// resync of any connection takes them in (resync), so that a channel
// that changes connection meanwhile (a shard rebuilt after a failover
// moves it; it is followed by name, or no longer) is not held for good.
func (l *Log) hold(which func(psChannel string) bool) {
	l.lastMu.Lock()
	defer l.lastMu.Unlock()
	held := false
	for ch, st := range l.last {
		if which(l.pubsubChannel(ch)) {
			st.hold, held = true, true
		}
	}
	if held {
		l.heldAt.Store(time.Now().UnixNano())
		l.holding.Store(true)
	}
}

// resync brings the channels on hold up to date after their connection
// broke: what Redis still has is delivered; if Redis lost a channel
// (restarted without persistence) its subscribers get a gap; if it came
// back older, the channel moves to a new epoch (wentBack). Any
// connection's resync takes every channel on hold, wherever it is
// carried now, except those whose connection is down (its own resync
// will take them); it fails only for those the connection carries
// (which: their Pub/Sub channel names), others that cannot be read now
// stay on hold. A channel already brought up to date is not read again
// when a failed resync is tried again. The channels are taken
// resyncChunk at a time (resyncMany), lastMu held for each chunk only:
// deliveries on every connection wait for one chunk at a time, not for
// the whole resync.
func (l *Log) resync(which func(psChannel string) bool) error {
	l.lastMu.Lock()
	names := make([]string, 0, len(l.last))
	for ch, st := range l.last {
		if st.hold {
			names = append(names, ch)
		}
	}
	l.lastMu.Unlock()
	var err error
	for len(names) > 0 && err == nil {
		n := min(len(names), resyncChunk)
		err = l.resyncMany(names[:n], which)
		names = names[n:]
	}
	// Still holding: channels left for their own connection's resync,
	// those that could not be read, those put on hold meanwhile.
	l.lastMu.Lock()
	holding := false
	for _, st := range l.last {
		if st.hold {
			holding = true
			break
		}
	}
	l.holding.Store(holding)
	l.lastMu.Unlock()
	return err
}

// resyncChunk is how many channels on hold a resync reads in one round
// trip: a node following thousands of channels is back in a few round
// trips, not three per channel (each of which held every delivery up).
const resyncChunk = 128

// refillPage is how many entries of each channel a resync reads in its
// round trip; a channel with more to refill reads the rest alone.
const refillPage = 256

// resyncMany brings those of channels still on hold up to date (resync),
// lastMu held. One pipeline reads, for each, its newest position (the
// read script, which makes a channel Redis lost anew), its entry at the
// node's position (did Redis go back? wentBack), the first refillPage
// entries after it and the epoch it was moved on from (rebaseScript's r);
// a second one, for the channels Redis lost (a new epoch nobody moved
// them to), their first refillPage entries. A channel whose Redis went
// back, that another node moved on, or whose read hit NOSCRIPT twice goes
// through resyncLocked (reads of its own). It returns an error (tried
// again) only when a channel its connection carries could not be read.
func (l *Log) resyncMany(channels []string, which func(psChannel string) bool) error {
	type read struct {
		ch    string
		st    *seen
		own   bool
		read  *redis.Cmd
		probe *redis.XMessageSliceCmd
		after *redis.XMessageSliceCmd
		meta  *redis.SliceCmd
		err   error // set: resyncLocked's, or the read's
		slow  bool  // resyncLocked
	}
	l.lastMu.Lock()
	defer l.lastMu.Unlock()
	ctx, cancel := context.WithTimeout(l.ctx, 10*time.Second) // (from here: not the wait for lastMu)
	defer cancel()
	var reads []*read
	for _, ch := range channels {
		st := l.last[ch]
		if st == nil || !st.hold {
			continue // deleted, or another resync took it
		}
		own := which(l.pubsubChannel(ch))
		if !own && l.carrierDown(ch) {
			continue
		}
		reads = append(reads, &read{ch: ch, st: st, own: own})
	}
	if len(reads) == 0 {
		return nil
	}
	send := func() {
		pipe := l.rdb.Pipeline()
		for _, r := range reads {
			key, pos := l.chanKey(r.ch, "s"), r.st.pos
			r.read = readScript.EvalSha(ctx, pipe, l.channelKeys(r.ch),
				"1", l.newEpoch(), ttl(l.retention(r.ch)), r.ch, "none", "", 0, 0)
			r.probe = nil
			if pos.Seq > 0 {
				r.probe = pipe.XRevRangeN(ctx, key, fmt.Sprintf("%d-1", pos.Seq), "-", 1)
			}
			r.after = pipe.XRangeN(ctx, key, fmt.Sprintf("(%d-1", pos.Seq), "+", refillPage)
			r.meta = pipe.HMGet(ctx, l.chanKey(r.ch, "m"), "e", "r")
		}
		pipe.Exec(ctx)
	}
	send()
	if slices.ContainsFunc(reads, func(r *read) bool { return redis.HasErrorPrefix(r.read.Err(), "NOSCRIPT") }) {
		// Redis restarted and forgot the scripts (the usual reason for a
		// resync): load them, read again. (A channel that still meets
		// NOSCRIPT goes through resyncLocked, whose read falls back to
		// sending the script itself.)
		if err := l.loadScripts(ctx); err != nil {
			l.opts.Logger.Warn("redis: cannot load the scripts", "err", err)
		}
		send()
	}
	var lost []*read
	for _, r := range reads {
		r.err = l.resyncRead(r.ch, r.st, r.read, r.probe, r.after, r.meta)
		switch {
		case errors.Is(r.err, errSlowPath) || redis.HasErrorPrefix(r.err, "NOSCRIPT"):
			r.slow = true
		case errors.Is(r.err, errLost):
			lost = append(lost, r)
		}
	}
	if len(lost) > 0 {
		// Lost: a gap notice, then what the channel holds in its new epoch.
		pipe := l.rdb.Pipeline()
		for _, r := range lost {
			r.after = pipe.XRangeN(ctx, l.chanKey(r.ch, "s"), "-", "+", refillPage)
		}
		pipe.Exec(ctx)
		for _, r := range lost {
			r.err = l.resyncLost(r.ch, r.st, r.read, r.after)
		}
	}
	var failed error
	for _, r := range reads {
		if r.slow {
			one, cancel := context.WithTimeout(l.ctx, 5*time.Second)
			r.err = l.resyncLocked(one, r.ch, r.st)
			cancel()
		}
		switch {
		case r.err == nil:
		case oneChannel(r.err):
			// Only this channel cannot be read (a foreign key under
			// the prefix, say): it is delivered as heard, not held up
			// with the others.
			l.opts.Logger.Warn("redis: cannot resynchronize a channel", "channel", r.ch, "err", r.err)
		case r.own:
			if failed == nil {
				failed = r.err
			}
			continue
		default:
			continue // stays on hold
		}
		r.st.hold = false
	}
	return failed
}

// errSlowPath: a channel resyncRead leaves to resyncLocked; errLost: one
// Redis lost (its epoch changed, and no node moved it on), which
// resyncLost brings up to date.
var (
	errSlowPath = errors.New("read again, one channel at a time")
	errLost     = errors.New("the channel's epoch changed")
)

// resyncRead brings channel ch up to date from what resyncMany read:
// read, the read script's reply; probe, the entry at or before st.pos
// (nil when st.pos is 0); after, the entries after it; meta, the
// channel's e and r. Called with lastMu held.
func (l *Log) resyncRead(ch string, st *seen, read *redis.Cmd, probe, after *redis.XMessageSliceCmd, meta *redis.SliceCmd) error {
	epoch, seq, err := readReply(read)
	if err != nil {
		return err
	}
	if epoch != st.pos.Epoch {
		if st.pos.Seq == 0 {
			return errLost
		}
		m, err := meta.Result()
		if err != nil {
			return err
		}
		if len(m) == 2 && m[0] == epoch && m[1] == st.pos.Epoch {
			return errSlowPath // another node moved it on: joinLocked
		}
		return errLost
	}
	if st.pos.Seq > 0 {
		es, err := probe.Result()
		if err != nil {
			return err
		}
		top, err := firstEntry(ch, epoch, es)
		if err != nil {
			return err
		}
		if !notBack(st, seq, top) {
			return errSlowPath // Redis went back: moveOnLocked
		}
	}
	return l.refillPageLocked(ch, st, epoch, seq, after)
}

// refillPageLocked delivers channel ch's entries read in a resync's
// pipeline (after: a page of them), and reads what is left up to seq
// when the page was full. Called with lastMu held.
func (l *Log) refillPageLocked(ch string, st *seen, epoch string, seq uint64, after *redis.XMessageSliceCmd) error {
	entries, err := after.Result()
	if err != nil {
		return err
	}
	l.refillFromLocked(ch, st, epoch, min(seq, lastSeq(entries, seq)), entries)
	if st.pos.Seq < seq {
		return l.refillLocked(ch, st, epoch, seq) // more than a page
	}
	return nil
}

// resyncLost brings channel ch, which Redis lost, up to date: a gap
// notice from the node's position to the new epoch's start, then the
// entries read (after: its first entries). Called with lastMu held.
func (l *Log) resyncLost(ch string, st *seen, read *redis.Cmd, after *redis.XMessageSliceCmd) error {
	epoch, seq, _ := readReply(read)
	if err := after.Err(); err != nil {
		return err
	}
	l.sink.Gap(broker.Gap{Channel: ch, From: st.pos, To: broker.Position{Epoch: epoch}})
	st.pos, st.at, st.retired = broker.Position{Epoch: epoch}, 0, ""
	return l.refillPageLocked(ch, st, epoch, seq, after)
}

// lastSeq is the position of the last of a full page of entries (what
// is after it was not read), or seq when the page is not full.
func lastSeq(entries []redis.XMessage, seq uint64) uint64 {
	if len(entries) < refillPage {
		return seq
	}
	n, _ := strconv.ParseUint(strings.TrimSuffix(entries[len(entries)-1].ID, "-1"), 10, 64)
	return n
}

// readReply is the read script's epoch and newest position.
func readReply(read *redis.Cmd) (string, uint64, error) {
	v, err := read.Slice()
	if err != nil {
		return "", 0, err
	}
	if len(v) != 5 {
		return "", 0, fmt.Errorf("redis: unexpected read reply")
	}
	seq, _ := strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
	return fmt.Sprint(v[0]), seq, nil
}

// carrierDown says the Pub/Sub connection carrying ch now is down: its
// shard's on Redis Cluster when ch is followed by name, else the classic
// one. A shard still making its connection (a new one, or one a channel
// moved to while it rebuilds) is down: it has not subscribed ch yet, so
// what another connection's resync read of ch would be followed by
// messages nobody hears; its own resync, once it has subscribed, takes
// ch.
func (l *Log) carrierDown(ch string) bool {
	side := sidePubSub
	if l.cluster != nil {
		l.mu.Lock()
		var sh *shard
		if r := l.refs[ch]; r != nil {
			sh = r.shard
		}
		l.mu.Unlock()
		if sh != nil {
			if sh.making() {
				return true
			}
			side = sh.side()
		}
	}
	l.downMu.Lock()
	defer l.downMu.Unlock()
	_, down := l.downs[side]
	return down
}

// resyncLocked brings one channel up to date (resync).
func (l *Log) resyncLocked(ctx context.Context, ch string, st *seen) error {
	v, err := readScript.Run(ctx, l.rdb, l.channelKeys(ch),
		"1", l.newEpoch(), ttl(l.retention(ch)), ch, "none", "", 0, 0).Slice()
	if err != nil {
		return err
	}
	epoch := fmt.Sprint(v[0])
	seq, _ := strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
	if epoch == st.pos.Epoch && st.pos.Seq > 0 {
		back, err := l.wentBack(ctx, ch, st, seq)
		if err != nil {
			return err
		}
		if back != nil {
			if err := l.moveOnLocked(ctx, ch, st, back); err != nil {
				return err
			}
			epoch = st.pos.Epoch
		}
	} else if epoch != st.pos.Epoch {
		l.joinLocked(ctx, ch, st, epoch)
	}
	if epoch != st.pos.Epoch {
		l.sink.Gap(broker.Gap{Channel: ch, From: st.pos, To: broker.Position{Epoch: epoch}})
		st.pos, st.at, st.retired = broker.Position{Epoch: epoch}, 0, ""
	}
	if seq > st.pos.Seq {
		return l.refillLocked(ch, st, epoch, seq)
	}
	return nil
}

// errUnreadable: a stream entry pushctl did not write.
var errUnreadable = errors.New("unreadable entry")

// oneChannel says err concerns one channel's keys only: Redis refused a
// command on them (WRONGTYPE, say), or an entry is unreadable. Anything
// else (the connection, Redis loading or refusing writes, this node's
// credentials, Redis without the scripts) concerns every channel.
func oneChannel(err error) bool {
	if errors.Is(err, errUnreadable) {
		return true
	}
	if !redisreply.Is(err) || redisreply.Transient(err) || redisreply.StoreRefused(err) {
		return false
	}
	for _, code := range []string{"NOAUTH", "WRONGPASS", "NOPERM", "NOSCRIPT"} {
		if strings.HasPrefix(err.Error(), code) {
			return false
		}
	}
	return true
}

// decodeBatch parses what the publish script sends: a header line
// "B <epoch> <first seq> <µs> <count>" ("R …" for a batch sent again:
// its messages are Late), then for each message a line
// "<kind> <origin> <event length> <data length>" followed by the event
// and the data.
func (l *Log) decodeBatch(ch, p string) ([]*broker.Message, error) {
	hdr, body, ok := strings.Cut(p, "\n")
	f := strings.Fields(hdr)
	if !ok || len(f) != 5 || f[0] != "B" && f[0] != "R" {
		return nil, errors.New("bad header")
	}
	late := f[0] == "R" // sent again (republishScript)
	first, err1 := strconv.ParseUint(f[2], 10, 64)
	us, err2 := strconv.ParseInt(f[3], 10, 64)
	n, err3 := strconv.Atoi(f[4])
	if err := errors.Join(err1, err2, err3); err != nil || n < 1 || n > len(body) || first == 0 || first+uint64(n) < first {
		return nil, errors.New("bad header fields")
	}
	at := time.UnixMicro(us).UTC()
	msgs := make([]*broker.Message, 0, n)
	for i := 0; i < n; i++ {
		line, rest, ok := strings.Cut(body, "\n")
		g := strings.Fields(line)
		if !ok || len(g) != 4 {
			return nil, fmt.Errorf("message %d: bad header", i+1)
		}
		kind, err1 := strconv.Atoi(g[0])
		evlen, err2 := strconv.Atoi(g[2])
		dlen, err3 := strconv.Atoi(g[3])
		if err := errors.Join(err1, err2, err3); err != nil || kind < 0 || kind > 255 || evlen < 0 || dlen < 0 || evlen > len(rest) || dlen > len(rest)-evlen {
			return nil, fmt.Errorf("message %d: bad header fields", i+1)
		}
		m := &broker.Message{
			Channel: ch, Epoch: f[1], Seq: first + uint64(i), Time: at, Kind: broker.Kind(kind),
			Event: rest[:evlen], Data: []byte(rest[evlen : evlen+dlen]), Late: late,
		}
		if node, o, ok := strings.Cut(g[1], ":"); ok && node == l.node {
			conn, cseq, _ := strings.Cut(o, ":")
			m.Origin, _ = strconv.ParseUint(conn, 10, 64)
			m.OriginSeq, _ = strconv.ParseUint(cseq, 10, 64)
		}
		msgs = append(msgs, m)
		body = rest[evlen+dlen:]
	}
	if body != "" {
		return nil, errors.New("trailing bytes")
	}
	return msgs, nil
}

// kick asks the heartbeat goroutine to send count changes now.
func (l *Log) kick() {
	select {
	case l.flush <- struct{}{}:
	default:
	}
}

func (l *Log) countKeys(node string) []string {
	return []string{l.key("node:" + node), l.key("subs"), l.key("pats"), l.key("nodes"), l.key("routes"), l.key("reaped:" + node), l.key("reaping:" + node)}
}

// heartbeat sends count changes as they come and, every second, this
// node's heartbeat; it reaps nodes that stopped beating and refreshes the
// cluster totals.
func (l *Log) heartbeat() {
	defer l.wg.Done()
	tick := time.NewTicker(l.opts.Heartbeat)
	defer tick.Stop()
	beat := false // Open sent the first
	for n := 1; ; {
		l.beatOnce(beat, n)
		if beat {
			n++
		}
		beat = false
		if l.holding.Load() && time.Since(time.Unix(0, l.heldAt.Load())) > 3*time.Second {
			// Channels on hold for over 3 s with no resync taking them:
			// their connection was ended (a shard left with no
			// channel), or they changed connection. The classic
			// connection's resync takes every channel on hold.
			l.ps.Ping(l.ctx, "resync")
		}
		select {
		case <-l.ctx.Done():
			return
		case <-l.flush:
		case <-tick.C:
			beat = true
		}
	}
}

// beatOnce sends count changes (and the heartbeat when beat), rejoins
// when the others took this node for dead, and otherwise, on the n-th
// beat, reaps silent nodes and reads the totals.
func (l *Log) beatOnce(beat bool, n int) {
	if err := l.sendCounts(beat); err != nil {
		if l.ctx.Err() == nil {
			// No answer within the heartbeat's timeout counts too.
			l.setHealth(sideCommands, err)
		}
	} else if l.backFromDead() {
		l.rejoinPresence()
		l.rejoinLifecycle()
	} else if beat && l.refreshTotals(n%10 == 0) {
		l.setHealth(sideCommands, nil)
		if n%60 == 0 {
			l.keepFollowed()
			ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
			l.keepLifeLists(ctx) // in case a reaper's expiry came after the rejoin's
			cancel()
		}
	}
}

// sendCounts sends this node's count changes (all of its counts after a
// reconnection), and its heartbeat.
func (l *Log) sendCounts(beat bool) error {
	l.sendMu.Lock() // one send at a time: a full state must not overtake deltas
	defer l.sendMu.Unlock()
	l.mu.Lock()
	full := !l.synced
	var args []any
	add := func(f string, v int) { args = append(args, f, v) }
	total := l.sink.Total()
	if full {
		for name, r := range l.refs {
			if r.counted > 0 {
				add(countField(name), r.counted)
			}
			if l.routed(name) {
				add("r:"+name, r.all)
			}
		}
		add("t", total)
	} else {
		for f, d := range l.deltas {
			if d != 0 {
				add(f, d)
			}
		}
		if total != l.sentTotal {
			add("t", total-l.sentTotal)
		}
	}
	l.deltas = map[string]int{}
	waiting := l.reapWait
	l.mu.Unlock()
	if len(args) == 0 && !beat && !waiting {
		return nil
	}
	fullArg := "0"
	if full {
		fullArg = "1"
	}
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	l.beating.Store(time.Now().UnixNano())
	defer l.beating.Store(0)
	back, err := countsScript.Run(ctx, l.rdb, l.countKeys(l.node),
		append([]any{l.node, time.Now().UnixMilli(), l.key("counts"), fullArg}, args...)...).Int()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.synced = false // send everything once Redis is back
		return err
	}
	l.synced, l.sentTotal = true, total
	if back == 2 {
		// Another node is reaping this one: rejoin once it is done.
		if !l.reapWait {
			l.opts.Logger.Warn("this node was taken for dead by the others (silent for longer than the node timeout): it rejoins when their reap of it ends")
		}
		l.reapWait = true
		l.known = true
		// Asked again soon (not only at the next heartbeat), to rejoin
		// as soon as the reap ends: one such ask pending at a time.
		if l.waitKick.CompareAndSwap(false, true) {
			time.AfterFunc(min(l.opts.Heartbeat, 250*time.Millisecond), func() {
				l.waitKick.Store(false)
				l.kick()
			})
		}
		return nil
	}
	l.reapWait = false
	if back == 1 && l.known {
		// The others took this node for dead (it was silent longer than
		// NodeTimeout) and took its counts and members out: send the
		// whole state again, and rejoin the members.
		l.synced, l.reaped = false, true
		l.kick()
	}
	l.known = true
	return nil
}

// keepFollowed pushes back the expiry of the channels followed here, so a
// channel that is quiet for longer than its keys live does not come back
// with a new epoch (and its followers with a gap notice) when it speaks
// again. Runs every 60 heartbeats; keys live at least two hours.
func (l *Log) keepFollowed() {
	names := map[string]bool{}
	l.lastMu.Lock() // (lastMu before mu)
	for name := range l.last {
		names[name] = true
	}
	l.lastMu.Unlock()
	l.mu.Lock()
	for name := range l.refs {
		if !broker.IsPattern(name) {
			names[name] = true
		}
	}
	l.mu.Unlock()
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	pipe := l.rdb.Pipeline()
	for name := range names {
		d := ttl(l.retention(name))
		if d <= 0 {
			continue // the channel's keys do not expire
		}
		for _, part := range []string{"m", "s", "z"} {
			pipe.PExpire(ctx, l.chanKey(name, part), time.Duration(d)*time.Millisecond)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		l.unavailable(err)
	}
}

// refreshTotals reaps silent nodes and reads the cluster totals (the
// channel count too when countChannels: on Redis Cluster that is a SCAN
// of every master); it reports whether Redis answered.
func (l *Log) refreshTotals(countChannels bool) bool {
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	cutoff := time.Now().Add(-l.opts.NodeTimeout).UnixMilli()
	dead, err := l.rdb.ZRangeByScore(ctx, l.key("nodes"), &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(cutoff)}).Result()
	if err != nil {
		l.unavailable(err)
		return false
	}
	l.startReaping(dead, cutoff)
	pipe := l.rdb.Pipeline()
	total := pipe.HGet(ctx, l.key("subs"), "*")
	nodes := pipe.ZCard(ctx, l.key("nodes"))
	var chans *redis.IntCmd
	if l.cluster == nil {
		chans = pipe.SCard(ctx, l.key("channels"))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		l.unavailable(err)
		return false
	}
	n, _ := total.Int64()
	l.total.Store(n)
	l.nodes.Store(nodes.Val())
	switch {
	case chans != nil:
		l.channels.Store(chans.Val())
	case countChannels:
		names, err := l.channelNames(ctx)
		if err != nil {
			l.unavailable(err)
			return false
		}
		l.channels.Store(int64(len(names)))
	}
	return true
}

// startReaping reaps the dead nodes in a goroutine of its own, one reap
// at a time (a reap still running: the next beat finds the rest): a
// reap is a round trip per record, and a dead node with tens of
// thousands of records must not keep this node from beating (the
// others would take it for dead too).
func (l *Log) startReaping(dead []string, cutoff int64) {
	dead = slices.DeleteFunc(slices.Clone(dead), func(n string) bool {
		return n == l.node // this node was silent: it will find out it was reaped
	})
	if len(dead) == 0 || !l.reaping.CompareAndSwap(false, true) {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer l.reaping.Store(false)
		for _, node := range dead {
			if l.ctx.Err() != nil {
				return
			}
			l.reapNode(l.ctx, node, cutoff)
		}
	}()
}

// countsChanged wakes everyone waiting for subscriber counts.
func (l *Log) countsChanged() {
	l.countsMu.Lock()
	close(l.countsCh)
	l.countsCh = make(chan struct{})
	l.countsMu.Unlock()
}

func (l *Log) countsWatch() <-chan struct{} {
	l.countsMu.Lock()
	defer l.countsMu.Unlock()
	return l.countsCh
}

// Subscribers implements broker.ClusterView: the channel's subscribers on
// every node, pattern subscribers included.
func (l *Log) Subscribers(ctx context.Context, channel string) (int, error) {
	pipe := l.rdb.Pipeline()
	exact := pipe.HGet(ctx, l.key("subs"), channel)
	pats := pipe.HGetAll(ctx, l.key("pats"))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, l.unavailable(err)
	}
	n, _ := exact.Int()
	for p, v := range pats.Val() {
		if broker.Match(p, channel) {
			c, _ := strconv.Atoi(v)
			n += c
		}
	}
	return n, nil
}

// WaitSubscribers implements broker.ClusterView.
func (l *Log) WaitSubscribers(ctx context.Context, channel string, n int) error {
	for {
		changed := l.countsWatch()
		have, err := l.Subscribers(ctx, channel)
		if err != nil && !errors.Is(err, broker.ErrUnavailable) {
			return err
		}
		if err == nil && have >= n {
			return nil
		}
		t := time.NewTimer(time.Second) // counts can also change silently (a node reaped)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
}

// TotalSubscribers implements broker.ClusterView (as of the last heartbeat).
func (l *Log) TotalSubscribers() int { return int(l.total.Load()) }

// Nodes implements broker.ClusterView: nodes that beat recently.
func (l *Log) Nodes() int { return int(l.nodes.Load()) }
