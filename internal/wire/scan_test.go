package wire

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// scanSeeds are frames of the shapes scanObject reads and of the shapes it
// must leave to encoding/json.
var scanSeeds = []string{
	`{"type":"publish","channel":"news","data":"hello"}`,
	`{"type":"publish","ref":"r1","channel":"a.b","event":"deploy","data":{"x":[1,2,{"y":"}"}]}}`,
	` { "channel" : "c" , "data" : 12.5e3 } `,
	`{"channel":"c","data":"aGk=","encoding":"base64"}`,
	`{"channel":"c","data":"aGk","encoding":"base64"}`,
	`{"channel":"c","data":"aG\u0073=","encoding":"base64"}`,
	`{"channel":"c","data":"say \"hi\"\n"}`,
	`{"channel":"c\u00e9","data":"x"}`,
	`{"channel":"é日本","data":"é"}`,
	"{\"channel\":\"\xff\",\"data\":\"x\"}",
	"{\"channel\":\"c\",\"data\":\"\xff\xfe\"}",
	`{"channel":"c","data":null}`,
	`{"channel":null,"data":"x"}`,
	`{"channel":5,"data":"x"}`,
	`{"Channel":"c","data":"x"}`,
	`{"channel":"a","channel":"b","data":"x","data":[true]}`,
	`{"channel":"c","data":"x"}{}`,
	`{"channel":"c","data":"x",}`,
	`{"channel":"c","data":tru}`,
	`{"channel":"c","data":[1,2}`,
	`{"channel":"c","data":"x"`,
	`{"channel":"c" "data":"x"}`,
	`{"channel":"c","data":"\ud800"}`,
	`{"channel":"c","data":"\u12"}`,
	`{"channel":"c","data":"bad \q"}`,
	"{\"channel\":\"c\",\"data\":\"tab\there\"}",
	`{"channels":["a","b"],"type":"subscribe"}`,
	`{"type":"ping","ref":"x"}`,
	`{"unknown":1,"data":"x"}`,
	`{}`,
	` {}  `,
	`{"data":-0}`,
	`{"data":01}`,
	`{"data":1.}`,
	`{"data":"x"}` + "\v",
	`{"type":"ack","ref":"7","channel":"c","id":"e1-9","seq":9,"subscribers":2}`,
	`{"type":"message","channel":"c","id":"e1-9","seq":9,"event":"ev","data":"hi","time":"2026-11-25T02:51:27.123456789Z"}`,
	`{"type":"message","seq":-1,"subscribers":1e2,"time":"yesterday"}`,
	`{"type":"gap","channel":"c","from":"e-1","to":"e-5","seq":18446744073709551616}`,
	`{"type":"error","ref":"1","code":"forbidden","message":"no","status":403}`,
	`{"type":"subscribed","channels":["a"],"cursor":"x"}`,
	`{"time":null,"subscribers":"3"}`,
	`[]`,
	`"str"`,
	``,
	`{"type":"publish","channel":"c","data":1,"idempotency_key":"k-1"}`,
	`{"channel":"c","data":"x","idempotency_key":"a\u0020b"}`,
	`{"data":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
}

// FuzzScanMatchesEncodingJSON checks the hand-written frame scanner
// against encoding/json: whenever the scanner reads a frame, encoding/json
// reads the same frame into the same values; plain strings read the same
// text. (Where the scanner gives up, encoding/json alone decides.)
func FuzzScanMatchesEncodingJSON(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast PublishFrame
		if scanPublishFrame(data, &fast) {
			var slow PublishFrame
			if err := json.Unmarshal(data, &slow); err != nil {
				t.Fatalf("scanned %q, encoding/json refuses it: %v", data, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("%q: scanned %+v, encoding/json %+v", data, fast, slow)
			}
			if text, ok := plainString(fast.Data); ok {
				var s string
				if err := json.Unmarshal(fast.Data, &s); err != nil || s != string(text) {
					t.Fatalf("data %q: plain text %q, encoding/json %q (%v)", fast.Data, text, s, err)
				}
			}
		}
		var fastE Envelope
		if scanEnvelope(data, &fastE) {
			var slow Envelope
			if err := json.Unmarshal(data, &slow); err != nil {
				t.Fatalf("scanned %q, encoding/json refuses it: %v", data, err)
			}
			if !reflect.DeepEqual(fastE, slow) {
				t.Fatalf("%q: scanned %+v, encoding/json %+v", data, fastE, slow)
			}
		}
		if e, err := DecodeEnvelope(data); err == nil {
			got, gerr := e.Bytes()
			want, werr := envelopeBytesByJSON(e)
			if (gerr == nil) != (werr == nil) || gerr == nil && string(got) != string(want) {
				t.Fatalf("%q: data %q (%v), by encoding/json %q (%v)", data, got, gerr, want, werr)
			}
		}
		var fastC ClientFrame
		if scanClientFrame(data, &fastC) {
			var slow ClientFrame
			if err := json.Unmarshal(data, &slow); err != nil {
				t.Fatalf("scanned %q, encoding/json refuses it: %v", data, err)
			}
			if !reflect.DeepEqual(fastC, slow) {
				t.Fatalf("%q: scanned %+v, encoding/json %+v", data, fastC, slow)
			}
		}
	})
}

// envelopeBytesByJSON is Envelope.Bytes done by encoding/json alone.
func envelopeBytesByJSON(e *Envelope) ([]byte, error) {
	if len(e.Data) == 0 || e.Data[0] != '"' {
		return []byte(e.Data), nil
	}
	var s string
	if err := json.Unmarshal(e.Data, &s); err != nil {
		return nil, err
	}
	if e.Encoding == "base64" {
		return base64.StdEncoding.DecodeString(s)
	}
	return []byte(s), nil
}

// TestScanReadsCommonFrames checks that the frames publishers send by the
// hundred thousand take the scanner's path (the fuzz target above only
// checks that what it takes is right).
func TestScanReadsCommonFrames(t *testing.T) {
	for _, s := range []string{
		`{"type":"publish","channel":"news","data":"hello"}`,
		`{"type":"publish","ref":"r1","channel":"a.b","event":"deploy","data":{"x":[1,2]}}`,
		`{"channel":"c","data":"say \"hi\"\n"}`,
		`{"channel":"é日本","data":"é"}`,
		`{"type":"ping","ref":"x"}`,
		`{"channel":"c","data":"once","idempotency_key":"order-17"}`,
	} {
		var p PublishFrame
		if !scanPublishFrame([]byte(s), &p) {
			t.Errorf("%s: left to encoding/json", s)
		}
	}
	for _, s := range []string{
		`{"type":"ack","ref":"7","channel":"c","id":"e1-9","seq":9,"subscribers":2}`,
		`{"type":"message","channel":"c","id":"e1-9","seq":9,"event":"ev","data":"hi","time":"2026-11-25T02:51:27.123456789Z"}`,
	} {
		var e Envelope
		if !scanEnvelope([]byte(s), &e) {
			t.Errorf("%s: left to encoding/json", s)
		}
	}
	for _, s := range []string{
		`{"Channel":"c","data":"x"}`,
		`{"channel":"c\u00e9","data":"x"}`,
		`{"channel":null,"data":"x"}`,
		`{"channels":["a"],"type":"subscribe"}`,
		`{"channel":"c","data":"x"}{}`,
	} {
		var p PublishFrame
		if scanPublishFrame([]byte(s), &p) {
			t.Errorf("%s: scanned, should be left to encoding/json", s)
		}
	}
}

// TestDecodeErrorsUnchanged checks that every seed, malformed ones
// included, decodes (or fails) exactly as encoding/json alone decides.
func TestDecodeErrorsUnchanged(t *testing.T) {
	for _, s := range scanSeeds {
		var want PublishFrame
		wantErr := decodeObject([]byte(s), &want)
		got, err := DecodePublishFrame([]byte(s))
		switch {
		case wantErr != nil && (err == nil || err.Error() != wantErr.Error()):
			t.Errorf("%.80q: publish frame error %v, want %v", s, err, wantErr)
		case wantErr == nil && (err != nil || !reflect.DeepEqual(*got, want)):
			t.Errorf("%.80q: publish frame %+v (%v), want %+v", s, got, err, want)
		}
		var wantC ClientFrame
		wantErr = decodeObject([]byte(s), &wantC)
		gotC, err := DecodeClientFrame([]byte(s))
		switch {
		case wantErr != nil && (err == nil || err.Error() != wantErr.Error()):
			t.Errorf("%.80q: client frame error %v, want %v", s, err, wantErr)
		case wantErr == nil && err == nil && !reflect.DeepEqual(*gotC, wantC):
			t.Errorf("%.80q: client frame %+v, want %+v", s, gotC, wantC)
		}
	}
}

func BenchmarkDecodePublishFrame(b *testing.B) {
	data := []byte(`{"type":"publish","channel":"bench","data":"1764038400123456789 000042 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	b.ReportAllocs()
	for b.Loop() {
		f, err := DecodeClientFrame(data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := (&PublishFrame{Channel: f.Channel, Data: f.Data}).Message(1 << 20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeMessage is what a subscriber (pushctl sub, a bridge)
// does with every message frame it reads.
func BenchmarkDecodeMessage(b *testing.B) {
	data := []byte(`{"type":"message","channel":"bench","id":"dn40l3e5gvpd-1000000","seq":1000000,"time":"2026-11-25T04:31:18.123456789Z","data":"000000042|xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	b.ReportAllocs()
	for b.Loop() {
		e, err := DecodeEnvelope(data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Message(); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzAppendPublishFrame: the frame a streaming publisher builds by hand
// publishes the same message as the one encoding/json makes of
// NewPublishFrame.
func FuzzAppendPublishFrame(f *testing.F) {
	f.Add("ref", "news", "", []byte("hello"))
	f.Add("1", "a.b", "ev\"", []byte(`{"x": [1, 2]}`))
	f.Add("2", "c", "", []byte{0xff, 0, '<'})
	f.Add("3", "c", "e", []byte("tab\t\u2028 & <b>"))
	f.Fuzz(func(t *testing.T, ref, channel, event string, data []byte) {
		want, werr := decodeMessage(mustMarshal(t, NewPublishFrame(ref, channel, event, data)))
		got, gerr := decodeMessage(AppendPublishFrame(nil, ref, channel, event, data))
		if (werr == nil) != (gerr == nil) || werr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("hand-built frame gives %+v (%v), encoding/json's %+v (%v)", got, gerr, want, werr)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeMessage(b []byte) (any, error) {
	f, err := DecodePublishFrame(b)
	if err != nil {
		return nil, err
	}
	m, err := f.Message(1 << 20)
	if err != nil {
		return nil, err
	}
	return [4]any{f.Ref, m.Channel, m.Event, string(m.Data) + "/" + strconv.Itoa(int(m.Kind))}, nil
}

func TestMaskedWSFrame(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		key := [4]byte{1, 2, 3, 4}
		b := AppendMaskedWSFrame([]byte("pre"), OpText, payload, key)
		b = b[3:]
		hdr := 2 + headerLenBytes(n)
		if b[0] != 0x81 || b[1]&0x80 == 0 || string(b[hdr:hdr+4]) != string(key[:]) || len(b) != hdr+4+n {
			t.Fatalf("%d bytes: header % x", n, b[:min(len(b), hdr+4)])
		}
		for i, c := range b[hdr+4:] {
			if c^key[i%4] != payload[i] {
				t.Fatalf("%d bytes: byte %d not masked right", n, i)
			}
		}
	}
}
