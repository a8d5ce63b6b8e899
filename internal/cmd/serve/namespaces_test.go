package serve

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/pushctl/pushctl/internal/door"
)

func TestNamespaceSpecs(t *testing.T) {
	var v namespacesValue
	for _, spec := range []string{
		"match=chat.dm.>,history=5,client-publish=true,presence=true,presence-members=2",
		"name=chat,match=chat.>,match=room.*,history=1000,history-age=24h,history-bytes=1MiB,anonymous-subscribe=true",
		"name=metrics,match=metrics.*,history=0,client-publish=false,max-message-size=4KiB,publish-rate=10,publish-burst=20",
		"name=mod,match=mod.>,hooks=subscribe+publish,hook-failure=allow",
		"name=quiet,match=quiet.>,hooks=none",
		"name=jobs,match=jobs.>,consumer-max-pending=500,consumer-max-pending-bytes=64MiB",
	} {
		if err := v.Set(spec); err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
	}
	dm, chat, metrics := v.list[0], v.list[1], v.list[2]
	if mod, quiet := v.list[3], v.list[4]; len(*mod.Rules.Hooks) != 2 || mod.Rules.HookFailure != "allow" || len(*quiet.Rules.Hooks) != 0 {
		t.Errorf("hooks: %+v %+v", mod.Rules, quiet.Rules)
	}
	if dm.Name != "chat.dm.>" || dm.Rules.History.HistorySize != 5 || !*dm.Rules.ClientPublish || dm.Rules.PresenceMembers != 2 {
		t.Errorf("dm: %+v", dm)
	}
	if len(chat.Patterns) != 2 || chat.Rules.History.HistoryBytes != 1<<20 || chat.Rules.History.HistoryAge.Hours() != 24 || !*chat.Rules.AnonymousSubscribe {
		t.Errorf("chat: %+v", chat)
	}
	if jobs := v.list[5]; jobs.Rules.ConsumerMaxPending != 500 || jobs.Rules.ConsumerMaxPendingBytes != 64<<20 {
		t.Errorf("jobs: %+v", jobs.Rules)
	}
	if metrics.Rules.History.HistorySize != -1 || *metrics.Rules.ClientPublish || metrics.Rules.MaxMessageSize != 4096 || metrics.Rules.PublishBurst != 20 {
		t.Errorf("metrics: %+v", metrics)
	}
	for _, c := range []struct{ spec, want string }{
		{"history=5", "no match"},
		{"match=a,histroy=5", `unknown key "histroy"`},
		{"match=a,history=-1", "history=-1"},
		{"match=a,history=lots", "history=lots"},
		{"match=a,client-publish=maybe", "true or false"},
		{"match=a,max-message-size=big", "max-message-size=big"},
		{"match=a,publish-burst=5", "publish-burst goes with publish-rate"},
		{"match=a,durable=sometimes", "true or false"},
		{"match=a,hooks=connect", "not a hook of a channel"},
		{"match=a,hook-failure=maybe", "deny or allow"},
		{"match=a,consumer-max-pending=0", "want 1 to 10000000"},
		{"match=a,consumer-max-pending=20000000", "want 1 to 10000000"},
		{"match=a,consumer-max-pending-bytes=2TiB", "consumer-max-pending-bytes=2TiB"},
		{"match=a..b", "match"},
		{"match=a,name=x,name=y", "twice"},
		{"match", "KEY=VALUE"},
	} {
		var v namespacesValue
		if err := v.Set(c.spec); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.spec, err, c.want)
		}
	}
}

func TestNamespacesFromYAML(t *testing.T) {
	doc := `
namespace:
  - name: dm
    match: chat.dm.>
    history: 5
  - name: chat
    match: [chat.>, room.*]
    client-publish: true
  - match=metrics.*,history=0
`
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &raw); err != nil {
		t.Fatal(err)
	}
	var v namespacesValue
	n := raw["namespace"]
	if err := v.SetYAML(&n); err != nil {
		t.Fatal(err)
	}
	if len(v.list) != 3 || v.list[1].Name != "chat" || len(v.list[1].Patterns) != 2 || v.list[2].Name != "metrics.*" {
		t.Fatalf("%+v", v.list)
	}
	for _, c := range []struct{ doc, want string }{
		{"namespace: chat", "line 1: want a list"},
		{"namespace:\n  - match: a.>\n  - match: a.b\n", "line 3: namespace \"a.b\" can never match"},
		{"namespace:\n  - match: a\n    history: [1, 2]\n", "line 3: history takes one value"},
		{"namespace:\n  - match: a\n    colour: blue\n", `line 2: unknown key "colour"`},
	} {
		var raw map[string]yaml.Node
		if err := yaml.Unmarshal([]byte(c.doc), &raw); err != nil {
			t.Fatal(err)
		}
		var v namespacesValue
		n := raw["namespace"]
		if err := v.SetYAML(&n); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.doc, err, c.want)
		}
	}
}

// FuzzNamespaceSpec: any --namespace value is taken or refused with an
// error, never a panic; what is taken passes CheckNamespaces and has a
// name and a pattern.
func FuzzNamespaceSpec(f *testing.F) {
	f.Add("match=chat.>,history=5,client-publish=false")
	f.Add("name=m,match=metrics.*,history=0,max-message-size=4KiB,publish-rate=0.5,publish-burst=2")
	f.Add("match=a,match=a.*,history-age=1h,history-bytes=1MiB,presence=false,presence-members=9")
	f.Fuzz(func(t *testing.T, spec string) {
		ns, err := parseNamespaceSpec(spec)
		if err != nil {
			return
		}
		if ns.Name == "" || len(ns.Patterns) == 0 {
			t.Fatalf("%q: taken without a name or pattern: %+v", spec, ns)
		}
		if err := door.CheckNamespaces([]door.Namespace{ns}); err != nil && !strings.Contains(err.Error(), "match") {
			t.Fatalf("%q: taken, then refused: %v", spec, err)
		}
	})
}

// The lifecycle events' keys: events, publish-events, webhook (repeatable,
// a list in YAML); a webhook must be an http(s) URL.
func TestNamespaceEventKeys(t *testing.T) {
	var v namespacesValue
	if err := v.Set("name=chat,match=chat.>,events=false,publish-events=true,webhook=http://a.example/h,webhook=https://b.example/h"); err != nil {
		t.Fatal(err)
	}
	r := v.list[0].Rules
	if r.Events == nil || *r.Events || !r.PublishEvents || len(r.Webhooks) != 2 || r.Webhooks[1] != "https://b.example/h" {
		t.Fatalf("rules %+v", r)
	}
	for spec, want := range map[string]string{
		"match=a,webhook=ftp://x":   "want an http:// or https:// URL",
		"match=a,events=maybe":      "want true or false",
		"match=a,publish-events=no": "want true or false",
	} {
		var v namespacesValue
		if err := v.Set(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
	var y namespacesValue
	var node yaml.Node
	if err := yaml.Unmarshal([]byte("- name: chat\n  match: chat.>\n  webhook: [http://a.example/h, http://b.example/h]\n"), &node); err != nil {
		t.Fatal(err)
	}
	if err := y.SetYAML(node.Content[0]); err != nil {
		t.Fatal(err)
	}
	if got := y.list[0].Rules.Webhooks; len(got) != 2 {
		t.Fatalf("YAML webhooks %v", got)
	}
}
