package pusher

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzDecodeFrame: any client frame is parsed or refused with an error,
// never a panic, and what parses has an event name within bounds.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{\"user_id\":1}"}}`,
		`{"event":"client-x","channel":"private-a","data":"\"s\""}`,
		`{"event":"pusher:ping","data":{}}`, `{"event":""}`, `[]`, `{"event":1}`, `{"event":"a","data":`, "\xff",
	} {
		f.Add([]byte(s))
	}
	lim := Limits{}.Filled()
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := DecodeFrame(b)
		if err != nil {
			return
		}
		if fr.Event == "" || len(fr.Event) > 200 {
			t.Fatalf("event %q accepted", fr.Event)
		}
		var sd SubscribeData
		if DecodeData(fr.Data, &sd) == nil && sd.ChannelData != "" {
			if m, err := ParseChannelData(sd.ChannelData, lim); err == nil {
				if m.UserID == "" || len(m.UserID) > lim.UserID || len(m.UserInfo) > lim.UserInfo {
					t.Fatalf("member %+v accepted", m)
				}
			}
		}
	})
}

// FuzzCheckRequest: a request signed by SignRequest is accepted, and any
// change of method, path, body or query is refused.
func FuzzCheckRequest(f *testing.F) {
	f.Add("POST", "/apps/1/events", `{"name":"e","channels":["c"],"data":"x"}`, "info=user_count", "x")
	f.Add("GET", "/apps/1/channels", "", "filter_by_prefix=presence-", "")
	a, _ := ParseApp("1:key:secret-0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, method, path, body, rawQuery, tamper string) {
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return
		}
		for k := range q {
			if strings.HasPrefix(strings.ToLower(k), "auth_") || strings.ToLower(k) == "body_md5" || k != strings.ToLower(k) {
				return
			}
		}
		signed := a.SignRequest(method, path, q, []byte(body), now)
		if err := a.CheckRequest(method, path, signed, []byte(body), now); err != nil {
			t.Fatalf("a signed request was refused: %v", err)
		}
		if tamper == "" {
			return
		}
		if a.CheckRequest(method, path+tamper, signed, []byte(body), now) == nil {
			t.Fatalf("path %q accepted for %q", path+tamper, path)
		}
		if len(body) > 0 || len(tamper) > 0 {
			if a.CheckRequest(method, path, signed, []byte(body+tamper), now) == nil {
				t.Fatal("a changed body was accepted")
			}
		}
	})
}

// FuzzParseApp: --pusher-app values parse or are refused; what parses is
// usable.
func FuzzParseApp(f *testing.F) {
	for _, s := range []string{"1:k:0123456789abcdef", "1:k:0123456789abcdef?prefix=a.&webhook=http://h/x&max_presence_members=5", "a:b:c", "1:k:s?x=%zz", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseApp(s)
		if err != nil {
			return
		}
		if a.ID == "" || a.Key == "" || len(a.Secret) < 16 || a.Limits.PresenceMembers <= 0 || a.Limits.EventData <= 0 {
			t.Fatalf("%q parsed to %+v", s, a)
		}
	})
}

func TestChannelAuthMatchesCheck(t *testing.T) {
	a, _ := ParseApp("1:key:secret-0123456789abcdef")
	cd := `{"user_id":"7"}`
	auth := a.ChannelAuth("1.2", "presence-x", cd)
	if err := a.CheckChannelAuth(auth, "1.2", "presence-x", cd); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][3]string{{"1.3", "presence-x", cd}, {"1.2", "presence-y", cd}, {"1.2", "presence-x", `{"user_id":"8"}`}} {
		if a.CheckChannelAuth(auth, bad[0], bad[1], bad[2]) == nil {
			t.Errorf("auth for 1.2/presence-x accepted for %v", bad)
		}
	}
	m, err := ParseChannelData(`{"user_id":42,"user_info":{"n":1}}`, Limits{}.Filled())
	if err != nil || m.UserID != "42" || string(m.UserInfo) != `{"n":1}` {
		t.Fatalf("numeric user id: %+v %v", m, err)
	}
}
