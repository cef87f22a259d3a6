package gateway

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// idleGrace is how long a direction waits for data in Go's poller, keeping
// its goroutine, before it parks in the shared idle poller without one.
// Short and busy connections never park.
const idleGrace = time.Second

// While more than crowdedAwake directions of the process are awake at once
// (a burst of connections that then idle: 5,000 clients opening at the
// same instant kept 10,000 goroutines and 48 MB of stacks for that second,
// and Go never frees a goroutine's descriptor), directions park after
// crowdedGrace instead.
const (
	crowdedAwake = 1024
	crowdedGrace = 20 * time.Millisecond
)

// awake counts the directions of the process that hold a goroutine.
var awake atomic.Int64

// grace is how long an awake direction waits before it parks, now.
func grace() time.Duration {
	if awake.Load() > crowdedAwake {
		return crowdedGrace
	}
	return idleGrace
}

// parker is a process-wide epoll set for idle directions. A parked direction
// has no goroutine; when its socket becomes readable (data, EOF or an error)
// the poller starts one. Whoever takes a direction out of the registry, the
// poller or a closer, owns its resumption, so exactly one does it.
type parker struct {
	once   sync.Once
	ok     atomic.Bool // set once epfd and parked are ready
	epfd   int
	mu     sync.Mutex
	next   uint64
	parked map[uint64]*direction
}

var idlePark parker

// ready starts the poller the first time and reports whether it runs.
func (pk *parker) ready() bool {
	pk.once.Do(func() {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return // directions then wait in Go's poller as before
		}
		pk.epfd, pk.parked = fd, map[uint64]*direction{}
		pk.ok.Store(true)
		go pk.loop()
	})
	return pk.ok.Load()
}

// add registers d under a new id and returns it.
func (pk *parker) add(d *direction) uint64 {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	pk.next++
	d.parkID = pk.next
	pk.parked[pk.next] = d
	return pk.next
}

// remove takes d out of the registry and reports whether it was there: the
// caller then owns d's resumption.
func (pk *parker) remove(d *direction) bool {
	if !pk.ok.Load() {
		return false // never started: nothing is parked
	}
	pk.mu.Lock()
	defer pk.mu.Unlock()
	if d.parkID != 0 && pk.parked[d.parkID] == d {
		delete(pk.parked, d.parkID)
		return true
	}
	return false
}

func (pk *parker) take(id uint64) *direction {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	d := pk.parked[id]
	delete(pk.parked, id)
	return d
}

// loop waits on the epoll set for ever, in a thread of its own, and resumes
// each direction that becomes readable in a new goroutine.
func (pk *parker) loop() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(pk.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for i := range n {
			id := uint64(uint32(events[i].Fd)) | uint64(uint32(events[i].Pad))<<32
			if d := pk.take(id); d != nil {
				go d.resume()
			}
		}
	}
}
