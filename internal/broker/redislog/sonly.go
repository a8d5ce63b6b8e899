package redislog

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Batches published on sharded Pub/Sub only (Redis Cluster).
//
// A node decides per batch whether to publish it on classic Pub/Sub too,
// for pattern followers, from a read of the routes (which patterns any
// node follows) made just before the batch's scripts run (clusterCounts).
// A pattern registered right after that read misses the batch over
// Pub/Sub, and its subscription's replay, if it listed the channels
// before the batch's script made the channel (or read it before the
// batch), does not have it either. A pattern subscription with history
// catches up when it hears the channel's next message (Core.Subscribe);
// with no next message it would never get them.
//
// So the node reads the routes again after such a batch: if no node
// follows a pattern then, a pattern registered later lists and reads the
// channel after the batch was stored, and finds it; if one does, the node
// sends the batch again on classic Pub/Sub (republishScript), as it was
// sent: receivers drop what they heard already by its sequence, and a
// pattern subscription first hearing the channel there catches up what
// came before. The read after a batch is the next batch's own read (the
// publisher runs one batch at a time, so it comes after every script of
// the batch before answered): nothing more under load. A node that goes
// idle with such a batch reads the routes once, sonlyWait later.
//
// The state below belongs to the publisher goroutine; the calls pending
// are those of the last batch published on sharded Pub/Sub only (each
// read of the routes settles all before it), so they are bounded by
// maxBatch.

// sonlyWait is how long after its last batch an idle publisher reads the
// routes to settle the batches it published on sharded Pub/Sub only.
const sonlyWait = 20 * time.Millisecond

// sonlyState is the publisher's record of its calls published on sharded
// Pub/Sub only that no read of the routes has settled yet.
type sonlyState struct {
	calls []*call   // answered, their batch sent on sharded Pub/Sub only
	since time.Time // when the first of calls was answered
	due   bool      // a read after them found a pattern followed: send again
	wait  time.Duration
}

// noteSOnly records c, just answered, when its batch went out on sharded
// Pub/Sub only.
func (l *Log) noteSOnly(c *call) {
	if l.cluster == nil || c.args[c.how] != "S" {
		return
	}
	if len(l.sonly.calls) == 0 {
		l.sonly.since = time.Now()
	}
	l.sonly.calls = append(l.sonly.calls, c)
	l.sonlyN.Store(int32(len(l.sonly.calls)))
}

// routesRead is told what a read of the routes made after every call
// pending was answered found: with no pattern followed, they are settled;
// else they are due to be sent again.
func (l *Log) routesRead(routes int64) {
	if len(l.sonly.calls) == 0 {
		return
	}
	if routes == 0 {
		l.dropSOnly()
		return
	}
	l.sonly.due = true
}

func (l *Log) dropSOnly() {
	clear(l.sonly.calls) // the calls' messages are not kept
	l.sonly = sonlyState{calls: l.sonly.calls[:0]}
	l.sonlyN.Store(0)
}

// republish is one call sent again on classic Pub/Sub.
type republish struct {
	c   *call
	cmd *redis.Cmd
}

// queueRepublish queues, in pipe, the calls due to be sent again (those
// that sent nothing are settled at once). Calls pending for longer than
// PublishTimeout are given up: a pattern subscription with history still
// catches up with them when it hears the channel's next message.
func (l *Log) queueRepublish(ctx context.Context, pipe redis.Pipeliner) []republish {
	if !l.sonly.due || len(l.sonly.calls) == 0 {
		return nil
	}
	if l.sonlyOff.Load() {
		l.dropSOnly()
		return nil
	}
	if time.Since(l.sonly.since) > l.opts.PublishTimeout {
		l.opts.Logger.Warn("redis: batches published without pattern followers could not be sent to the pattern followers that came meanwhile",
			"calls", len(l.sonly.calls), "waited", time.Since(l.sonly.since).Round(time.Millisecond))
		l.dropSOnly()
		return nil
	}
	reps := make([]republish, 0, len(l.sonly.calls))
	for _, c := range l.sonly.calls {
		keys, args := l.republishArgs(c)
		if args == nil {
			continue
		}
		reps = append(reps, republish{c: c, cmd: republishScript.EvalSha(ctx, pipe, keys, args...)})
	}
	if len(reps) == 0 {
		l.dropSOnly()
	}
	return reps
}

// republished keeps pending the calls whose sending again failed.
func (l *Log) republished(ctx context.Context, reps []republish) {
	if len(reps) == 0 {
		return
	}
	since := l.sonly.since
	l.dropSOnly()
	noscript := false
	for _, r := range reps {
		if err := r.cmd.Err(); err != nil && err != redis.Nil {
			if redis.HasErrorPrefix(err, "NOSCRIPT") {
				noscript = true
			}
			l.sonly.calls = append(l.sonly.calls, r.c)
		}
	}
	if len(l.sonly.calls) > 0 {
		l.sonly.since, l.sonly.due = since, true
		l.sonlyN.Store(int32(len(l.sonly.calls)))
	}
	if noscript {
		l.loadScripts(ctx) // Redis forgot the scripts: the next try has them
	}
}

// republishArgs are republishScript's keys and arguments for c, a call
// answered: its batch, as publish() sent it (the messages its reply says
// were appended, positioned as it says); nil args when it sent nothing.
func (l *Log) republishArgs(c *call) ([]string, []any) {
	vals, err := callReply(c)
	if err != nil {
		return nil, nil
	}
	a := c.args[c.how-howArg:] // publish()'s arguments (A[1] is a[0])
	var epoch, first, ts any
	keep := []int{0}
	if c.script == publishScript {
		if len(vals) < 5 {
			return nil, nil
		}
		epoch, first, ts = vals[0], vals[1], vals[2]
		dup := map[int64]bool{}
		if len(vals) == 6 {
			list, _ := vals[5].([]any)
			for j := 0; j+2 < len(list); j += 3 {
				i, _ := list[j].(int64)
				dup[i] = true
			}
		}
		keep = keep[:0]
		for i := range c.ops {
			if !dup[int64(i)] {
				keep = append(keep, i)
			}
		}
	} else {
		// A presence or lifecycle script: {1, epoch, seq, time, …} when
		// it appended its event.
		if status, _ := vals[0].(int64); status != 1 || len(vals) < 4 {
			return nil, nil
		}
		epoch, first, ts = vals[1], vals[2], vals[3]
	}
	if len(keep) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 5+4*len(keep))
	args = append(args, l.pubsubChannel(c.channel), fmt.Sprint(epoch), fmt.Sprint(first), fmt.Sprint(ts), strconv.Itoa(len(keep)))
	for _, i := range keep {
		j := 10 + 4*i
		args = append(args, a[j:j+4]...)
	}
	return []string{l.chanKey(c.channel, "m")}, args
}

// settleSOnly, run by the idle publisher, reads the routes to settle the
// calls pending, and sends again those due; on failure it tries again
// later, waiting longer each time.
func (l *Log) settleSOnly() {
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	if !l.sonly.due {
		n, err := l.rdb.HLen(ctx, l.key("routes")).Result()
		l.sonlyReads.Add(1)
		if err != nil {
			l.sonly.wait = min(2*max(l.sonly.wait, sonlyWait), time.Second)
			return
		}
		l.routesRead(n)
	}
	pipe := l.rdb.Pipeline()
	reps := l.queueRepublish(ctx, pipe)
	if len(reps) > 0 {
		pipe.Exec(ctx)
		l.republished(ctx, reps)
	}
	if len(l.sonly.calls) > 0 {
		l.sonly.wait = min(2*max(l.sonly.wait, sonlyWait), time.Second)
	}
}

// sonlyDelay is how long the idle publisher waits before settleSOnly.
func (l *Log) sonlyDelay() time.Duration {
	if d := l.sonlyIdle.Load(); d != 0 {
		return time.Duration(d)
	}
	return max(l.sonly.wait, sonlyWait)
}
