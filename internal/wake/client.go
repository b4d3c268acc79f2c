package wake

import "context"

// Client is an MQTT connection as the wake protocol needs it. An
// implementation keeps its session alive by itself: it reconnects with
// backoff and renews its subscriptions after a broker restart.
type Client interface {
	// Publish sends payload to topic at QoS 1 and returns once the broker
	// has acknowledged it, or ctx ends.
	Publish(ctx context.Context, topic string, payload []byte, retain bool) error
	// Subscribe delivers each message on topic (an exact topic name, no
	// wildcards) to fn, including the retained one right after subscribing,
	// until cancel is called. It returns once the broker has acknowledged
	// the subscription. fn runs on the client's goroutine: it must not
	// block.
	Subscribe(ctx context.Context, topic string, fn func(payload []byte, retained bool)) (cancel func(), err error)
}
