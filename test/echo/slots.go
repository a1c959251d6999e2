package echo

import (
	"context"
	"sync"

	"github.com/kiln-project/kiln/schema"
	"github.com/kiln-project/kiln/worker"
)

// Slotted is a handler that takes up to n jobs at once, as a chat model
// with n K/V slots does (worker.Capacity), and counts them: how many run
// now and the most that ever ran at once.
type Slotted[T any] struct {
	h worker.Handler[T]
	n int

	mu        sync.Mutex
	used, max int
}

// Slots serves h with n jobs at once.
func Slots[T any](h worker.Handler[T], n int) *Slotted[T] { return &Slotted[T]{h: h, n: n} }

// Capacity implements worker.Capacity.
func (s *Slotted[T]) Capacity() (used, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.n
}

// Max is the most jobs that ran at once.
func (s *Slotted[T]) Max() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

// Handle implements worker.Handler.
func (s *Slotted[T]) Handle(ctx context.Context, job *worker.Job[T]) (*schema.Result, error) {
	s.mu.Lock()
	s.used++
	s.max = max(s.max, s.used)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.used--
		s.mu.Unlock()
	}()
	return s.h.Handle(ctx, job)
}
