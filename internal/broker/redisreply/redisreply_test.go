package redisreply_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pushctl/pushctl/internal/broker/redisreply"
	"github.com/pushctl/pushctl/internal/redistest"
)

func client(t *testing.T, srv *redistest.Server) *redis.Client {
	// Not retried by go-redis (it retries LOADING, BUSY… itself).
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func check(t *testing.T, what string, err error, transient bool) {
	t.Helper()
	checkReply(t, what, err, transient, false)
}

func checkReply(t *testing.T, what string, err error, transient, full bool) {
	t.Helper()
	t.Logf("%s: %v", what, err)
	if !redisreply.Is(err) || redisreply.Transient(err) != transient || redisreply.StoreRefused(err) != full || redisreply.Moving(err) {
		t.Errorf("%s: %v: reply %v, transient %v, store refused %v, moving %v; want a reply, transient %v, store refused %v, not moving", what, err,
			redisreply.Is(err), redisreply.Transient(err), redisreply.StoreRefused(err), redisreply.Moving(err), transient, full)
	}
}

// Writes Redis refuses because it cannot keep more (over maxmemory; a
// failed save) are neither transient nor ordinary errors; reads still
// work meanwhile, and writes again once the operator acted.
func TestStoreRefusedReplies(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	const write = "return redis.call('SET', KEYS[1], ARGV[1])"

	if err := rdb.ConfigSet(ctx(t), "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	checkReply(t, "a write over maxmemory", rdb.Set(ctx(t), "k", "v", 0).Err(), false, true)
	checkReply(t, "a script writing over maxmemory", rdb.Eval(ctx(t), write, []string{"k"}, "v").Err(), false, true)
	if err := rdb.Get(ctx(t), "k").Err(); err != redis.Nil {
		t.Fatalf("a read over maxmemory: %v, want nil (nothing written)", err)
	}
	if err := rdb.ConfigSet(ctx(t), "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}

	srv.FailSaves()
	checkReply(t, "a write after a failed save", rdb.Set(ctx(t), "k", "v", 0).Err(), false, true)
	checkReply(t, "a script writing after a failed save", rdb.Eval(ctx(t), write, []string{"k"}, "v").Err(), false, true)
	srv.SavesWork()
	if err := rdb.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatalf("a write once saves are off: %v", err)
	}

	check(t, "WRONGTYPE", rdb.LPush(ctx(t), "k", "y").Err(), false)
	if redisreply.StoreRefused(errors.New("OOM command not allowed")) {
		t.Error("an error that is not a reply counts as store refused")
	}
}

// The replies Redis really sends while restarting, running a long script
// or as a replica without its master are transient; a wrong command's
// are not, nor is a failure to reach Redis a reply.
func TestRealReplies(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := client(t, srv)

	check(t, "WRONGTYPE", func() error {
		rdb.Set(ctx(t), "str", "x", 0)
		return rdb.LPush(ctx(t), "str", "y").Err()
	}(), false)
	check(t, "unknown command", rdb.Do(ctx(t), "NOSUCHCOMMAND").Err(), false)
	check(t, "script error", rdb.Eval(ctx(t), "return redis.error_reply('NOCONSUMER gone')", nil).Err(), false)
	rdb.XGroupCreateMkStream(ctx(t), "stream", "g", "0")
	check(t, "BUSYGROUP", rdb.XGroupCreateMkStream(ctx(t), "stream", "g", "0").Err(), false)

	stop := srv.Busy()
	check(t, "a command while a script runs", rdb.Get(ctx(t), "k").Err(), true)
	stop()

	srv.Ballast(30000)
	srv.RestartLoading()
	check(t, "a command while loading", rdb.Get(ctx(t), "k").Err(), true)
	check(t, "a script while loading", rdb.EvalSha(ctx(t), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", nil).Err(), true)
	if err := srv.WaitLoaded(60 * time.Second); err != nil {
		t.Fatal(err)
	}

	// A replica of a master that is gone.
	gone := redistest.Start(t, redistest.Options{})
	gone.Kill()
	if err := rdb.SlaveOf(ctx(t), "127.0.0.1", strconv.Itoa(gone.Port)).Err(); err != nil {
		t.Fatal(err)
	}
	check(t, "a write to a replica", rdb.Set(ctx(t), "k", "v", 0).Err(), true)
	check(t, "a script writing on a replica", rdb.Eval(ctx(t), "return redis.call('SET', 'k', 'v')", nil).Err(), true)
	if err := rdb.ConfigSet(ctx(t), "replica-serve-stale-data", "no").Err(); err != nil {
		t.Fatal(err)
	}
	check(t, "a read from a replica without its master", rdb.Get(ctx(t), "k").Err(), true)

	srv.Kill()
	err := rdb.Get(ctx(t), "k").Err()
	if err == nil || redisreply.Is(err) || redisreply.Transient(err) {
		t.Errorf("redis down: %v: reply %v, transient %v", err, redisreply.Is(err), redisreply.Transient(err))
	}
}

// The replies by which a Redis Cluster says a slot is moving (a command
// on keys split between two shards, a key asked of a shard that gave it
// away or never had it) are Moving and transient; every other reply in
// these tests is not Moving.
func TestMovingReplies(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	const key = "{moving}:a"
	slot := c.Slot(t, key)
	src := c.Owner(t, slot)
	var dst *redistest.Server
	for _, s := range c.Servers {
		if s != src {
			dst = s
			break
		}
	}
	rsrc, rdst := client(t, src), client(t, dst)
	moving := func(what string, err error) {
		t.Helper()
		t.Logf("%s: %v", what, err)
		if !redisreply.Moving(err) || !redisreply.Transient(err) || redisreply.StoreRefused(err) {
			t.Errorf("%s: %v: moving %v, transient %v, store refused %v; want moving and transient", what, err,
				redisreply.Moving(err), redisreply.Transient(err), redisreply.StoreRefused(err))
		}
	}
	moving("a key asked of a shard that does not serve it", rdst.Get(ctx(t), key).Err())

	for _, k := range []string{key, "{moving}:b"} {
		if err := rsrc.Set(ctx(t), k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rdst.Do(ctx(t), "CLUSTER", "SETSLOT", slot, "IMPORTING", src.ID()).Err())
	must(rsrc.Do(ctx(t), "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.ID()).Err())
	must(rsrc.Migrate(ctx(t), "127.0.0.1", strconv.Itoa(dst.Port), key, 0, 10*time.Second).Err())
	moving("a key that moved, asked of the shard it left", rsrc.Get(ctx(t), key).Err())
	moving("keys split between two shards", rsrc.MGet(ctx(t), key, "{moving}:b").Err())
	moving("a script on keys split between two shards",
		rsrc.Eval(ctx(t), "return redis.call('GET', KEYS[1])", []string{key, "{moving}:b"}).Err())
	if err := rsrc.Get(ctx(t), "{moving}:b").Err(); err != nil {
		t.Errorf("a key that has not moved yet: %v", err)
	}
	for _, err := range []error{errors.New("TRYAGAIN not a reply"), rsrc.Do(ctx(t), "NOSUCHCOMMAND").Err()} {
		if redisreply.Moving(err) {
			t.Errorf("%v: moving", err)
		}
	}
}
