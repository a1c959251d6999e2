package axcl

// Functions of axcl_rt_context.h.
type contextFuncs struct {
	// axclError axclrtCreateContext(axclrtContext *context, int32_t deviceId);
	createContext func(ctx *Context, id int32) int32
	// axclError axclrtDestroyContext(axclrtContext context);
	destroyContext func(ctx Context) int32
	// axclError axclrtSetCurrentContext(axclrtContext context);
	setCurrentContext func(ctx Context) int32
	// axclError axclrtGetCurrentContext(axclrtContext *context);
	getCurrentContext func(ctx *Context) int32
}

func (f *contextFuncs) load(l *library) error {
	b := binder{lib: l}
	b.bind(&f.createContext, "axclrtCreateContext")
	b.bind(&f.destroyContext, "axclrtDestroyContext")
	b.bind(&f.setCurrentContext, "axclrtSetCurrentContext")
	b.bind(&f.getCurrentContext, "axclrtGetCurrentContext")
	return b.err
}

// CreateContext creates an explicit context on the device and binds it to
// the calling OS thread (axclrtCreateContext).
func (rt *Runtime) CreateContext(id DeviceID) (Context, error) {
	var c Context
	if err := rt.check("axclrtCreateContext", rt.createContext(&c, int32(id))); err != nil {
		return 0, err
	}
	return c, nil
}

// DestroyContext destroys a context made by CreateContext
// (axclrtDestroyContext).
func (rt *Runtime) DestroyContext(c Context) error {
	if c == 0 {
		return &HandleError{Op: "axclrtDestroyContext", Handle: "context"}
	}
	return rt.check("axclrtDestroyContext", rt.destroyContext(c))
}

// SetCurrentContext binds c to the calling OS thread
// (axclrtSetCurrentContext).
func (rt *Runtime) SetCurrentContext(c Context) error {
	if c == 0 {
		return &HandleError{Op: "axclrtSetCurrentContext", Handle: "context"}
	}
	return rt.check("axclrtSetCurrentContext", rt.setCurrentContext(c))
}

// CurrentContext returns the context bound to the calling OS thread
// (axclrtGetCurrentContext); [ErrNoContext] when there is none.
func (rt *Runtime) CurrentContext() (Context, error) {
	var c Context
	if err := rt.check("axclrtGetCurrentContext", rt.getCurrentContext(&c)); err != nil {
		return 0, err
	}
	return c, nil
}
