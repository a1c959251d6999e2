package schema

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var idState struct {
	sync.Mutex
	lastMS uint64
	rand16 uint64
	seq    uint64
}

// NewID returns a new job id: 26 characters of Crockford base32 whose first
// ten encode the millisecond time, so ids sort by submit time, and whose
// last sixteen are random (monotonic within a millisecond in one process).
func NewID() string {
	return newIDAt(time.Now())
}

func newIDAt(t time.Time) string {
	var rnd [10]byte
	_, _ = rand.Read(rnd[:])
	ms := uint64(t.UnixMilli())
	idState.Lock()
	if ms <= idState.lastMS {
		ms = idState.lastMS
		idState.seq++
	} else {
		idState.lastMS = ms
		idState.rand16 = uint64(binary.BigEndian.Uint16(rnd[:2]))
		idState.seq = binary.BigEndian.Uint64(rnd[2:]) >> 16 // room to count up
	}
	lo := idState.seq
	// 128 bits: 48 time | 16 random | 64 counting up from a random start.
	hi := ms<<16 | idState.rand16
	idState.Unlock()
	var out [26]byte
	// Encode 130 bits (two zero bits on top) as 26 base32 digits.
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | (hi&31)<<59
		hi >>= 5
	}
	return string(out[:])
}
