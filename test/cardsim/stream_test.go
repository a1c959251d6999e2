package cardsim

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
)

// streamSyms are the stream, async and pinned-memory calls of the simulator.
type streamSyms struct {
	CreateStream   func(s *uintptr) int32
	DestroyStream  func(s uintptr) int32
	Sync           func(s uintptr) int32
	SyncTimeout    func(s uintptr, ms int32) int32
	MemcpyAsync    func(dst, src uintptr, n uintptr, kind int32, s uintptr) int32
	ExecuteAsync   func(id, ctx uint64, group uint32, io uintptr, s uintptr) int32
	MallocHost     func(p *uintptr, n uintptr) int32
	FreeHost       func(p uintptr) int32
	MemcpyHostDev  func(dst, src uintptr, n uintptr, kind int32) int32
	SynchronizeDev func() int32
}

var streamOnce struct {
	sync.Once
	s *streamSyms
}

func streams(t *testing.T) *streamSyms {
	t.Helper()
	path := Library(t)
	streamOnce.Do(func() {
		h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
		if err != nil {
			t.Fatal(err)
		}
		s := &streamSyms{}
		for name, fn := range map[string]any{
			"axclrtCreateStream": &s.CreateStream, "axclrtDestroyStream": &s.DestroyStream,
			"axclrtSynchronizeStream": &s.Sync, "axclrtSynchronizeStreamWithTimeout": &s.SyncTimeout,
			"axclrtMemcpyAsync": &s.MemcpyAsync, "axclrtEngineExecuteAsync": &s.ExecuteAsync,
			"axclrtMallocHost": &s.MallocHost, "axclrtFreeHost": &s.FreeHost, "axclrtMemcpy": &s.MemcpyHostDev,
			"axclrtSynchronizeDevice": &s.SynchronizeDev,
		} {
			purego.RegisterLibFunc(fn, h, name)
		}
		streamOnce.s = s
	})
	return streamOnce.s
}

const errStreamSyncTimeout = 0x80300383

// pinnedBytes allocates n bytes with axclrtMallocHost and returns its address and a view.
func pinnedBytes(c *card, s *streamSyms, n int) (uintptr, []byte) {
	c.t.Helper()
	var p uintptr
	c.ok("malloc host", s.MallocHost(&p, uintptr(n)))
	c.t.Cleanup(func() { s.FreeHost(p) })
	return p, unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&p))), n)
}

// TestStreamRunsQueuedWorkInOrder: copies and executes queued on a stream do nothing until the
// stream is synchronised, then run in order; the counters tell synchronous round trips from
// queued work and pinned from unpinned transfers.
func TestStreamRunsQueuedWorkInOrder(t *testing.T) {
	c := openCard(t, "")
	s := streams(t)
	ctl := Controls(t)
	var st uintptr
	c.ok("create stream", s.CreateStream(&st))
	defer s.DestroyStream(st)
	a, b := c.malloc(4096), c.malloc(4096)
	src, srcB := pinnedBytes(c, s, 4096)
	dst, dstB := pinnedBytes(c, s, 4096)
	for i := range srcB {
		srcB[i] = byte(i * 7)
	}
	ctl.ResetStats()
	c.ok("H2D async", s.MemcpyAsync(a, src, 4096, 1, st))
	c.ok("D2D async", s.MemcpyAsync(b, a, 4096, 3, st))
	c.ok("D2H async", s.MemcpyAsync(dst, b, 4096, 2, st))
	if bytes.Equal(dstB, srcB) {
		t.Fatal("queued copies ran before the stream was synchronised")
	}
	c.ok("sync", s.SyncTimeout(st, 1000))
	if !bytes.Equal(dstB, srcB) {
		t.Fatal("the copies did not run in order at the sync")
	}
	if got := ctl.Stats(); got != (Stats{SyncCalls: 1, StreamSyncs: 1, AsyncCopies: 3, Pinned: 2}) {
		t.Fatalf("stats %+v", got)
	}
	ctl.ResetStats()
	c.get(a, 16) // a Go slice: unpinned, synchronous
	if got := ctl.Stats(); got != (Stats{SyncCalls: 1, SyncCopies: 1, Unpinned: 1}) {
		t.Fatalf("stats after a synchronous unpinned read %+v", got)
	}

	// An execute queued on the stream gives what a synchronous one gives.
	dir := t.TempDir()
	spec := smallLLM()
	if err := WriteLLMPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	post := c.load(filepath.Join(dir, spec.ModelDir, spec.PostFile()), spec.PostSpec())
	c.put(post.in[0][0], u16bytes(randBF16(rand.New(rand.NewPCG(5, 6)), spec.Hidden)))
	c.ok("execute", c.Execute(post.id, post.ctx, 0, post.io[0]))
	want := c.get(post.out[0][0], spec.Vocab*2)
	c.ok("clear output", c.Memset(post.out[0][0], 0, uintptr(spec.Vocab*2)))
	c.ok("execute async", s.ExecuteAsync(post.id, post.ctx, 0, post.io[0], st))
	if bytes.Equal(c.get(post.out[0][0], spec.Vocab*2), want) {
		t.Fatal("a queued execute ran before the sync")
	}
	c.ok("sync", s.Sync(st))
	if !bytes.Equal(c.get(post.out[0][0], spec.Vocab*2), want) {
		t.Fatal("the queued execute's output differs from the synchronous one's")
	}

	// A hung execute on the stream: the timed sync gives up with STREAM_SYNC_TIMEOUT.
	if c.setFaults("hang_execute=1") != 0 {
		t.Fatal("set faults")
	}
	c.ok("execute async", s.ExecuteAsync(post.id, post.ctx, 0, post.io[0], st))
	c.want("sync of a hung execute", s.SyncTimeout(st, 50), errStreamSyncTimeout)
	c.setFaults("")
	c.want("a freed stream", s.Sync(st+1), 0x80300303)
}

// TestOffsetBindAlignment: a buffer bound at an offset into its allocation must sit at a
// multiple of bind_align (2048 by default, the field's known-good K/V row offsets); the start of
// an allocation always binds.
func TestOffsetBindAlignment(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	spec := smallLLM()
	if err := WriteLLMPackage(dir, spec); err != nil {
		t.Fatal(err)
	}
	l := c.loadLayer(dir, spec, 0)
	row := uint64(spec.KVDim * 2)
	c.want("K_cache_out at a 64-byte offset", c.SetOutput(l.io[0], 0, l.k+64, row), errEngineIllegal)
	c.ok("K_cache_out at a 2048-byte offset", c.SetOutput(l.io[0], 0, l.k+2048, row))
	c.ok("K_cache_out at the start", c.SetOutput(l.io[0], 0, l.k, row))
	if c.config("bind_align=64") != 0 {
		t.Fatal("config")
	}
	c.ok("K_cache_out at a 64-byte offset with bind_align=64", c.SetOutput(l.io[0], 0, l.k+64, row))
	c.want("K_cache_out at a 32-byte offset with bind_align=64", c.SetOutput(l.io[0], 0, l.k+32, row), errEngineIllegal)
}
