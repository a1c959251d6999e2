package axcl

import "fmt"

// Functions of axcl_rt_engine.h: IO info (tensor description) and IO
// (buffer binding). Sizes and dims are per shape group; names, data types
// and layouts are not.
type engineIOFuncs struct {
	// axclError axclrtEngineGetIOInfo(uint64_t modelId, axclrtEngineIOInfo *ioInfo);
	getIOInfo func(model ModelID, info *IOInfo) int32
	// axclError axclrtEngineDestroyIOInfo(axclrtEngineIOInfo ioInfo);
	destroyIOInfo func(info IOInfo) int32
	// axclError axclrtEngineGetShapeGroupsCount(axclrtEngineIOInfo ioInfo, int32_t *count);
	getShapeGroupsCount func(info IOInfo, count *int32) int32

	// uint32_t axclrtEngineGetNumInputs(axclrtEngineIOInfo ioInfo);
	getNumInputs func(info IOInfo) uint32
	// uint32_t axclrtEngineGetNumOutputs(axclrtEngineIOInfo ioInfo);
	getNumOutputs func(info IOInfo) uint32
	// uint64_t axclrtEngineGetInputSizeByIndex(axclrtEngineIOInfo ioInfo, uint32_t group, uint32_t index);
	getInputSize func(info IOInfo, group, index uint32) uint64
	// uint64_t axclrtEngineGetOutputSizeByIndex(axclrtEngineIOInfo ioInfo, uint32_t group, uint32_t index);
	getOutputSize func(info IOInfo, group, index uint32) uint64
	// const char *axclrtEngineGetInputNameByIndex(axclrtEngineIOInfo ioInfo, uint32_t index);
	getInputName func(info IOInfo, index uint32) string
	// const char *axclrtEngineGetOutputNameByIndex(axclrtEngineIOInfo ioInfo, uint32_t index);
	getOutputName func(info IOInfo, index uint32) string
	// int32_t axclrtEngineGetInputIndexByName(axclrtEngineIOInfo ioInfo, const char *name);
	getInputIndex func(info IOInfo, name string) int32
	// int32_t axclrtEngineGetOutputIndexByName(axclrtEngineIOInfo ioInfo, const char *name);
	getOutputIndex func(info IOInfo, name string) int32
	// axclError axclrtEngineGetInputDims(axclrtEngineIOInfo ioInfo, uint32_t group, uint32_t index, axclrtEngineIODims *dims);
	getInputDims func(info IOInfo, group, index uint32, dims *Dims) int32
	// axclError axclrtEngineGetOutputDims(axclrtEngineIOInfo ioInfo, uint32_t group, uint32_t index, axclrtEngineIODims *dims);
	getOutputDims func(info IOInfo, group, index uint32, dims *Dims) int32
	// axclError axclrtEngineGetInputDataType(axclrtEngineIOInfo ioInfo, uint32_t index, axclrtEngineDataType *type);
	getInputDataType func(info IOInfo, index uint32, t *DataType) int32
	// axclError axclrtEngineGetOutputDataType(axclrtEngineIOInfo ioInfo, uint32_t index, axclrtEngineDataType *type);
	getOutputDataType func(info IOInfo, index uint32, t *DataType) int32
	// axclError axclrtEngineGetInputDataLayout(axclrtEngineIOInfo ioInfo, uint32_t index, axclrtEngineDataLayout *layout);
	getInputDataLayout func(info IOInfo, index uint32, l *DataLayout) int32
	// axclError axclrtEngineGetOutputDataLayout(axclrtEngineIOInfo ioInfo, uint32_t index, axclrtEngineDataLayout *layout);
	getOutputDataLayout func(info IOInfo, index uint32, l *DataLayout) int32

	// axclError axclrtEngineCreateIO(axclrtEngineIOInfo ioInfo, axclrtEngineIO *io);
	createIO func(info IOInfo, io *IO) int32
	// axclError axclrtEngineDestroyIO(axclrtEngineIO io);
	destroyIO func(io IO) int32
	// axclError axclrtEngineSetInputBufferByIndex(axclrtEngineIO io, uint32_t index, const void *dataBuffer, uint64_t size);
	setInputByIndex func(io IO, index uint32, buf DevicePtr, size uint64) int32
	// axclError axclrtEngineSetOutputBufferByIndex(axclrtEngineIO io, uint32_t index, const void *dataBuffer, uint64_t size);
	setOutputByIndex func(io IO, index uint32, buf DevicePtr, size uint64) int32
	// axclError axclrtEngineSetInputBufferByName(axclrtEngineIO io, const char *name, const void *dataBuffer, uint64_t size);
	setInputByName func(io IO, name string, buf DevicePtr, size uint64) int32
	// axclError axclrtEngineSetOutputBufferByName(axclrtEngineIO io, const char *name, const void *dataBuffer, uint64_t size);
	setOutputByName func(io IO, name string, buf DevicePtr, size uint64) int32
	// axclError axclrtEngineGetInputBufferByIndex(axclrtEngineIO io, uint32_t index, void **dataBuffer, uint64_t *size);
	getInputByIndex func(io IO, index uint32, buf *DevicePtr, size *uint64) int32
	// axclError axclrtEngineGetOutputBufferByIndex(axclrtEngineIO io, uint32_t index, void **dataBuffer, uint64_t *size);
	getOutputByIndex func(io IO, index uint32, buf *DevicePtr, size *uint64) int32
	// axclError axclrtEngineGetInputBufferByName(axclrtEngineIO io, const char *name, void **dataBuffer, uint64_t *size);
	getInputByName func(io IO, name string, buf *DevicePtr, size *uint64) int32
	// axclError axclrtEngineGetOutputBufferByName(axclrtEngineIO io, const char *name, void **dataBuffer, uint64_t *size);
	getOutputByName func(io IO, name string, buf *DevicePtr, size *uint64) int32
}

func (f *engineIOFuncs) load(l *library) error {
	b := binder{lib: l}
	b.bind(&f.getIOInfo, "axclrtEngineGetIOInfo")
	b.bind(&f.destroyIOInfo, "axclrtEngineDestroyIOInfo")
	b.bind(&f.getShapeGroupsCount, "axclrtEngineGetShapeGroupsCount")
	b.bind(&f.getNumInputs, "axclrtEngineGetNumInputs")
	b.bind(&f.getNumOutputs, "axclrtEngineGetNumOutputs")
	b.bind(&f.getInputSize, "axclrtEngineGetInputSizeByIndex")
	b.bind(&f.getOutputSize, "axclrtEngineGetOutputSizeByIndex")
	b.bind(&f.getInputName, "axclrtEngineGetInputNameByIndex")
	b.bind(&f.getOutputName, "axclrtEngineGetOutputNameByIndex")
	b.bind(&f.getInputIndex, "axclrtEngineGetInputIndexByName")
	b.bind(&f.getOutputIndex, "axclrtEngineGetOutputIndexByName")
	b.bind(&f.getInputDims, "axclrtEngineGetInputDims")
	b.bind(&f.getOutputDims, "axclrtEngineGetOutputDims")
	b.bind(&f.getInputDataType, "axclrtEngineGetInputDataType")
	b.bind(&f.getOutputDataType, "axclrtEngineGetOutputDataType")
	b.bind(&f.getInputDataLayout, "axclrtEngineGetInputDataLayout")
	b.bind(&f.getOutputDataLayout, "axclrtEngineGetOutputDataLayout")
	b.bind(&f.createIO, "axclrtEngineCreateIO")
	b.bind(&f.destroyIO, "axclrtEngineDestroyIO")
	b.bind(&f.setInputByIndex, "axclrtEngineSetInputBufferByIndex")
	b.bind(&f.setOutputByIndex, "axclrtEngineSetOutputBufferByIndex")
	b.bind(&f.setInputByName, "axclrtEngineSetInputBufferByName")
	b.bind(&f.setOutputByName, "axclrtEngineSetOutputBufferByName")
	b.bind(&f.getInputByIndex, "axclrtEngineGetInputBufferByIndex")
	b.bind(&f.getOutputByIndex, "axclrtEngineGetOutputBufferByIndex")
	if b.err != nil {
		return b.err
	}
	// Probed: BufferByName falls back to the index lookup without them.
	l.optional(&f.getInputByName, "axclrtEngineGetInputBufferByName")
	l.optional(&f.getOutputByName, "axclrtEngineGetOutputBufferByName")
	return nil
}

// Direction says whether a tensor is a model input or output.
type Direction int

// Directions.
const (
	Input Direction = iota
	Output
)

func (d Direction) String() string {
	if d == Output {
		return "output"
	}
	return "input"
}

// IOInfo returns the tensor description of a model (axclrtEngineGetIOInfo).
// Release it with DestroyIOInfo; tensor names live as long as it does.
func (rt *Runtime) IOInfo(id ModelID) (IOInfo, error) {
	var info IOInfo
	if err := rt.check("axclrtEngineGetIOInfo", rt.getIOInfo(id, &info)); err != nil {
		return 0, err
	}
	return info, nil
}

// DestroyIOInfo releases an IO info (axclrtEngineDestroyIOInfo).
func (rt *Runtime) DestroyIOInfo(info IOInfo) error {
	if info == 0 {
		return &HandleError{Op: "axclrtEngineDestroyIOInfo", Handle: "io info"}
	}
	return rt.check("axclrtEngineDestroyIOInfo", rt.destroyIOInfo(info))
}

// ShapeGroupCount is the number of shape groups, 1 for ordinary models
// (axclrtEngineGetShapeGroupsCount).
func (rt *Runtime) ShapeGroupCount(info IOInfo) (int, error) {
	if info == 0 {
		return 0, &HandleError{Op: "axclrtEngineGetShapeGroupsCount", Handle: "io info"}
	}
	var n int32
	if err := rt.check("axclrtEngineGetShapeGroupsCount", rt.getShapeGroupsCount(info, &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// zeroResult is the error of a lookup that returned 0 or NULL: the
// runtime's last error when the SDK exports axclrtGetLastError, else
// ErrNotFound with the arguments.
func (rt *Runtime) zeroResult(op string, what string) error {
	if code := rt.LastError(); code != Success {
		return fmt.Errorf("%w (%s)", rt.newError(op, code), what)
	}
	return fmt.Errorf("axcl: %s: %s: %w", op, what, ErrNotFound)
}

// NumTensors is the number of inputs or outputs (axclrtEngineGetNumInputs,
// axclrtEngineGetNumOutputs). The runtime reports failure as 0.
func (rt *Runtime) NumTensors(info IOInfo, dir Direction) (int, error) {
	op, fn := "axclrtEngineGetNumInputs", rt.getNumInputs
	if dir == Output {
		op, fn = "axclrtEngineGetNumOutputs", rt.getNumOutputs
	}
	if info == 0 {
		return 0, &HandleError{Op: op, Handle: "io info"}
	}
	n := fn(info)
	if n == 0 {
		return 0, rt.zeroResult(op, "no tensors")
	}
	return int(n), nil
}

// TensorSize is the size in bytes of tensor index in shape group group
// (axclrtEngineGetInputSizeByIndex, ...Output...).
func (rt *Runtime) TensorSize(info IOInfo, dir Direction, group, index int) (uint64, error) {
	op, fn := "axclrtEngineGetInputSizeByIndex", rt.getInputSize
	if dir == Output {
		op, fn = "axclrtEngineGetOutputSizeByIndex", rt.getOutputSize
	}
	if info == 0 {
		return 0, &HandleError{Op: op, Handle: "io info"}
	}
	n := fn(info, uint32(group), uint32(index))
	if n == 0 {
		return 0, rt.zeroResult(op, fmt.Sprintf("group %d %s %d", group, dir, index))
	}
	return n, nil
}

// TensorName is the name of tensor index (axclrtEngineGetInputNameByIndex,
// ...Output...). Names do not depend on the shape group.
func (rt *Runtime) TensorName(info IOInfo, dir Direction, index int) (string, error) {
	op, fn := "axclrtEngineGetInputNameByIndex", rt.getInputName
	if dir == Output {
		op, fn = "axclrtEngineGetOutputNameByIndex", rt.getOutputName
	}
	if info == 0 {
		return "", &HandleError{Op: op, Handle: "io info"}
	}
	name := fn(info, uint32(index))
	if name == "" {
		return "", rt.zeroResult(op, fmt.Sprintf("%s %d", dir, index))
	}
	return name, nil
}

// TensorIndex is the index of the tensor called name
// (axclrtEngineGetInputIndexByName, ...Output...); [ErrNotFound] when the
// model has no such tensor.
func (rt *Runtime) TensorIndex(info IOInfo, dir Direction, name string) (int, error) {
	op, fn := "axclrtEngineGetInputIndexByName", rt.getInputIndex
	if dir == Output {
		op, fn = "axclrtEngineGetOutputIndexByName", rt.getOutputIndex
	}
	if info == 0 {
		return 0, &HandleError{Op: op, Handle: "io info"}
	}
	i := fn(info, name)
	if i < 0 {
		return 0, fmt.Errorf("axcl: %s: no %s named %q: %w", op, dir, name, ErrNotFound)
	}
	return int(i), nil
}

// TensorDims is the shape of tensor index in shape group group
// (axclrtEngineGetInputDims, ...Output...).
func (rt *Runtime) TensorDims(info IOInfo, dir Direction, group, index int) ([]int, error) {
	op, fn := "axclrtEngineGetInputDims", rt.getInputDims
	if dir == Output {
		op, fn = "axclrtEngineGetOutputDims", rt.getOutputDims
	}
	if info == 0 {
		return nil, &HandleError{Op: op, Handle: "io info"}
	}
	var d Dims
	if err := rt.check(op, fn(info, uint32(group), uint32(index), &d)); err != nil {
		return nil, err
	}
	if d.Count < 0 || d.Count > MaxDims {
		return nil, fmt.Errorf("axcl: %s: runtime reported %d dims (max %d)", op, d.Count, MaxDims)
	}
	return d.Slice(), nil
}

// TensorDataType is the element type of tensor index
// (axclrtEngineGetInputDataType, ...Output...).
func (rt *Runtime) TensorDataType(info IOInfo, dir Direction, index int) (DataType, error) {
	op, fn := "axclrtEngineGetInputDataType", rt.getInputDataType
	if dir == Output {
		op, fn = "axclrtEngineGetOutputDataType", rt.getOutputDataType
	}
	if info == 0 {
		return 0, &HandleError{Op: op, Handle: "io info"}
	}
	var t DataType
	if err := rt.check(op, fn(info, uint32(index), &t)); err != nil {
		return 0, err
	}
	return t, nil
}

// TensorLayout is the data layout of tensor index
// (axclrtEngineGetInputDataLayout, ...Output...).
func (rt *Runtime) TensorLayout(info IOInfo, dir Direction, index int) (DataLayout, error) {
	op, fn := "axclrtEngineGetInputDataLayout", rt.getInputDataLayout
	if dir == Output {
		op, fn = "axclrtEngineGetOutputDataLayout", rt.getOutputDataLayout
	}
	if info == 0 {
		return 0, &HandleError{Op: op, Handle: "io info"}
	}
	var l DataLayout
	if err := rt.check(op, fn(info, uint32(index), &l)); err != nil {
		return 0, err
	}
	return l, nil
}

// CreateIO creates an empty buffer binding for a model
// (axclrtEngineCreateIO). Bind one device buffer to every tensor before
// executing.
func (rt *Runtime) CreateIO(info IOInfo) (IO, error) {
	if info == 0 {
		return 0, &HandleError{Op: "axclrtEngineCreateIO", Handle: "io info"}
	}
	var io IO
	if err := rt.check("axclrtEngineCreateIO", rt.createIO(info, &io)); err != nil {
		return 0, err
	}
	return io, nil
}

// DestroyIO releases an IO (axclrtEngineDestroyIO). Bound buffers are not
// freed.
func (rt *Runtime) DestroyIO(io IO) error {
	if io == 0 {
		return &HandleError{Op: "axclrtEngineDestroyIO", Handle: "io"}
	}
	return rt.check("axclrtEngineDestroyIO", rt.destroyIO(io))
}

// SetBuffer binds device buffer buf of size bytes to tensor index
// (axclrtEngineSetInputBufferByIndex, ...Output...).
func (rt *Runtime) SetBuffer(io IO, dir Direction, index int, buf DevicePtr, size uint64) error {
	op, fn := "axclrtEngineSetInputBufferByIndex", rt.setInputByIndex
	if dir == Output {
		op, fn = "axclrtEngineSetOutputBufferByIndex", rt.setOutputByIndex
	}
	if io == 0 {
		return &HandleError{Op: op, Handle: "io"}
	}
	return rt.check(op, fn(io, uint32(index), buf, size))
}

// SetBufferByName binds device buffer buf to the tensor called name
// (axclrtEngineSetInputBufferByName, ...Output...).
func (rt *Runtime) SetBufferByName(io IO, dir Direction, name string, buf DevicePtr, size uint64) error {
	op, fn := "axclrtEngineSetInputBufferByName", rt.setInputByName
	if dir == Output {
		op, fn = "axclrtEngineSetOutputBufferByName", rt.setOutputByName
	}
	if io == 0 {
		return &HandleError{Op: op, Handle: "io"}
	}
	return rt.check(op, fn(io, name, buf, size))
}

// Buffer returns the device buffer bound to tensor index and its size
// (axclrtEngineGetInputBufferByIndex, ...Output...).
func (rt *Runtime) Buffer(io IO, dir Direction, index int) (DevicePtr, uint64, error) {
	op, fn := "axclrtEngineGetInputBufferByIndex", rt.getInputByIndex
	if dir == Output {
		op, fn = "axclrtEngineGetOutputBufferByIndex", rt.getOutputByIndex
	}
	if io == 0 {
		return 0, 0, &HandleError{Op: op, Handle: "io"}
	}
	var p DevicePtr
	var n uint64
	if err := rt.check(op, fn(io, uint32(index), &p, &n)); err != nil {
		return 0, 0, err
	}
	return p, n, nil
}

// BufferByName returns the device buffer bound to the tensor called name
// (axclrtEngineGetInputBufferByName, ...Output...). When the runtime does
// not export those, the name is resolved through info
// (axclrtEngineGet*IndexByName) and the buffer read by index.
func (rt *Runtime) BufferByName(io IO, info IOInfo, dir Direction, name string) (DevicePtr, uint64, error) {
	op, fn := "axclrtEngineGetInputBufferByName", rt.getInputByName
	if dir == Output {
		op, fn = "axclrtEngineGetOutputBufferByName", rt.getOutputByName
	}
	if io == 0 {
		return 0, 0, &HandleError{Op: op, Handle: "io"}
	}
	if fn == nil {
		i, err := rt.TensorIndex(info, dir, name)
		if err != nil {
			return 0, 0, err
		}
		return rt.Buffer(io, dir, i)
	}
	var p DevicePtr
	var n uint64
	if err := rt.check(op, fn(io, name, &p, &n)); err != nil {
		return 0, 0, err
	}
	return p, n, nil
}

// Tensor describes one input or output of a model in one shape group.
type Tensor struct {
	Index    int        `json:"index"`
	Name     string     `json:"name"`
	DataType DataType   `json:"dtype"`
	Layout   DataLayout `json:"layout"`
	Dims     []int      `json:"dims"`
	Size     uint64     `json:"bytes"`
}

// ShapeGroup is the inputs and outputs of one shape group.
type ShapeGroup struct {
	Inputs  []Tensor `json:"inputs"`
	Outputs []Tensor `json:"outputs"`
}

// Describe reads every shape group and every tensor of a model's IO info.
func (rt *Runtime) Describe(info IOInfo) ([]ShapeGroup, error) {
	groups, err := rt.ShapeGroupCount(info)
	if err != nil {
		return nil, err
	}
	if groups < 1 {
		return nil, fmt.Errorf("axcl: axclrtEngineGetShapeGroupsCount: runtime reported %d shape groups", groups)
	}
	var counts [2]int
	for _, dir := range []Direction{Input, Output} {
		if counts[dir], err = rt.NumTensors(info, dir); err != nil {
			return nil, err
		}
	}
	out := make([]ShapeGroup, groups)
	for g := range out {
		for _, dir := range []Direction{Input, Output} {
			list := make([]Tensor, counts[dir])
			for i := range list {
				t := &list[i]
				t.Index = i
				if t.Name, err = rt.TensorName(info, dir, i); err != nil {
					return nil, err
				}
				if t.DataType, err = rt.TensorDataType(info, dir, i); err != nil {
					return nil, err
				}
				if t.Layout, err = rt.TensorLayout(info, dir, i); err != nil {
					return nil, err
				}
				if t.Dims, err = rt.TensorDims(info, dir, g, i); err != nil {
					return nil, err
				}
				if t.Size, err = rt.TensorSize(info, dir, g, i); err != nil {
					return nil, err
				}
			}
			if dir == Input {
				out[g].Inputs = list
			} else {
				out[g].Outputs = list
			}
		}
	}
	return out, nil
}

// Tensor returns the tensor index of direction dir. It panics when index
// is out of range, like a slice index.
func (g *ShapeGroup) Tensor(dir Direction, index int) Tensor {
	if dir == Output {
		return g.Outputs[index]
	}
	return g.Inputs[index]
}
