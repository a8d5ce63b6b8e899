package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestMetricsAfterTraffic(t *testing.T) {
	_, url := serve(t)
	req, _ := http.NewRequest("GET", url+"/sub/m", nil)
	req.Header.Set("Accept", "text/event-stream")
	sse, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Body.Close()
	nd, err := http.Get(url + "/sub/m?format=ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Body.Close()
	waitSubscribers(t, url, "m", 2)
	for i := 0; i < 5; i++ {
		run(t, "", "pub", "m", "-s", url, "x")
	}
	// Read all five on the NDJSON stream, so its deliveries are counted.
	br := bufio.NewReader(nd.Body)
	for n := 0; n < 5; {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(l, `"type":"message"`) {
			n++
		}
	}
	http.Post(url+"/pub/bad..name", "text/plain", strings.NewReader("x"))
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, want := range []string{
		"pushctl_messages_published_total 5\n",
		`pushctl_connections{transport="sse"} 1` + "\n",
		`pushctl_connections{transport="ndjson"} 1` + "\n",
		`pushctl_deliveries_total{transport="ndjson"} 5` + "\n",
		`pushctl_delivery_latency_seconds_count{transport="ndjson"} 5` + "\n",
		"pushctl_subscribers 2\n",
		"pushctl_store_messages 5\n",
		"pushctl_http_errors_total 1\n",
		"# TYPE pushctl_delivery_latency_seconds histogram\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
}

func TestChannelsAndStatsCommands(t *testing.T) {
	_, url := serve(t)
	run(t, "", "pub", "app.one", "-s", url, "1")
	run(t, "", "pub", "app.two", "-s", url, "2")
	run(t, "", "pub", "other", "-s", url, "3")
	out, errOut, code := run(t, "", "channels", "app.*", "-s", url)
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0]["channel"] != "app.one" {
		t.Fatalf("channels: exit %d %q %s", code, out, errOut)
	}
	if _, errOut, code := run(t, "", "channels", "--delete", "other", "-s", url); code != 0 {
		t.Fatal(errOut)
	}
	out, _, _ = run(t, "", "channels", "-s", url)
	if strings.Contains(out, `"other"`) {
		t.Fatalf("deleted channel still listed: %s", out)
	}
	out, _, code = run(t, "", "stats", "-s", url)
	var st map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st["published"] != float64(3) {
		t.Fatalf("stats: %q", out)
	}
	// Completion of channel names comes from the broker.
	out, _, _ = run(t, "", "__complete", "sub", "-s", url, "app.")
	if !strings.Contains(out, "app.one\t") || !strings.Contains(out, "app.two\t") {
		t.Fatalf("completion: %q", out)
	}
}
