package axcl

import "fmt"

// Functions of axcl_rt_engine.h: engine lifecycle, models, execution.
type engineFuncs struct {
	// axclError axclrtEngineInit(axclrtEngineVNpuKind npuKind);
	engineInit func(kind VNPUKind) int32
	// axclError axclrtEngineGetVNpuKind(axclrtEngineVNpuKind *npuKind);
	getVNPUKind func(kind *VNPUKind) int32
	// axclError axclrtEngineFinalize();
	engineFinalize func() int32
	// axclError axclrtEngineLoadFromFile(const char *modelPath, uint64_t *modelId);
	loadFromFile func(path string, model *ModelID) int32
	// axclError axclrtEngineLoadFromMem(const void *model, uint64_t modelSize, uint64_t *modelId);
	loadFromMem func(model DevicePtr, size uint64, id *ModelID) int32
	// axclError axclrtEngineUnload(uint64_t modelId);
	unload func(model ModelID) int32
	// const char *axclrtEngineGetModelCompilerVersion(uint64_t modelId);
	compilerVersion func(model ModelID) string
	// axclError axclrtEngineGetUsageFromModelId(uint64_t modelId, int64_t *sysSize, int64_t *cmmSize);
	getUsageByID func(model ModelID, sys, cmm *int64) int32
	// axclError axclrtEngineGetUsage(const char *path, int64_t *sysSize, int64_t *cmmSize);
	// Optional: probed, see ModelUsage.
	getUsage func(path string, sys, cmm *int64) int32
	// axclError axclrtEngineCreateContext(uint64_t modelId, uint64_t *contextId);
	createEngineContext func(model ModelID, ctx *EngineContext) int32
	// axclError axclrtEngineExecute(uint64_t modelId, uint64_t contextId, uint32_t group, axclrtEngineIO io);
	executeSym uintptr
}

func (f *engineFuncs) load(l *library) error {
	b := binder{lib: l}
	b.bind(&f.engineInit, "axclrtEngineInit")
	b.bind(&f.getVNPUKind, "axclrtEngineGetVNpuKind")
	b.bind(&f.engineFinalize, "axclrtEngineFinalize")
	b.bind(&f.loadFromFile, "axclrtEngineLoadFromFile")
	b.bind(&f.loadFromMem, "axclrtEngineLoadFromMem")
	b.bind(&f.unload, "axclrtEngineUnload")
	b.bind(&f.compilerVersion, "axclrtEngineGetModelCompilerVersion")
	b.bind(&f.getUsageByID, "axclrtEngineGetUsageFromModelId")
	b.bind(&f.createEngineContext, "axclrtEngineCreateContext")
	// Executed through call4 (no allocation); registered for the signature check.
	var execute func(model ModelID, ctx EngineContext, group uint32, io IO) int32
	f.executeSym = b.bind(&execute, "axclrtEngineExecute")
	if b.err != nil {
		return b.err
	}
	l.optional(&f.getUsage, "axclrtEngineGetUsage")
	return nil
}

// EngineInit initialises the NPU engine for the device bound to the calling
// thread (axclrtEngineInit). kiln uses [VNPUDisable].
func (rt *Runtime) EngineInit(kind VNPUKind) error {
	return rt.check("axclrtEngineInit", rt.engineInit(kind))
}

// EngineVNPUKind reports the mode the NPU was initialised in
// (axclrtEngineGetVNpuKind).
func (rt *Runtime) EngineVNPUKind() (VNPUKind, error) {
	var k VNPUKind
	if err := rt.check("axclrtEngineGetVNpuKind", rt.getVNPUKind(&k)); err != nil {
		return 0, err
	}
	return k, nil
}

// EngineFinalize releases the engine (axclrtEngineFinalize). It needs a
// bound context on the calling thread.
func (rt *Runtime) EngineFinalize() error {
	return rt.check("axclrtEngineFinalize", rt.engineFinalize())
}

// LoadModel loads a compiled .axmodel file onto the card
// (axclrtEngineLoadFromFile).
func (rt *Runtime) LoadModel(path string) (ModelID, error) {
	var id ModelID
	if err := rt.check("axclrtEngineLoadFromFile", rt.loadFromFile(path, &id)); err != nil {
		return 0, err
	}
	return id, nil
}

// LoadModelFromDevice loads a model whose bytes are already in device
// memory (axclrtEngineLoadFromMem); the buffer may be freed afterwards.
func (rt *Runtime) LoadModelFromDevice(model DevicePtr, size uint64) (ModelID, error) {
	if model == 0 {
		return 0, &HandleError{Op: "axclrtEngineLoadFromMem", Handle: "device pointer"}
	}
	var id ModelID
	if err := rt.check("axclrtEngineLoadFromMem", rt.loadFromMem(model, size, &id)); err != nil {
		return 0, err
	}
	return id, nil
}

// UnloadModel releases a model (axclrtEngineUnload).
func (rt *Runtime) UnloadModel(id ModelID) error {
	return rt.check("axclrtEngineUnload", rt.unload(id))
}

// CompilerVersion is the Pulsar2 version that compiled the model
// (axclrtEngineGetModelCompilerVersion); "" when unknown.
func (rt *Runtime) CompilerVersion(id ModelID) string { return rt.compilerVersion(id) }

// Usage is the memory a model needs, as reported by axclrtEngineGetUsage.
type Usage struct {
	SysBytes int64 // device system memory
	CMMBytes int64 // CMM
}

// HasModelUsage reports whether the runtime can tell a model file's needs
// before loading it (axclrtEngineGetUsage is exported).
func (rt *Runtime) HasModelUsage() bool { return rt.getUsage != nil }

// ModelUsage reports the memory the model file at path needs, without
// loading it (axclrtEngineGetUsage). [ErrUnsupported] when the runtime does
// not export the symbol.
func (rt *Runtime) ModelUsage(path string) (Usage, error) {
	if rt.getUsage == nil {
		return Usage{}, fmt.Errorf("axcl: axclrtEngineGetUsage not exported by %s: %w", rt.path, ErrUnsupported)
	}
	var u Usage
	if err := rt.check("axclrtEngineGetUsage", rt.getUsage(path, &u.SysBytes, &u.CMMBytes)); err != nil {
		return Usage{}, err
	}
	return u, nil
}

// LoadedModelUsage reports the memory a loaded model uses
// (axclrtEngineGetUsageFromModelId).
func (rt *Runtime) LoadedModelUsage(id ModelID) (Usage, error) {
	var u Usage
	if err := rt.check("axclrtEngineGetUsageFromModelId", rt.getUsageByID(id, &u.SysBytes, &u.CMMBytes)); err != nil {
		return Usage{}, err
	}
	return u, nil
}

// CreateEngineContext creates an engine context for a model
// (axclrtEngineCreateContext). Several per model are allowed, each with its
// own state.
func (rt *Runtime) CreateEngineContext(id ModelID) (EngineContext, error) {
	var c EngineContext
	if err := rt.check("axclrtEngineCreateContext", rt.createEngineContext(id, &c)); err != nil {
		return 0, err
	}
	return c, nil
}

// Execute runs shape group group of the model synchronously with the
// buffers bound to io (axclrtEngineExecute). It allocates nothing.
func (rt *Runtime) Execute(id ModelID, ctx EngineContext, group uint32, io IO) error {
	if io == 0 {
		return &HandleError{Op: "axclrtEngineExecute", Handle: "io"}
	}
	return rt.check("axclrtEngineExecute", call4(rt.executeSym, uintptr(id), uintptr(ctx), uintptr(group), uintptr(io)))
}
