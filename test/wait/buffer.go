package wait

import (
	"bytes"
	"sync"
)

// Buffer is an output that something running writes while a test polls it
// (wait.For on what it says so far): a bytes.Buffer safe for one writer
// and any number of readers at once.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
