package mqttc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// unsubscribeTimeout bounds the UNSUBSCRIBE sent when the last handler of
// a topic is cancelled.
const unsubscribeTimeout = 10 * time.Second

// maxSubscribeBytes bounds the topic bytes in one SUBSCRIBE when renewing
// subscriptions, to stay under brokers' packet size limits (the embedded
// broker takes 4 KiB).
const maxSubscribeBytes = 2048

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("mqttc: client closed")

// handler is one Subscribe call's callback.
type handler struct {
	fn        func(payload []byte, retained bool)
	cancelled atomic.Bool
}

// Publish sends payload to topic (an exact topic name) at QoS 1 and
// returns once the broker has acknowledged it. While the connection is
// down it waits for the next one, and it retries a publish whose
// connection was lost before the acknowledgement (so a message may arrive
// twice), until ctx ends. A broker's refusal is a *RefusedError.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	if err := checkTopic(topic); err != nil {
		return fmt.Errorf("mqttc: publish: %w", err)
	}
	var after uint64
	for {
		gen, actx, done, err := c.attempt(ctx, after)
		if errors.Is(err, ErrClosed) {
			return ErrClosed
		} else if err != nil {
			return fmt.Errorf("mqttc: publish to %q: %w", topic, err)
		}
		c.mu.Lock()
		limit := c.maxSize
		c.mu.Unlock()
		if size := publishSize(topic, payload); limit > 0 && size > int(limit) {
			done()
			// The broker would drop the connection over it, again and again.
			return fmt.Errorf("mqttc: publish to %q: the message takes %d bytes, more than the broker's limit of %d", topic, size, limit)
		}
		resp, err := c.cm.Publish(actx, &paho.Publish{QoS: 1, Topic: topic, Payload: payload, Retain: retain})
		done()
		if err == nil {
			return nil
		}
		if resp != nil && resp.ReasonCode >= 0x80 {
			reason := ""
			if resp.Properties != nil {
				reason = resp.Properties.ReasonString
			}
			return &RefusedError{Op: "publish", Topic: topic, Code: resp.ReasonCode, Reason: reason}
		}
		if errors.Is(err, paho.ErrInvalidArguments) || ctx.Err() != nil {
			return fmt.Errorf("mqttc: publish to %q: %w", topic, err)
		}
		c.log.Debug("publish failed; retrying on the next connection", "topic", topic, "error", err.Error())
		after = gen
	}
}

// Subscribe delivers each message on topic (an exact topic name, no
// wildcards) to fn, including the retained one the broker sends after
// subscribing, until cancel is called. It returns once the broker has
// acknowledged the subscription, waiting for a connection if need be, or
// when ctx ends; a broker's refusal is a *RefusedError. The subscription
// is renewed after every reconnection, and the broker then sends the
// retained message again.
//
// fn runs on the client's receiving goroutine, so it must not block;
// several subscriptions to one topic each get every message (and each
// new one makes the broker send the retained message to all of them).
// cancel may be called from fn; after it returns, fn is not called again
// unless a call is already under way.
func (c *Client) Subscribe(ctx context.Context, topic string, fn func(payload []byte, retained bool)) (cancel func(), err error) {
	if err := checkTopic(topic); err != nil {
		return nil, fmt.Errorf("mqttc: subscribe: %w", err)
	}
	if fn == nil {
		return nil, errors.New("mqttc: subscribe: nil callback")
	}
	h := &handler{fn: fn}
	if !c.add(topic, h) {
		return nil, ErrClosed
	}
	var once sync.Once
	cancel = func() { once.Do(func() { c.remove(topic, h) }) }

	var after uint64
	for {
		gen, actx, done, err := c.attempt(ctx, after)
		if err != nil {
			cancel()
			if errors.Is(err, ErrClosed) {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("mqttc: subscribe to %q: %w", topic, err)
		}
		c.subOps.Lock()
		ack, err := c.cm.Subscribe(actx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
		c.subOps.Unlock()
		done()
		if err == nil {
			return cancel, nil
		}
		if ack != nil && len(ack.Reasons) == 1 && ack.Reasons[0] >= 0x80 {
			cancel()
			reason := ""
			if ack.Properties != nil {
				reason = ack.Properties.ReasonString
			}
			return nil, &RefusedError{Op: "subscribe", Topic: topic, Code: ack.Reasons[0], Reason: reason}
		}
		if errors.Is(err, paho.ErrInvalidArguments) || ctx.Err() != nil {
			cancel()
			return nil, fmt.Errorf("mqttc: subscribe to %q: %w", topic, err)
		}
		c.log.Debug("subscribe failed; retrying on the next connection", "topic", topic, "error", err.Error())
		after = gen
	}
}

// attempt waits for a connection newer than generation after, and returns
// its generation and a context for one request on it: ctx, also ended when
// that connection is lost. (paho forgets a request in flight when its
// connection drops, and leaves it waiting for its packet timeout.) done
// releases the context.
func (c *Client) attempt(ctx context.Context, after uint64) (gen uint64, actx context.Context, done func(), err error) {
	for {
		c.mu.Lock()
		up, gen, changed, closed, connCtx := c.up, c.gen, c.changed, c.closed, c.connCtx
		c.mu.Unlock()
		if closed {
			return 0, nil, nil, ErrClosed
		}
		if up && gen > after {
			actx, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(connCtx, cancel)
			return gen, actx, func() { stop(); cancel() }, nil
		}
		select {
		case <-changed:
		case <-c.life.Done():
			return 0, nil, nil, ErrClosed
		case <-ctx.Done():
			c.mu.Lock()
			up, last := c.up, c.lastErr
			c.mu.Unlock()
			if last != nil && !up {
				return 0, nil, nil, fmt.Errorf("%w (not connected: %v)", ctx.Err(), last)
			}
			return 0, nil, nil, ctx.Err()
		}
	}
}

// add registers h for topic, unless the client is closed.
func (c *Client) add(topic string, h *handler) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.subs[topic] = append(slices.Clip(c.subs[topic]), h)
	return true
}

// remove unregisters h; when it was the topic's last handler, an
// UNSUBSCRIBE follows in the background.
func (c *Client) remove(topic string, h *handler) {
	h.cancelled.Store(true)
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := slices.DeleteFunc(slices.Clone(c.subs[topic]), func(x *handler) bool { return x == h })
	if len(hs) > 0 {
		c.subs[topic] = hs
		return
	}
	delete(c.subs, topic)
	if c.closed || !c.up {
		return // a new connection starts without it
	}
	c.wg.Add(1)
	go c.unsubscribe(topic)
}

func (c *Client) unsubscribe(topic string) {
	defer c.wg.Done()
	c.subOps.Lock()
	defer c.subOps.Unlock()
	c.mu.Lock()
	wanted, up, connCtx := len(c.subs[topic]) > 0, c.up, c.connCtx
	c.mu.Unlock()
	if wanted || !up {
		return // subscribed again meanwhile, or gone with the connection
	}
	ctx, cancel := context.WithTimeout(connCtx, unsubscribeTimeout)
	defer cancel()
	if _, err := c.cm.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{topic}}); err != nil {
		c.log.Debug("unsubscribe failed", "topic", topic, "error", err.Error())
	}
}

// resubscribe renews every subscription on a new connection.
func (c *Client) resubscribe(ctx context.Context) {
	c.subOps.Lock()
	defer c.subOps.Unlock()
	c.mu.Lock()
	topics := make([]string, 0, len(c.subs))
	for t := range c.subs {
		topics = append(topics, t)
	}
	c.mu.Unlock()
	slices.Sort(topics)
	for len(topics) > 0 {
		n, size := 0, 0
		for n < len(topics) && (n == 0 || size+len(topics[n]) <= maxSubscribeBytes) {
			size += len(topics[n])
			n++
		}
		batch := topics[:n]
		topics = topics[n:]
		req := &paho.Subscribe{}
		for _, t := range batch {
			req.Subscriptions = append(req.Subscriptions, paho.SubscribeOptions{Topic: t, QoS: 1})
		}
		ack, err := c.cm.Subscribe(ctx, req)
		if ack == nil {
			if ctx.Err() == nil {
				c.log.Warn("renewing subscriptions failed", "error", err.Error())
			}
			return // the connection is going; the next one renews them all
		}
		for i, code := range ack.Reasons {
			if code >= 0x80 && i < len(batch) {
				c.log.Warn("broker refused to renew a subscription", "topic", batch[i], "reason", reasonName(code))
			}
		}
	}
	c.log.Debug("subscriptions renewed")
}

// onPublish hands a received message to the topic's handlers. It runs on
// paho's receiving goroutine.
func (c *Client) onPublish(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	c.mu.Lock()
	hs := c.subs[p.Topic]
	c.mu.Unlock()
	for _, h := range hs {
		if !h.cancelled.Load() {
			h.fn(p.Payload, p.Retain)
		}
	}
	return len(hs) > 0, nil
}

// publishSize is the size of a QoS 1 PUBLISH packet without properties
// (MQTT 5 section 3.3).
func publishSize(topic string, payload []byte) int {
	remaining := 2 + len(topic) + 2 + 1 + len(payload) // topic, packet id, properties length, payload
	n := 1                                             // the fixed header's first byte
	for r := remaining; ; r >>= 7 {                    // the remaining length, 7 bits a byte
		n++
		if r < 128 {
			break
		}
	}
	return n + remaining
}

// checkTopic accepts exact topic names: no wildcards, no NUL, not empty.
func checkTopic(t string) error {
	switch {
	case t == "":
		return errors.New("empty topic")
	case len(t) > 65535:
		return errors.New("topic too long")
	case strings.ContainsAny(t, "+#\x00"):
		return fmt.Errorf("topic %q is not an exact topic name", t)
	}
	return nil
}
