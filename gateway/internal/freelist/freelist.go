// Package freelist is a bounded pool for the gateway's connection path.
package freelist

// List is a bounded pool for the connection path's buffers. sync.Pool
// keeps everything put back until two garbage collections have passed, and
// a quiet gateway collects rarely: after a burst of 5,000 simultaneous
// connections it held one 4 KiB hello buffer per connection, 12 MB, while
// the connections sat idle. A List keeps at most its capacity and leaves
// the rest to the collector; it hands out and takes back in a channel
// operation each.
type List[T any] struct {
	free  chan T
	fresh func() T
}

// New returns a List that keeps at most size values and makes new ones
// with fresh.
func New[T any](size int, fresh func() T) *List[T] {
	return &List[T]{free: make(chan T, size), fresh: fresh}
}

// Get returns a kept value, or a fresh one when none is kept.
func (f *List[T]) Get() T {
	select {
	case v := <-f.free:
		return v
	default:
		return f.fresh()
	}
}

// Put keeps v if there is room, and drops it otherwise.
func (f *List[T]) Put(v T) {
	select {
	case f.free <- v:
	default:
	}
}
