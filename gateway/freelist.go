package gateway

// freeList is a bounded pool for the connection path's buffers. sync.Pool
// keeps everything put back until two garbage collections have passed, and
// a quiet gateway collects rarely: after a burst of 5,000 simultaneous
// connections it held one 4 KiB hello buffer per connection, 12 MB, while
// the connections sat idle. A freeList keeps at most its capacity and
// leaves the rest to the collector; it hands out and takes back in a
// channel operation each.
type freeList[T any] struct {
	free  chan T
	fresh func() T
}

func newFreeList[T any](size int, fresh func() T) *freeList[T] {
	return &freeList[T]{free: make(chan T, size), fresh: fresh}
}

// get returns a kept value, or a fresh one when none is kept.
func (f *freeList[T]) get() T {
	select {
	case v := <-f.free:
		return v
	default:
		return f.fresh()
	}
}

// put keeps v if there is room, and drops it otherwise.
func (f *freeList[T]) put(v T) {
	select {
	case f.free <- v:
	default:
	}
}
