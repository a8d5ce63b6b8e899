package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/connrt"
	"github.com/pushctl/pushctl/internal/wire"
)

// TestBatchPublishAckBacklogIsBounded: a client that sends far more lines
// than the broker holds acknowledgements for, without reading any, gets
// every line it was acked for published, then one error line naming the
// lines that were not, and the request completes: bounded memory, nothing
// lost silently, no deadlock.
func TestBatchPublishAckBacklogIsBounded(t *testing.T) {
	old := maxPendingReplies
	maxPendingReplies = 1000
	t.Cleanup(func() { maxPendingReplies = old })
	b := broker.NewMemory(broker.MemoryOptions{Retention: broker.Retention{HistorySize: -1}})
	t.Cleanup(func() { b.Close() })
	srv := httptest.NewServer(New(b, Options{}))
	t.Cleanup(srv.Close)

	const n = 300_000
	var body bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&body, "{\"data\":\"line %d %s\"}\n", i, strings.Repeat("q", 30))
	}
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(64 << 10)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "POST /pub?channel=backlog HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n", body.Len())
	if _, err := conn.Write(body.Bytes()); err != nil {
		t.Fatalf("sending the body (without reading) failed: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	replies, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(replies), []byte("\n"))
	last := lines[len(lines)-1]
	var tail struct {
		Line  int    `json:"line"`
		Error *Error `json:"error"`
	}
	if err := json.Unmarshal(last, &tail); err != nil || tail.Error == nil || tail.Error.Code != CodeAckBacklog {
		t.Fatalf("last reply %s: want an %s error", last, CodeAckBacklog)
	}
	acked := len(lines) - 1
	if tail.Line != acked+1 || !strings.Contains(tail.Error.Message, fmt.Sprintf("lines %d to %d were not published", acked+1, n)) {
		t.Fatalf("after %d acks: %s", acked, last)
	}
	for i, l := range lines[:acked] {
		var a wire.PublishAck
		if err := json.Unmarshal(l, &a); err != nil || a.Line != i+1 || a.Seq != uint64(i+1) {
			t.Fatalf("reply %d: %s", i+1, l)
		}
	}
	info, err := b.Channel(t.Context(), "backlog")
	if err != nil || info.LastSeq != uint64(acked) {
		t.Fatalf("published %d (%v), acked %d", info.LastSeq, err, acked)
	}
	if acked >= n {
		t.Fatalf("all %d lines acked: the bound was never reached", n)
	}
	t.Logf("%d lines acked and published, %d refused with %s", acked, n-acked, CodeAckBacklog)
}

// TestUnknownErrorsAreInternal: an error nothing maps is a 500 with the
// stable internal_error code and no detail (which could leak internals).
func TestUnknownErrorsAreInternal(t *testing.T) {
	e := asError(fmt.Errorf("wrapped: %w", io.ErrUnexpectedEOF))
	if e.Status != 500 || e.Code != CodeInternal || e.Message != "internal error" {
		t.Fatalf("%+v", e)
	}
	if e := asError(connrt.ErrStalled); e.Code != CodeStalled {
		t.Fatalf("stalled maps to %+v", e)
	}
	if e := asError(broker.ErrClosed); e.Status != 503 || e.Code != CodeShuttingDown {
		t.Fatalf("closed maps to %+v", e)
	}
	if e := asError(broker.ErrStore); e.Status != 507 || e.Code != CodeStoreFailed {
		t.Fatalf("store failure maps to %+v", e)
	}
}
