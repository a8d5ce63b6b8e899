package cmdutil

import (
	"context"
	"testing"
	"time"
)

func TestFilter(t *testing.T) {
	ctx := context.Background()
	f, err := FilterFlags{Where: `.status == "done" and .env == "prod"`}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		data   string
		isJSON bool
		want   bool
	}{
		{`{"status":"done","env":"prod"}`, true, true},
		{`{"status":"done","env":"dev"}`, true, false},
		{`{"status":"done","env":"prod"}`, false, false}, // declared text
		{`not json`, false, false},
		{`[1,2]`, true, false}, // .status of an array: an error, no match
	} {
		got, _ := f.Keep(ctx, []byte(c.data), c.isJSON)
		if got != c.want {
			t.Errorf("--where on %s (json %v): %v, want %v", c.data, c.isJSON, got, c.want)
		}
	}
	if _, err := (FilterFlags{Where: `.a ==`}).Compile(); err == nil || ExitCode(err) != ExitUsage {
		t.Fatalf("invalid --where: %v", err)
	}
	if _, err := (FilterFlags{Match: `a(`}).Compile(); err == nil || ExitCode(err) != ExitUsage {
		t.Fatalf("invalid --match: %v", err)
	}
	m, _ := FilterFlags{Match: `^deploy(ed)? `, Where: `.ok`}.Compile()
	if ok, _ := m.Keep(ctx, []byte(`deployed {"ok":true}`), true); ok {
		t.Fatal("both must pass: data is not JSON for --where")
	}
	m, _ = FilterFlags{Match: `deployed`}.Compile()
	if ok, _ := m.Keep(ctx, []byte("v2 deployed"), false); !ok {
		t.Fatal("--match on text")
	}
	var none *Filter
	if ok, _ := none.Keep(ctx, []byte("x"), false); !ok {
		t.Fatal("no filter keeps everything")
	}
}

// FuzzFilter: no expression or data makes compiling or evaluating panic.
func FuzzFilter(f *testing.F) {
	f.Add(`.a == 1`, `{"a":1}`)
	f.Add(`.[] | select(. > 2)`, `[1,2,3]`)
	f.Add(`.x.y`, `"s"`)
	f.Fuzz(func(t *testing.T, expr, data string) {
		flt, err := FilterFlags{Where: expr}.Compile()
		if err != nil {
			return
		}
		// An expression may loop for ever (def f: f; f), as in jq.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		flt.Keep(ctx, []byte(data), true)
	})
}
