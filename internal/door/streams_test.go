package door

import (
	"strings"
	"testing"
)

// TestWithStreamNamespaces: serve's Durable Streams namespaces come after
// the operator's, each only when no earlier namespace takes all its
// channels, and the list stays valid.
func TestWithStreamNamespaces(t *testing.T) {
	names := func(nss []Namespace) (out []string) {
		for _, ns := range nss {
			out = append(out, ns.Name)
		}
		return out
	}
	for _, c := range []struct {
		name string
		have []Namespace
		want []string
	}{
		{"none", nil, []string{"durable-streams-state", "durable-streams"}},
		{"other channels", []Namespace{{Name: "chat", Patterns: []string{"chat.>"}}}, []string{"chat", "durable-streams-state", "durable-streams"}},
		{"the operator's ds.>", []Namespace{{Name: "mine", Patterns: []string{"ds.>"}}}, []string{"mine"}},
		{"everything", []Namespace{{Name: "all", Patterns: []string{">"}}}, []string{"all"}},
	} {
		got := WithStreamNamespaces(c.have)
		if g := names(got); strings.Join(g, ",") != strings.Join(c.want, ",") {
			t.Errorf("%s: %v, want %v", c.name, g, c.want)
		}
		if err := CheckNamespaces(got); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	l := newNSList(WithStreamNamespaces(nil))
	if ns := l.of("ds.chat.room-1"); ns == nil || ns.Rules.History.HistorySize < 1<<30 || ns.Rules.History.HistoryAge >= 0 {
		t.Errorf("a stream's channel does not keep everything: %+v", ns)
	}
	if ns := l.of("ds.~.chat.room-1"); ns == nil || ns.Rules.History.HistorySize != 1 {
		t.Errorf("a stream's state channel does not keep its newest record: %+v", ns)
	}
}
