package serve

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pushctl/pushctl/internal/broker"
	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/consumer"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/webhooks"
)

// namespacesValue is --namespace (repeatable, KEY=VALUE,… each) and the
// config file's "namespace:" list of mappings with the same keys. Each
// namespace is kept as the text it came from too, for --print-config.
type namespacesValue struct {
	list  []door.Namespace
	specs []string
	set   bool // from the command line: the file does not replace it
}

// namespaceKeys are the keys a namespace takes, with what each accepts.
var namespaceKeys = map[string]string{
	"name":                       "a name for the namespace (default: its first pattern)",
	"match":                      "a channel pattern such as chat.> (repeatable)",
	"history":                    "how many messages each channel keeps (0: none)",
	"history-age":                "how long messages are kept, such as 24h",
	"history-bytes":              "the data each channel keeps, such as 1MiB",
	"client-publish":             "true or false: may clients publish over their connections",
	"anonymous-subscribe":        "true or false: may callers without a token subscribe",
	"presence":                   "true or false: may members join",
	"presence-members":           "members per channel",
	"max-message-size":           "the largest message, such as 64KiB (at most serve's)",
	"publish-rate":               "publishes per second per token or address",
	"publish-burst":              "publishes allowed in a burst above publish-rate",
	"durable":                    "true or false: with --data-dir, whether its channels are written to disk",
	"hooks":                      "the hooks asked for its channels: subscribe, publish, both (subscribe+publish) or none",
	"hook-failure":               "deny or allow: what happens when a hook does not answer",
	"events":                     "true or false: whether its channels' lifecycle events are published (see docs/events.md)",
	"publish-events":             "true or false: a published event for each message",
	"webhook":                    "a URL its channels' lifecycle events are POSTed to (repeatable)",
	"consumer-max-pending":       "messages a durable consumer of its channels keeps unacknowledged, at most (see docs/consumers.md)",
	"consumer-max-pending-bytes": "the data a durable consumer of its channels keeps unacknowledged, at most, such as 64MiB",
}

func (v *namespacesValue) String() string { return strings.Join(v.specs, " ") }
func (v *namespacesValue) Type() string   { return "namespace" }

// Set adds one namespace from the command line: KEY=VALUE,KEY=VALUE.
func (v *namespacesValue) Set(spec string) error {
	ns, err := parseNamespaceSpec(spec)
	if err != nil {
		return err
	}
	v.list = append(v.list, ns)
	v.specs = append(v.specs, spec)
	v.set = true
	return door.CheckNamespaces(v.list)
}

// Append, Replace and GetSlice make the flag a pflag.SliceValue.
func (v *namespacesValue) Append(s string) error { return v.Set(s) }
func (v *namespacesValue) Replace(ss []string) error {
	v.list, v.specs = nil, nil
	for _, s := range ss {
		if err := v.Set(s); err != nil {
			return err
		}
	}
	return nil
}
func (v *namespacesValue) GetSlice() []string { return v.specs }

// SetYAML takes the config file's list of namespaces (mappings, or specs
// as on the command line); a line number goes with every error.
func (v *namespacesValue) SetYAML(node *yaml.Node) error {
	if node.Kind != yaml.SequenceNode {
		return fmt.Errorf("line %d: want a list of namespaces", node.Line)
	}
	var list []door.Namespace
	var specs []string
	for _, item := range node.Content {
		var ns door.Namespace
		var spec string
		var err error
		switch item.Kind {
		case yaml.ScalarNode:
			spec = item.Value
			ns, err = parseNamespaceSpec(spec)
		case yaml.MappingNode:
			ns, spec, err = parseNamespaceMap(item)
		default:
			err = fmt.Errorf("want a mapping of namespace keys")
		}
		if err != nil {
			return fmt.Errorf("line %d: %v", item.Line, err)
		}
		list = append(list, ns)
		specs = append(specs, spec)
		if err := door.CheckNamespaces(list); err != nil {
			return fmt.Errorf("line %d: %v", item.Line, err)
		}
	}
	v.list, v.specs = list, specs
	return nil
}

// parseNamespaceSpec reads KEY=VALUE,KEY=VALUE (match may repeat).
func parseNamespaceSpec(spec string) (door.Namespace, error) {
	var kvs [][2]string
	for _, part := range strings.Split(spec, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return door.Namespace{}, fmt.Errorf("%q: want KEY=VALUE pairs separated by commas, such as match=chat.>,history=100", part)
		}
		kvs = append(kvs, [2]string{strings.TrimSpace(k), strings.TrimSpace(val)})
	}
	return buildNamespace(kvs)
}

// parseNamespaceMap reads one mapping of the config file and returns it
// with its spec form.
func parseNamespaceMap(n *yaml.Node) (door.Namespace, string, error) {
	var kvs [][2]string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		switch val.Kind {
		case yaml.ScalarNode:
			kvs = append(kvs, [2]string{k.Value, val.Value})
		case yaml.SequenceNode:
			if k.Value == "hooks" {
				var hs []string
				for _, it := range val.Content {
					hs = append(hs, it.Value)
				}
				if len(hs) == 0 {
					hs = []string{"none"}
				}
				kvs = append(kvs, [2]string{"hooks", strings.Join(hs, "+")})
				continue
			}
			if k.Value != "match" && k.Value != "webhook" {
				return door.Namespace{}, "", fmt.Errorf("line %d: %s takes one value", val.Line, k.Value)
			}
			for _, it := range val.Content {
				if it.Kind != yaml.ScalarNode {
					return door.Namespace{}, "", fmt.Errorf("line %d: match: want patterns", it.Line)
				}
				kvs = append(kvs, [2]string{k.Value, it.Value})
			}
		default:
			return door.Namespace{}, "", fmt.Errorf("line %d: %s: want a value", val.Line, k.Value)
		}
	}
	ns, err := buildNamespace(kvs)
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		parts[i] = kv[0] + "=" + kv[1]
	}
	return ns, strings.Join(parts, ","), err
}

func buildNamespace(kvs [][2]string) (door.Namespace, error) {
	var ns door.Namespace
	var hist broker.Retention
	histSet := false
	seen := map[string]bool{}
	for _, kv := range kvs {
		k, val := kv[0], kv[1]
		if _, ok := namespaceKeys[k]; !ok {
			return ns, fmt.Errorf("unknown key %q; a namespace takes %s", k, keyList())
		}
		if seen[k] && k != "match" && k != "webhook" {
			return ns, fmt.Errorf("%s given twice", k)
		}
		seen[k] = true
		bad := func(err error) error { return fmt.Errorf("%s=%s: %s (%v)", k, val, namespaceKeys[k], err) }
		var err error
		switch k {
		case "name":
			if val == "" {
				err = fmt.Errorf("empty")
			}
			ns.Name = val
		case "match":
			if val == "" {
				err = fmt.Errorf("empty")
			}
			ns.Patterns = append(ns.Patterns, val)
		case "history":
			var n int
			if n, err = strconv.Atoi(val); err == nil && n < 0 {
				err = fmt.Errorf("negative")
			}
			hist.HistorySize, histSet = n, true
			if n == 0 {
				hist.HistorySize = -1 // none
			}
		case "history-age":
			var d time.Duration
			if d, err = time.ParseDuration(val); err == nil && d <= 0 {
				err = fmt.Errorf("not positive")
			}
			hist.HistoryAge, histSet = d, true
		case "history-bytes":
			hist.HistoryBytes, err = cmdutil.ParseByteSize(val)
			histSet = true
		case "client-publish":
			ns.Rules.ClientPublish, err = boolPtr(val)
		case "anonymous-subscribe":
			ns.Rules.AnonymousSubscribe, err = boolPtr(val)
		case "presence":
			ns.Rules.Presence, err = boolPtr(val)
		case "presence-members":
			if ns.Rules.PresenceMembers, err = strconv.Atoi(val); err == nil && ns.Rules.PresenceMembers <= 0 {
				err = fmt.Errorf("not positive")
			}
		case "consumer-max-pending":
			if ns.Rules.ConsumerMaxPending, err = strconv.Atoi(val); err == nil && (ns.Rules.ConsumerMaxPending <= 0 || ns.Rules.ConsumerMaxPending > consumer.MaxMaxPending) {
				err = fmt.Errorf("want 1 to %d", consumer.MaxMaxPending)
			}
		case "consumer-max-pending-bytes":
			if ns.Rules.ConsumerMaxPendingBytes, err = cmdutil.ParseByteSize(val); err == nil && (ns.Rules.ConsumerMaxPendingBytes <= 0 || ns.Rules.ConsumerMaxPendingBytes > consumer.MaxMaxPendingBytes) {
				err = fmt.Errorf("want 1 byte to %d", consumer.MaxMaxPendingBytes)
			}
		case "max-message-size":
			if ns.Rules.MaxMessageSize, err = cmdutil.ParseByteSize(val); err == nil && ns.Rules.MaxMessageSize == 0 {
				err = fmt.Errorf("zero")
			}
		case "publish-rate":
			if ns.Rules.PublishRate, err = strconv.ParseFloat(val, 64); err == nil && !(ns.Rules.PublishRate > 0 && ns.Rules.PublishRate < 1e9) {
				err = fmt.Errorf("not a positive rate")
			}
		case "durable":
			ns.Rules.Durable, err = boolPtr(val)
		case "events":
			ns.Rules.Events, err = boolPtr(val)
		case "publish-events":
			var b *bool
			if b, err = boolPtr(val); err == nil {
				ns.Rules.PublishEvents = *b
			}
		case "webhook":
			if err = webhooks.CheckURL(val); err == nil {
				ns.Rules.Webhooks = append(ns.Rules.Webhooks, val)
			}
		case "hooks":
			list := []string{}
			if val == "" {
				err = fmt.Errorf("empty: say none for no hooks")
			}
			if val != "none" {
				for _, h := range strings.FieldsFunc(val, func(r rune) bool { return r == '+' || r == '|' || r == ' ' }) {
					if h != "subscribe" && h != "publish" {
						err = fmt.Errorf("%q is not a hook of a channel", h)
					}
					list = append(list, h)
				}
			}
			ns.Rules.Hooks = &list
		case "hook-failure":
			if val != door.FailDeny && val != door.FailAllow {
				err = fmt.Errorf("want deny or allow")
			}
			ns.Rules.HookFailure = val
		case "publish-burst":
			if ns.Rules.PublishBurst, err = strconv.Atoi(val); err == nil && ns.Rules.PublishBurst <= 0 {
				err = fmt.Errorf("not positive")
			}
		}
		if err != nil {
			return ns, bad(err)
		}
	}
	if len(ns.Patterns) == 0 {
		return ns, fmt.Errorf("no match=PATTERN: a namespace must say which channels it holds")
	}
	if ns.Name == "" {
		ns.Name = ns.Patterns[0]
	}
	if histSet {
		ns.Rules.History = &hist
	}
	if ns.Rules.PublishBurst > 0 && ns.Rules.PublishRate == 0 {
		return ns, fmt.Errorf("publish-burst goes with publish-rate")
	}
	return ns, nil
}

func boolPtr(v string) (*bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return nil, fmt.Errorf("want true or false")
	}
	return &b, nil
}

func keyList() string {
	keys := make([]string, 0, len(namespaceKeys))
	for k := range namespaceKeys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}
