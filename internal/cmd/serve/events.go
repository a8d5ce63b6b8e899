package serve

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/pushctl/pushctl/internal/cmdutil"
	"github.com/pushctl/pushctl/internal/door"
	"github.com/pushctl/pushctl/internal/webhooks"
)

// eventsConfig is the lifecycle events' configuration from the flags;
// node names this node in the events (a Redis node's name, else the host
// and process).
func eventsConfig(o *Options, node string, log *slog.Logger) (door.EventsConfig, error) {
	for _, u := range o.Webhooks {
		if err := webhooks.CheckURL(u); err != nil {
			return door.EventsConfig{}, cmdutil.FlagErrorf("--webhook %v", err)
		}
	}
	if o.WebhookRetry <= 0 || o.WebhookQueue <= 0 || o.WebhookDelay < 0 {
		return door.EventsConfig{}, cmdutil.FlagErrorf("--webhook-retry and --webhook-queue must be positive, --webhook-delay not negative")
	}
	if node == "" {
		host, _ := os.Hostname()
		node = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	secret := o.WebhookSecret
	if secret == "" {
		secret = o.HookSecret
	}
	delay := o.WebhookDelay
	if delay == 0 {
		delay = -1 // none
	}
	return door.EventsConfig{Node: node, All: o.Events, Webhooks: o.Webhooks, WebhookSecret: []byte(secret),
		WebhookDelay: delay, WebhookRetry: o.WebhookRetry, WebhookQueue: o.WebhookQueue, Logger: log}, nil
}
