//go:build cgo && !nozmq

package zmq

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	zmq4 "github.com/pebbe/zmq4"
	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/door"
)

// BenchmarkRawPubSub is the ceiling: pebbe/zmq4 PUB to SUB over loopback
// TCP, multipart [channel, 100-byte payload, seq], no pushctl code.
func BenchmarkRawPubSub(b *testing.B) {
	sub, _ := zmq4.NewSocket(zmq4.SUB)
	defer sub.Close()
	sub.SetRcvhwm(0)
	sub.SetSubscribe("")
	if err := sub.Bind("tcp://127.0.0.1:*"); err != nil {
		b.Fatal(err)
	}
	addr, _ := sub.GetLastEndpoint()
	done := make(chan struct{})
	go func() {
		pub, _ := zmq4.NewSocket(zmq4.XPUB)
		defer pub.Close()
		pub.SetSndhwm(0)
		pub.SetLinger(5 * time.Second)
		pub.Connect(addr)
		pub.RecvBytes(0) // the subscription
		payload := make([]byte, 100)
		var seq [8]byte
		for i := 0; i < b.N; i++ {
			binary.BigEndian.PutUint64(seq[:], uint64(i+1))
			pub.SendMessage([]byte("bench"), payload, seq[:])
		}
		close(done)
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := sub.RecvMessageBytes(0); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkIngest measures ZeroMQ into the broker: a pebbe PUB sends to a
// broker's ZeroMQ in endpoint, and one subscriber of the broker receives.
func BenchmarkIngest(b *testing.B) {
	br := broker.NewMemory(broker.MemoryOptions{QueueSize: 1 << 24})
	defer br.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	var st BrokerStats
	ep := Endpoint{Addr: "tcp://127.0.0.1:*", Bind: true}
	go RunBroker(ctx, door.New(br, door.Config{}), BrokerConfig{In: &ep, Ready: func(_, a string) { ready <- a }}, &st)
	addr := <-ready
	sub, err := br.Subscribe(ctx, broker.SubscribeOptions{Channels: []string{"bench"}, QueueSize: 1 << 24})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	go func() {
		pub, _ := zmq4.NewSocket(zmq4.XPUB)
		defer pub.Close()
		pub.SetSndhwm(0)
		pub.SetLinger(5 * time.Second)
		pub.Connect(addr)
		pub.RecvBytes(0)
		payload := []byte(fmt.Sprintf("%0100d", 0))
		var seq [8]byte
		for i := 0; i < b.N; i++ {
			binary.BigEndian.PutUint64(seq[:], uint64(i+1))
			pub.SendMessage([]byte("bench"), payload, seq[:])
		}
	}()
	b.ResetTimer()
	got := 0
	var buf []broker.Event
	for got < b.N {
		evs, err := sub.Next(ctx, buf)
		if err != nil {
			b.Fatal(err)
		}
		got += len(evs)
		buf = evs
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
