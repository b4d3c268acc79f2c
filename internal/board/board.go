// Package board is the switchboard itself: it holds the live devices by name,
// lets a name change hands only to the same key, keeps each device's virtual
// ports, and opens a channel to NAME:PORT for a circuit. It knows nothing of
// SSH wire formats, files, MQTT or the command line.
package board

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/switchboard-dev/switchboard/internal/circuit"
)

// Link is a device's connection as the board needs it. The SSH front end
// implements it; tests can implement it with pipes.
type Link interface {
	// OpenForward opens a channel to the device for virtual port f, telling
	// it who the circuit is from. It must honour ctx.
	OpenForward(ctx context.Context, f Forward, origin netip.AddrPort) (circuit.Stream, error)
	// Close hangs up the device's connection.
	Close() error
}

// Forward is one virtual port of a device, with the bind address exactly as
// the device asked for it: its SSH client matches incoming channels on it.
type Forward struct {
	Port     uint32
	BindAddr string
}

// Identity is who holds a device's names: the key fingerprint decides
// takeovers; the rest is for display.
type Identity struct {
	Fingerprint string
	Remote      string
}

// Board is the registry of live devices. The zero value is not usable; call
// New. Lock order: Board.mu before Device.mu.
type Board struct {
	now         func() time.Time
	waker       Waker         // nil: devices are never woken
	wakeTimeout time.Duration // set with waker, before use
	// wakeObserver, if set, is told each wake-up's outcome.
	wakeObserver func(outcome string, took time.Duration)

	mu       sync.Mutex
	byName   map[string]*Device  // every name and alias of every live device
	lastSeen map[string]Sighting // every name a departed device held
	changes  uint64              // counts updates to lastSeen, so a saver knows when to write
	wakes    map[string]*wakeCall
	changed  map[string]chan struct{} // closed when a device with that name adds a port
}

// Sighting is when a name was last held by a live device, and that device's
// primary name (the same, unless the name was an alias).
type Sighting struct {
	At     time.Time `json:"at"`
	Device string    `json:"device"`
}

// New returns an empty board. now is the clock (time.Now in production).
func New(now func() time.Time) *Board {
	if now == nil {
		now = time.Now
	}
	return &Board{now: now, byName: map[string]*Device{}, lastSeen: map[string]Sighting{},
		wakes: map[string]*wakeCall{}, changed: map[string]chan struct{}{}}
}

// Device is one live device connection registered under one or more names.
type Device struct {
	board    *Board
	names    []string // names[0] is the primary name
	id       Identity
	link     Link
	since    time.Time
	detached bool // guarded by board.mu

	mu       sync.Mutex
	forwards map[uint32]Forward
}

// Name returns the device's primary name.
func (d *Device) Name() string { return d.names[0] }

// HeldError says a name is held by a live device with another key.
type HeldError struct {
	Name   string
	Holder Identity
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("board: name %q is held by another key (%s)", e.Name, e.Holder.Fingerprint)
}

// Attach registers a device under names (canonical, primary first). A name
// held by a live device with the same key is taken over: that device is
// detached and its link closed, since a reconnecting device's old link is
// usually half-dead. A name held by another key fails with *HeldError and
// changes nothing. Attach returns the new device and the devices it displaced.
func (b *Board) Attach(names []string, id Identity, link Link) (*Device, []*Device, error) {
	if len(names) == 0 {
		return nil, nil, errors.New("board: a device needs a name")
	}
	dev := &Device{
		board:    b,
		names:    uniq(names),
		id:       id,
		link:     link,
		forwards: map[uint32]Forward{},
	}
	b.mu.Lock()
	var displaced []*Device
	for _, n := range dev.names {
		old, ok := b.byName[n]
		if !ok {
			continue
		}
		if old.id.Fingerprint != id.Fingerprint {
			b.mu.Unlock()
			return nil, nil, &HeldError{Name: n, Holder: old.id}
		}
		if !slices.Contains(displaced, old) {
			displaced = append(displaced, old)
		}
	}
	now := b.now()
	for _, old := range displaced {
		b.detachLocked(old, now)
	}
	dev.since = now
	for _, n := range dev.names {
		b.byName[n] = dev
		delete(b.wakes, n) // it came: the next absence deserves a new wake
	}
	b.mu.Unlock()
	for _, old := range displaced {
		old.link.Close()
	}
	return dev, displaced, nil
}

// Detach removes the device from the board (if it is still there) and records
// when it was last seen. It does not close the link: the caller owns it.
func (b *Board) Detach(d *Device) {
	b.mu.Lock()
	b.detachLocked(d, b.now())
	b.mu.Unlock()
}

func (b *Board) detachLocked(d *Device, now time.Time) {
	if d.detached {
		return
	}
	d.detached = true
	for _, n := range d.names {
		if b.byName[n] == d {
			delete(b.byName, n)
		}
		b.lastSeen[n] = Sighting{At: now, Device: d.names[0]}
	}
	b.changes++
}

// Seen returns when each name was last seen leaving, and a counter that
// changes whenever that map does. A server persists it to report "last
// seen" across restarts.
func (b *Board) Seen() (map[string]Sighting, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.lastSeen), b.changes
}

// Remember merges last-seen times from an earlier run; a newer time the
// board already holds wins.
func (b *Board) Remember(seen map[string]Sighting) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for n, s := range seen {
		if s.At.After(b.lastSeen[n].At) {
			b.lastSeen[n] = s
		}
	}
}

// firstDynamicPort is where port-0 allocations start: the IANA dynamic range,
// unlikely to collide with a port an operator would name on purpose.
const firstDynamicPort = 49152

// ErrPortInUse means the device already has a forward on that virtual port.
var ErrPortInUse = errors.New("board: virtual port already forwarded by this device")

// ErrNoFreePort means every dynamic port of the device is taken.
var ErrNoFreePort = errors.New("board: no free virtual port")

// MaxForwards bounds one device's virtual ports, and so its table, its
// listings and the sentences that list them.
const MaxForwards = 64

// ErrTooManyForwards means the device already has MaxForwards ports.
var ErrTooManyForwards = fmt.Errorf("board: a device may forward at most %d ports", MaxForwards)

// Listen adds a virtual port. Port 0 picks a free one. It returns the port
// operators reach.
func (d *Device) Listen(bindAddr string, port uint32) (uint32, error) {
	port, err := d.listen(bindAddr, port)
	if err == nil {
		// After d.mu is released: the board's lock is taken before a
		// device's elsewhere.
		d.board.mu.Lock()
		d.board.notifyLocked(d)
		d.board.mu.Unlock()
	}
	return port, err
}

func (d *Device) listen(bindAddr string, port uint32) (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.forwards) >= MaxForwards {
		return 0, ErrTooManyForwards
	}
	if port == 0 {
		for p := uint32(firstDynamicPort); p <= 65535; p++ {
			if _, used := d.forwards[p]; !used {
				port = p
				break
			}
		}
		if port == 0 {
			return 0, ErrNoFreePort
		}
	} else if _, used := d.forwards[port]; used {
		return 0, ErrPortInUse
	}
	d.forwards[port] = Forward{Port: port, BindAddr: bindAddr}
	return port, nil
}

// has reports whether the device forwards port.
func (d *Device) has(port uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.forwards[port]
	return ok
}

// Cancel removes a virtual port. It reports whether the port was forwarded.
func (d *Device) Cancel(port uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.forwards[port]
	delete(d.forwards, port)
	return ok
}

// Ports returns the device's virtual ports in ascending order.
func (d *Device) Ports() []uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	ports := make([]uint32, 0, len(d.forwards))
	for p := range d.forwards {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports
}

// Info is a snapshot of a device for listings.
type Info struct {
	Name      string
	Aliases   []string
	Ports     []uint32
	Connected bool
	// Since is when it connected, or when it was last seen if offline.
	Since time.Time
	// Remote is the address it connected from (connected devices only).
	Remote      string
	Fingerprint string
}

func (d *Device) info() Info {
	return Info{
		Name:        d.names[0],
		Aliases:     slices.Clone(d.names[1:]),
		Ports:       d.Ports(),
		Connected:   true,
		Since:       d.since,
		Remote:      d.id.Remote,
		Fingerprint: d.id.Fingerprint,
	}
}

// Lookup returns the state of name: the live device holding it, or when it
// was last seen. ok is false if the board has never seen the name.
func (b *Board) Lookup(name string) (info Info, ok bool) {
	b.mu.Lock()
	dev := b.byName[name]
	seen, wasSeen := b.lastSeen[name]
	b.mu.Unlock()
	if dev != nil {
		return dev.info(), true
	}
	if wasSeen {
		return Info{Name: seen.Device, Since: seen.At}, true
	}
	return Info{Name: name}, false
}

// Devices returns every live device and every name seen since the server
// started but now offline, sorted by name. Aliases of a live device are not
// listed on their own.
func (b *Board) Devices() []Info {
	b.mu.Lock()
	live := map[*Device]bool{}
	for _, d := range b.byName {
		live[d] = true
	}
	var out []Info
	aliases := map[string][]string{}
	for n, s := range b.lastSeen {
		if _, on := b.byName[n]; !on && n != s.Device {
			aliases[s.Device] = append(aliases[s.Device], n)
		}
	}
	for n, s := range b.lastSeen {
		if _, on := b.byName[n]; !on && n == s.Device {
			slices.Sort(aliases[n])
			out = append(out, Info{Name: n, Since: s.At, Aliases: aliases[n]})
		}
	}
	b.mu.Unlock()
	for d := range live {
		out = append(out, d.info())
	}
	slices.SortFunc(out, func(x, y Info) int { return cmp.Compare(x.Name, y.Name) })
	return out
}

// OfflineError says no live device holds the name. LastSeen is zero if the
// board has never seen it.
type OfflineError struct {
	Name     string
	LastSeen time.Time
}

func (e *OfflineError) Error() string {
	return fmt.Sprintf("board: device %q is not connected", e.Name)
}

// NoPortError says the device is live but does not forward the port.
type NoPortError struct {
	Name    string
	Port    uint32
	Exposed []uint32
}

func (e *NoPortError) Error() string {
	return fmt.Sprintf("board: device %q does not forward port %d", e.Name, e.Port)
}

// Open opens a channel to name:port on the live device holding name. Errors
// are *OfflineError, *NoPortError, or the link's error wrapped with the name.
func (b *Board) Open(ctx context.Context, name string, port uint32, origin netip.AddrPort) (circuit.Stream, *Device, error) {
	b.mu.Lock()
	dev := b.byName[name]
	seen := b.lastSeen[name].At
	b.mu.Unlock()
	if dev == nil && b.waker != nil {
		var err error
		dev, err = b.awaitWoken(ctx, name, port)
		switch {
		case errors.Is(err, ErrNoWake):
			// Not on demand: it is simply offline.
		case err != nil:
			return nil, dev, err
		}
	}
	if dev == nil {
		return nil, nil, &OfflineError{Name: name, LastSeen: seen}
	}
	dev.mu.Lock()
	fwd, ok := dev.forwards[port]
	dev.mu.Unlock()
	if !ok && b.waker != nil && b.now().Sub(dev.since) < portGrace {
		// Just woken and still registering its forwards.
		wctx, cancel := context.WithTimeout(ctx, portGrace)
		dev, err := b.awaitPort(wctx, name, port)
		cancel()
		if err != nil {
			return nil, dev, err
		}
		dev.mu.Lock()
		fwd, ok = dev.forwards[port]
		dev.mu.Unlock()
	}
	if !ok {
		return nil, dev, &NoPortError{Name: name, Port: port, Exposed: dev.Ports()}
	}
	s, err := dev.link.OpenForward(ctx, fwd, origin)
	if err != nil {
		return nil, dev, fmt.Errorf("board: open %s:%d: %w", name, port, err)
	}
	return s, dev, nil
}

// Names returns all of the device's names, primary first.
func (d *Device) Names() []string { return slices.Clone(d.names) }

// uniq drops repeated names, keeping the first of each so the primary stays
// first.
func uniq(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
