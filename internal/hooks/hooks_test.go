package hooks

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestSignAndVerify(t *testing.T) {
	secret, now := []byte("s3cret"), time.Now()
	body := []byte(`{"hook":"connect"}`)
	sig := Sign(secret, now, body)
	if err := Verify(secret, sig, body, now); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	for name, c := range map[string]struct {
		secret []byte
		header string
		body   []byte
		at     time.Time
	}{
		"tampered body":   {secret, sig, []byte(`{"hook":"publish"}`), now},
		"other secret":    {[]byte("other"), sig, body, now},
		"too old":         {secret, Sign(secret, now.Add(-6*time.Minute), body), body, now},
		"from the future": {secret, Sign(secret, now.Add(6*time.Minute), body), body, now},
		"missing":         {secret, "", body, now},
		"not hex":         {secret, "t=1,v1=zz", body, now},
		"no time":         {secret, strings.Split(sig, ",")[1], body, now},
	} {
		if err := Verify(c.secret, c.header, c.body, c.at); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
}

func TestParseAnswer(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		want   string // ok, denied, unavailable
		msg    string
	}{
		{200, `{}`, "ok", ""},
		{200, `{"user":"a","subscribe":["x.>"]}`, "ok", ""},
		{200, `{"error":{"code":"nope","message":"go away"}}`, "denied", "nope: go away"},
		{200, `{"error":{}}`, "denied", "refused by the application"},
		{403, `{"error":{"message":"no"}}`, "denied", "no"},
		{403, `forbidden`, "denied", "refused by the application"},
		{200, `not json`, "unavailable", ""},
		{500, `{}`, "unavailable", ""},
		{302, `{}`, "unavailable", ""},
		{101, `{}`, "unavailable", ""},
	} {
		var r reply
		err := parseAnswer(c.status, []byte(c.body), &r)
		got := "ok"
		var d *Denied
		switch {
		case errors.As(err, &d):
			got = "denied"
			if d.Error() != c.msg {
				t.Errorf("%d %s: message %q, want %q", c.status, c.body, d.Error(), c.msg)
			}
		case errors.Is(err, ErrUnavailable):
			got = "unavailable"
		case err != nil:
			got = err.Error()
		}
		if got != c.want {
			t.Errorf("%d %s: %s, want %s", c.status, c.body, got, c.want)
		}
	}
}

// FuzzParseAnswer: any answer is taken, refused or found unavailable,
// never a panic, and a refusal's message is never empty.
func FuzzParseAnswer(f *testing.F) {
	f.Add(200, []byte(`{"user":"u","publish":["a.>"],"ttl":60,"data":{"x":1}}`))
	f.Add(200, []byte(`{"error":{"code":"c","message":"m"}}`))
	f.Add(403, []byte(``))
	f.Add(200, []byte(`{"data":"text","error":null}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		var r reply
		err := parseAnswer(status, body, &r)
		var d *Denied
		switch {
		case err == nil:
			if status < 200 || status >= 300 {
				t.Fatalf("HTTP %d taken", status)
			}
		case errors.As(err, &d):
			if d.Message == "" {
				t.Fatal("a refusal without a message")
			}
			_ = utf8.ValidString(d.Error())
		case !errors.Is(err, ErrUnavailable):
			t.Fatalf("unexpected error %v", err)
		}
	})
}
