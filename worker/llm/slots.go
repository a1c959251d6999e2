package llm

import (
	"errors"
	"fmt"
)

// A Model keeps Options.Slots K/V caches on the card ("slots"): per layer a
// K and a V buffer of Context rows per slot. The slots share everything
// else (weights, the hidden-state, indices and mask buffers, the post
// model, the vision encoder). Generate may be called from several
// goroutines at once: each call owns one slot from its first prefill chunk
// to its last token, and the model's scheduler interleaves the running
// calls' prefill chunks and decode steps on the device thread round-robin
// (docs/llm.md "Slots"). Nothing of a request (mask, positions, sampler,
// prefix rows) crosses slots.

// MaxSlots is the most slots Options.Slots may ask for.
const MaxSlots = 16

// ErrSlotBudget is matched by a *SlotBudgetError.
var ErrSlotBudget = errors.New("llm: K/V slots do not fit the CMM budget")

// ErrSlots is matched by an Options.Slots outside 0..MaxSlots.
var ErrSlots = errors.New("llm: bad slot count")

// SlotBudgetError refuses, at Load, more slots than the CMM budget holds
// beside the model (and whatever else is resident on the card).
type SlotBudgetError struct {
	Model   string
	Slots   int    // slots asked for
	PerSlot uint64 // K/V bytes of one slot (SlotBytes)
	Loaded  uint64 // CMM the model holds with its first slot
	Free    uint64 // CMM left in the budget after the model with one slot
	Budget  uint64 // the card's CMM budget
	Fit     int    // slots that fit (1 + Free/PerSlot)
}

func (e *SlotBudgetError) Error() string {
	return fmt.Sprintf("llm: %s: %d K/V slots of %s each do not fit: the model holds %s with one slot and %s of the %s CMM budget is left, room for %d slots",
		e.Model, e.Slots, mib(e.PerSlot), mib(e.Loaded), mib(e.Free), mib(e.Budget), e.Fit)
}

// Is matches ErrSlotBudget.
func (e *SlotBudgetError) Is(target error) bool { return target == ErrSlotBudget }

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// SlotBytes is the card memory of one slot: Layers × (K and V) × Context
// rows × KVDim × bf16.
func SlotBytes(s Shape) uint64 {
	return uint64(s.Layers) * 2 * uint64(s.Context) * uint64(s.KVDim) * 2
}

// slotCount is the number of slots Options.Slots asks for (0: one).
func (o Options) slotCount() (int, error) {
	switch {
	case o.Slots < 0 || o.Slots > MaxSlots:
		return 0, fmt.Errorf("%w: slots is %d; it must be 0 (one) to %d", ErrSlots, o.Slots, MaxSlots)
	case o.Slots == 0:
		return 1, nil
	}
	return o.Slots, nil
}

// Slots reports how many slots running requests hold and how many the
// model has.
func (m *Model) Slots() (used, total int) {
	return len(m.sem), cap(m.sem)
}

// SlotBytes is the card memory of one of the model's slots: its K and V
// caches and decode mask.
func (m *Model) SlotBytes() uint64 {
	return uint64(len(m.layers))*2*m.cacheBytes + uint64(m.shape.Context+1)*2
}
