package uring

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bufEntrySize is the size of struct io_uring_buf.
const bufEntrySize = 16

// BufRing is a ring of provided buffers registered with a Ring under a
// group ID (IORING_REGISTER_PBUF_RING, Linux 5.19): a recv prepared with
// PrepRecv takes the next buffer in it when data arrives, and its
// completion names the buffer. The caller gives each buffer back with Put
// once it is done with its bytes, and Publish makes what it put back
// visible to the kernel.
//
// The buffers live outside Go's heap, in memory mapped for the ring:
// pages no recv has touched take no memory.
type BufRing struct {
	ring    *Ring
	group   uint16
	entries uint16
	size    int
	mem     []byte // the ring of struct io_uring_buf
	data    []byte // the buffers, size bytes each
	tail    uint16 // the entries put so far, published or not
	little  bool
}

// NewBufRing registers a ring of entries buffers of size bytes each under
// group. entries is a power of two up to 32,768. Every buffer starts in
// the ring.
func (r *Ring) NewBufRing(group uint16, entries, size int) (*BufRing, error) {
	if entries < 1 || entries > 32768 || entries&(entries-1) != 0 {
		return nil, fmt.Errorf("uring: %d provided buffers: a power of two up to 32768 is needed", entries)
	}
	if size < 1 || size > 1<<30 {
		return nil, fmt.Errorf("uring: provided buffers of %d bytes", size)
	}
	b := &BufRing{ring: r, group: group, entries: uint16(entries), size: size}
	var one uint32 = 1
	b.little = *(*byte)(unsafe.Pointer(&one)) == 1
	var err error
	anon := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	if b.mem, err = unix.Mmap(-1, 0, entries*bufEntrySize, unix.PROT_READ|unix.PROT_WRITE, anon|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("uring: mmap of a buffer ring: %w", os.NewSyscallError("mmap", err))
	}
	if b.data, err = unix.Mmap(-1, 0, entries*size, unix.PROT_READ|unix.PROT_WRITE, anon); err != nil {
		unix.Munmap(b.mem)
		return nil, fmt.Errorf("uring: mmap of %d buffers of %d bytes: %w", entries, size, os.NewSyscallError("mmap", err))
	}
	reg := bufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&b.mem[0]))), ringEntries: uint32(entries), bgid: group}
	if err := r.register(registerPbufRing, unsafe.Pointer(&reg), 1); err != nil {
		unix.Munmap(b.mem)
		unix.Munmap(b.data)
		e := fmt.Errorf("uring: registering buffer group %d: %w", group, os.NewSyscallError("io_uring_register(IORING_REGISTER_PBUF_RING)", err))
		if err == unix.EINVAL || err == unix.EOPNOTSUPP {
			e = fmt.Errorf("%w: the kernel has no provided buffer rings (Linux 5.19): %w", ErrUnavailable, e)
		}
		return nil, e
	}
	for id := range entries {
		b.Put(uint16(id))
	}
	b.Publish()
	return b, nil
}

// bufReg is struct io_uring_buf_reg.
type bufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	flags       uint16
	resv        [3]uint64
}

// Group returns the group ID recvs name to take from b.
func (b *BufRing) Group() uint16 { return b.group }

// Size returns the size of each buffer.
func (b *BufRing) Size() int { return b.size }

// Entries returns the number of buffers.
func (b *BufRing) Entries() int { return int(b.entries) }

// Bytes returns the first n bytes of buffer id, as a completion that used
// it reports them (id from CQE.BufferID, n from CQE.Res). They stay valid
// until the buffer is put back.
func (b *BufRing) Bytes(id uint16, n int) []byte {
	off := int(id) * b.size
	return b.data[off : off+n : off+b.size]
}

// Put gives buffer id back to the ring, to be seen by the kernel at the
// next Publish.
func (b *BufRing) Put(id uint16) {
	e := unsafe.Pointer(&b.mem[int(b.tail&(b.entries-1))*bufEntrySize])
	*(*uint64)(e) = uint64(uintptr(unsafe.Pointer(&b.data[int(id)*b.size])))
	*(*uint32)(unsafe.Add(e, 8)) = uint32(b.size)
	if b.tail&(b.entries-1) == 0 {
		// The first entry's bid shares a word with the ring's tail, which
		// Publish stores atomically: write it the same way.
		w := (*uint32)(unsafe.Add(e, 12))
		old := atomic.LoadUint32(w)
		if b.little {
			atomic.StoreUint32(w, old&0xffff0000|uint32(id))
		} else {
			atomic.StoreUint32(w, old&0xffff|uint32(id)<<16)
		}
	} else {
		*(*uint16)(unsafe.Add(e, 12)) = id
	}
	b.tail++
}

// Publish makes the buffers put back visible to the kernel.
func (b *BufRing) Publish() {
	// The tail is the u16 at offset 14 of the ring, the upper half of the
	// word at offset 12 on a little-endian machine. An atomic store of the
	// word orders it after the entries' stores.
	w := (*uint32)(unsafe.Pointer(&b.mem[12]))
	old := atomic.LoadUint32(w)
	if b.little {
		atomic.StoreUint32(w, old&0xffff|uint32(b.tail)<<16)
	} else {
		atomic.StoreUint32(w, old&0xffff0000|uint32(b.tail))
	}
}

// Close unregisters b from its ring and unmaps its memory; no recv may
// use it any more.
func (b *BufRing) Close() error {
	if b.mem == nil {
		return nil
	}
	reg := bufReg{bgid: b.group}
	var err error
	if b.ring.fd >= 0 {
		if e := b.ring.register(unregisterPbufRing, unsafe.Pointer(&reg), 1); e != nil {
			err = os.NewSyscallError("io_uring_register(IORING_UNREGISTER_PBUF_RING)", e)
		}
	}
	unix.Munmap(b.mem)
	unix.Munmap(b.data)
	b.mem, b.data = nil, nil
	return err
}
