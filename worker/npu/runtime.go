package npu

import (
	"sync"

	"github.com/kiln-project/kiln/worker/axcl"
)

// The runtime is loaded once per library path and axclInit/axclFinalize
// are reference counted, so that several cards (or CardInfo next to an open
// card) can share one process: axclInit is once per process and
// axclFinalize releases every device.
var shared struct {
	mu       sync.Mutex
	runtimes map[string]*axcl.Runtime
	inits    map[*axcl.Runtime]int
	devices  map[*Device]struct{} // open devices, for the status callback and CloseAll (wedge.go)
}

func loadRuntime(path string) (*axcl.Runtime, error) {
	if path == "" {
		path = axcl.LibraryPath()
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if rt, ok := shared.runtimes[path]; ok {
		return rt, nil
	}
	rt, err := axcl.Load(path)
	if err != nil {
		return nil, err
	}
	if shared.runtimes == nil {
		shared.runtimes = make(map[string]*axcl.Runtime)
		shared.inits = make(map[*axcl.Runtime]int)
	}
	shared.runtimes[path] = rt
	return rt, nil
}

func acquireInit(rt *axcl.Runtime, config string) error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.inits[rt] == 0 {
		if err := rt.Init(config); err != nil {
			return err
		}
	}
	shared.inits[rt]++
	return nil
}

func releaseInit(rt *axcl.Runtime) error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	shared.inits[rt]--
	if shared.inits[rt] > 0 {
		return nil
	}
	delete(shared.inits, rt)
	return rt.Finalize()
}
