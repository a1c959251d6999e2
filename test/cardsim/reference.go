package cardsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// This file mirrors csrc/ops.c for the LLM kinds, bit for bit. Every float32 product that is
// followed by an addition is wrapped in float32(...) so the Go compiler cannot fuse it into an
// FMA (the C side is built with -ffp-contract=off).

const (
	peSalt    = 0x50455045
	mropeSalt = 0x4d524f50
	// MaskHidden is the bf16 bit pattern of -65536, the mask value that hides a column.
	MaskHidden uint16 = 0xC780
	// MaskVisible is bf16 0.0.
	MaskVisible uint16 = 0
)

// BF16ToFloat converts a bf16 bit pattern to float32 (exact).
func BF16ToFloat(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// FloatToBF16 rounds a float32 to bf16, round to nearest even (NaN stays NaN).
func FloatToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Unit is the simulator's weight generator: the (idx+1)-th output of splitmix64 seeded with
// seed, mapped to [-1, 1) with 24 bits.
func Unit(seed, idx uint64) float32 {
	u := mix64(seed + (idx+1)*0x9e3779b97f4a7c15)
	return float32(int32(u>>40)-8388608) * (1.0 / 8388608.0)
}

// Exp is the simulator's exp for the softmax: 0 below -80, a degree-6 polynomial for 2^f.
func Exp(x float32) float32 {
	if !(x >= -80) {
		return 0
	}
	if x > 80 {
		x = 80
	}
	t := x * 1.44269504
	n := int(t)
	if float32(n) > t {
		n--
	}
	f := t - float32(n)
	p := float32(0.0001540353)
	p = float32(p*f) + 0.001333356
	p = float32(p*f) + 0.009618129
	p = float32(p*f) + 0.05550411
	p = float32(p*f) + 0.2402265
	p = float32(p*f) + 0.6931472
	p = float32(p*f) + 1.0
	return p * math.Float32frombits(uint32(n+127)<<23)
}

func amp(n int) float32 { return float32(1 / math.Sqrt(float64(n))) }

func softsign4(h float32) float32 {
	return h / (1 + float32(0.25*float32(math.Abs(float64(h)))))
}

// Layer is the reference of one simulated LLM layer (kind llm_layer).
type Layer struct {
	Seed   uint64
	Hidden int // D
	KVDim  int // K
	// MRoPE (param mrope) adds a term of the token's position (row i % 3) to output i.
	MRoPE bool

	once sync.Once
	w    []float32
}

func (l *Layer) weights() []float32 {
	l.once.Do(func() {
		d, k := l.Hidden, l.KVDim
		n := 4 * k * d
		l.w = make([]float32, n)
		ad, ak := amp(d), amp(k)
		for i := range l.w {
			a := ad
			if i >= 3*k*d {
				a = ak
			}
			l.w[i] = Unit(l.Seed, uint64(i)) * a
		}
	})
	return l.w
}

// Run computes the layer op exactly as the simulator does for one execute: input [T][D] bf16,
// indices [T], mask [T][C] bf16 (C = H + T), kCache/vCache [≥H][K] bf16 (the first H rows are
// the history columns). It returns K_cache_out and V_cache_out [T][K] and output [T][D].
func (l *Layer) Run(input []uint16, indices []uint32, mask []uint16, kCache, vCache []uint16) (kOut, vOut, out []uint16, err error) {
	return l.RunMRoPE(input, [3][]uint32{indices, indices, indices}, mask, kCache, vCache)
}

// RunMRoPE is Run with 3-row indices (mRoPE: t, h, w positions, [3][T]): dimension i of the
// query and key rows takes its position from row i % 3. Run is RunMRoPE with three equal rows.
func (l *Layer) RunMRoPE(input []uint16, indices [3][]uint32, mask []uint16, kCache, vCache []uint16) (kOut, vOut, out []uint16, err error) {
	d, k := l.Hidden, l.KVDim
	t := len(indices[0])
	if len(indices[1]) != t || len(indices[2]) != t {
		return nil, nil, nil, fmt.Errorf("cardsim: layer: index rows of %d, %d, %d positions", t, len(indices[1]), len(indices[2]))
	}
	if t == 0 || len(input) != t*d || len(mask)%t != 0 || len(mask)/t < t {
		return nil, nil, nil, fmt.Errorf("cardsim: layer: T=%d, input %d, mask %d elements do not fit hidden %d", t, len(input), len(mask), d)
	}
	c := len(mask) / t
	h := c - t
	if h > 0 && (len(kCache) < h*k || len(vCache) < h*k) {
		return nil, nil, nil, fmt.Errorf("cardsim: layer: K/V cache hold %d/%d elements, %d history rows need %d", len(kCache), len(vCache), h, h*k)
	}
	w := l.weights()
	x := make([]float32, t*d)
	for i, v := range input {
		x[i] = BF16ToFloat(v)
	}
	q := make([]float32, t*k)
	kOut = make([]uint16, t*k)
	vOut = make([]uint16, t*k)
	for r := 0; r < t; r++ {
		xr := x[r*d : (r+1)*d]
		for i := 0; i < k; i++ {
			pos := uint64(indices[i%3][r])
			var aq, ak, av float32
			for j := 0; j < d; j++ {
				o := i*d + j
				aq += float32(w[o] * xr[j])
				ak += float32(w[k*d+o] * xr[j])
				av += float32(w[2*k*d+o] * xr[j])
			}
			pe := Unit(l.Seed^peSalt, pos*uint64(k)+uint64(i)) * 0.5
			q[r*k+i] = aq + pe
			kOut[r*k+i] = FloatToBF16(ak + pe)
			vOut[r*k+i] = FloatToBF16(av)
		}
	}
	scale := amp(k)
	sc := make([]float32, c)
	vis := make([]bool, c)
	a := make([]float32, k)
	out = make([]uint16, t*d)
	for r := 0; r < t; r++ {
		qr := q[r*k : (r+1)*k]
		mr := mask[r*c : (r+1)*c]
		have := false
		var mx float32
		for col := 0; col < c; col++ {
			mv := BF16ToFloat(mr[col])
			vis[col] = false
			if !(mv > -32768) {
				continue
			}
			var key []uint16
			if col < h {
				key = kCache[col*k : (col+1)*k]
			} else {
				key = kOut[(col-h)*k : (col-h+1)*k]
			}
			var dot float32
			for i := 0; i < k; i++ {
				dot += float32(qr[i] * BF16ToFloat(key[i]))
			}
			sv := float32(dot*scale) + mv
			sc[col] = sv
			vis[col] = true
			if !have || sv > mx {
				mx = sv
			}
			have = true
		}
		for i := range a {
			a[i] = 0
		}
		if have {
			var z float32
			for col := 0; col < c; col++ {
				if !vis[col] {
					continue
				}
				e := Exp(sc[col] - mx)
				z += e
				var val []uint16
				if col < h {
					val = vCache[col*k : (col+1)*k]
				} else {
					val = vOut[(col-h)*k : (col-h+1)*k]
				}
				for i := 0; i < k; i++ {
					a[i] += float32(e * BF16ToFloat(val[i]))
				}
			}
			for i := range a {
				a[i] /= z
			}
		}
		for i := 0; i < d; i++ {
			var o float32
			for j := 0; j < k; j++ {
				o += float32(w[3*k*d+i*k+j] * a[j])
			}
			hv := x[r*d+i] + o
			if l.MRoPE {
				hv += Unit(l.Seed^mropeSalt, uint64(indices[i%3][r])*uint64(d)+uint64(i))
			}
			out[r*d+i] = FloatToBF16(softsign4(hv))
		}
	}
	return kOut, vOut, out, nil
}

// Post is the reference of the simulated post model (kind llm_post): final projection to
// vocabulary logits through a rank-R bottleneck.
type Post struct {
	Seed   uint64
	Hidden int
	Vocab  int
	Rank   int

	once sync.Once
	w    []float32
}

func (p *Post) weights() []float32 {
	p.once.Do(func() {
		r, d := p.Rank, p.Hidden
		p.w = make([]float32, r*d+p.Vocab*r)
		ad, au := amp(d), float32(4/math.Sqrt(float64(r)))
		for i := range p.w {
			a := ad
			if i >= r*d {
				a = au
			}
			p.w[i] = Unit(p.Seed, uint64(i)) * a
		}
	})
	return p.w
}

// Logits returns the float32 logits for one hidden row (before any bf16 rounding of the
// output tensor; apply FloatToBF16 for a bf16 post model).
func (p *Post) Logits(x []uint16) []float32 {
	w := p.weights()
	r, d := p.Rank, p.Hidden
	z := make([]float32, r)
	for i := 0; i < r; i++ {
		var acc float32
		for j := 0; j < d; j++ {
			acc += float32(w[i*d+j] * BF16ToFloat(x[j]))
		}
		z[i] = acc
	}
	out := make([]float32, p.Vocab)
	for v := range out {
		var acc float32
		base := r*d + v*r
		for i := 0; i < r; i++ {
			acc += float32(w[base+i] * z[i])
		}
		out[v] = acc
	}
	return out
}

// Reference runs a simulated LLM package from token ids without any KV cache: the oracle the
// cached runtime must match bit for bit.
type Reference struct {
	Layers   []*Layer
	Post     *Post
	PostBF16 bool     // the post model's output is bf16 (else fp32)
	Embed    []uint16 // Vocab × Hidden bf16
	Hidden   int
	Vocab    int
	// Image, when the package has a vision encoder, is its input size and rows per image.
	Image *VisionSpec
	// vision encodes images as the package's encoder does (nil without one).
	vision *LLMSpec
	// qwen is Qwen3-VL's encoder (patch input, deepstack outputs), nil otherwise.
	qwen *qwenVision
}

// pkgConfig is the part of config.json (axllm 2026 format) the reference reads.
type pkgConfig struct {
	Template  string `json:"template_filename_axmodel"`
	Vision    string `json:"filename_image_encoder_axmodel"`
	Layers    int    `json:"axmodel_num"`
	Post      string `json:"filename_post_axmodel"`
	Embed     string `json:"filename_tokens_embed"`
	EmbedNum  int    `json:"tokens_embed_num"`
	EmbedSize int    `json:"tokens_embed_size"`
	// Qwen3-VL's patching (Hugging Face vision_config), 0 for other packages.
	Patch, TemporalPatch int
}

// LoadReference reads a simulated LLM package written by WriteLLMPackage: config.json, every
// layer and post model file, and the embedding table.
func LoadReference(dir string) (*Reference, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if errors.Is(err, os.ErrNotExist) {
		b = []byte("{}") // LayoutQwen3VLM5Stack: everything from the files
	} else if err != nil {
		return nil, fmt.Errorf("cardsim: %w", err)
	}
	var c pkgConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("cardsim: config.json: %w", err)
	}
	if c.Template == "" {
		if err := vendorLayout(dir, b, &c); err != nil {
			return nil, err
		}
	}
	if c.Layers < 1 || c.EmbedNum < 1 || c.EmbedSize < 1 {
		return nil, errors.New("cardsim: config.json: axmodel_num, tokens_embed_num and tokens_embed_size must be positive")
	}
	ref := &Reference{Hidden: c.EmbedSize, Vocab: c.EmbedNum}
	load := func(name string) (*ModelSpec, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("cardsim: %w", err)
		}
		s, err := ParseModelSpec(b)
		if err != nil {
			return nil, fmt.Errorf("cardsim: %s: %w", name, err)
		}
		return s, nil
	}
	param := func(s *ModelSpec, n string) int64 { v, _ := s.Param(n); return v }
	for i := 0; i < c.Layers; i++ {
		s, err := load(fmt.Sprintf(c.Template, i))
		if err != nil {
			return nil, err
		}
		if s.Kind != KindLLMLayer || int(param(s, "hidden")) != c.EmbedSize {
			return nil, fmt.Errorf("cardsim: layer %d is %s with hidden %d", i, s.Kind, param(s, "hidden"))
		}
		ref.Layers = append(ref.Layers, &Layer{Seed: uint64(param(s, "seed")), Hidden: c.EmbedSize, KVDim: int(param(s, "kv_dim")), MRoPE: param(s, "mrope") != 0})
	}
	s, err := load(c.Post)
	if err != nil {
		return nil, err
	}
	rank := param(s, "rank")
	if rank == 0 {
		rank = 16
	}
	if s.Kind != KindLLMPost || int(param(s, "vocab")) != c.EmbedNum {
		return nil, fmt.Errorf("cardsim: post model is %s with vocab %d", s.Kind, param(s, "vocab"))
	}
	ref.Post = &Post{Seed: uint64(param(s, "seed")), Hidden: c.EmbedSize, Vocab: c.EmbedNum, Rank: int(rank)}
	ref.PostBF16 = s.Outputs[0].DType == BF16
	if c.Vision != "" {
		s, err := load(c.Vision)
		if err != nil {
			return nil, err
		}
		if s.Kind != KindVision || len(s.Inputs) != 1 || len(s.Inputs[0].Dims) != 1 || len(s.Inputs[0].Dims[0]) != 4 {
			return nil, fmt.Errorf("cardsim: %s is not a vision encoder", c.Vision)
		}
		in := s.Inputs[0].Dims[0]
		if m := int(param(s, "merge")); m > 0 {
			if c.Patch < 1 || c.TemporalPatch < 1 || in[1]%(m*m) != 0 || in[2] != c.TemporalPatch*c.Patch*c.Patch {
				return nil, fmt.Errorf("cardsim: %s: input %v does not fit patch %d, temporal patch %d", c.Vision, in, c.Patch, c.TemporalPatch)
			}
			side := 1
			for side*side < in[1] {
				side++
			}
			ref.qwen = &qwenVision{seed: uint64(param(s, "seed")), hidden: c.EmbedSize, width: side * c.Patch, height: side * c.Patch,
				patch: c.Patch, tp: c.TemporalPatch, m: m, outputs: len(s.Outputs)}
		}
		ref.Image = &VisionSpec{Width: in[2], Height: in[1], Grid: int(param(s, "grid"))}
		ref.vision = &LLMSpec{Hidden: c.EmbedSize, Seed: uint64(param(s, "seed")) - 0x20000, Vision: ref.Image}
	}
	eb, err := os.ReadFile(filepath.Join(dir, c.Embed))
	if err != nil {
		return nil, fmt.Errorf("cardsim: %w", err)
	}
	if len(eb) != c.EmbedNum*c.EmbedSize*2 {
		return nil, fmt.Errorf("cardsim: %s has %d bytes, want %d", c.Embed, len(eb), c.EmbedNum*c.EmbedSize*2)
	}
	ref.Embed = make([]uint16, len(eb)/2)
	for i := range ref.Embed {
		ref.Embed[i] = uint16(eb[2*i]) | uint16(eb[2*i+1])<<8
	}
	return ref, nil
}

// vendorLayout fills c for a package without an axllm config.json, laid out as the vendor
// publishes SmolVLM-256M (LayoutSmolVLM): Hugging Face's config.json (text_config) and the
// model files found by their names.
func vendorLayout(dir string, raw []byte, c *pkgConfig) error {
	var hf struct {
		Text struct {
			Layers int `json:"num_hidden_layers"`
			Hidden int `json:"hidden_size"`
			Vocab  int `json:"vocab_size"`
		} `json:"text_config"`
		Vision struct {
			Patch         int `json:"patch_size"`
			TemporalPatch int `json:"temporal_patch_size"`
		} `json:"vision_config"`
	}
	if err := json.Unmarshal(raw, &hf); err != nil {
		return fmt.Errorf("cardsim: config.json: %w", err)
	}
	// The model files lie in dir (SmolVLM) or in one folder below it (Qwen3-VL).
	l0, _ := filepath.Glob(filepath.Join(dir, "*_p*_l0_together.axmodel"))
	if len(l0) == 0 {
		l0, _ = filepath.Glob(filepath.Join(dir, "*", "*_p*_l0_together.axmodel"))
	}
	if len(l0) != 1 {
		return fmt.Errorf("cardsim: %s: want one *_p*_l0_together.axmodel, found %d", dir, len(l0))
	}
	sub, _ := filepath.Rel(dir, filepath.Dir(l0[0]))
	base := filepath.Base(l0[0])
	arch := base[:strings.Index(base, "_p")]
	c.Template = filepath.Join(sub, strings.Replace(base, "_l0_", "_l%d_", 1))
	c.Layers, c.EmbedSize, c.EmbedNum = hf.Text.Layers, hf.Text.Hidden, hf.Text.Vocab
	c.Post, c.Embed = filepath.Join(sub, arch+"_post.axmodel"), filepath.Join(sub, EmbedFile)
	c.Patch, c.TemporalPatch = hf.Vision.Patch, hf.Vision.TemporalPatch
	for _, pat := range []string{"*_vision_nhwc.axmodel", "*_vision.axmodel"} {
		if v, _ := filepath.Glob(filepath.Join(dir, sub, pat)); len(v) == 1 {
			c.Vision = filepath.Join(sub, filepath.Base(v[0]))
		}
	}
	if c.Layers > 0 {
		return nil
	}
	// No config.json (LayoutQwen3VLM5Stack): count the layers, read the sizes from the models.
	for c.Layers < 1024 {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf(c.Template, c.Layers))); err != nil {
			break
		}
		c.Layers++
	}
	read := func(name, param string) int {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return 0
		}
		s, err := ParseModelSpec(b)
		if err != nil {
			return 0
		}
		v, _ := s.Param(param)
		return int(v)
	}
	c.EmbedSize, c.EmbedNum = read(fmt.Sprintf(c.Template, 0), "hidden"), read(c.Post, "vocab")
	if c.Patch == 0 && strings.HasSuffix(c.Vision, "_vision.axmodel") {
		c.Patch, c.TemporalPatch = 16, 2
	}
	return nil
}

// Hidden returns the last layer's output rows (bf16) for tokens at positions 0..n-1, computed
// with full causal attention and no cache.
func (r *Reference) HiddenStates(tokens []int) ([][]uint16, error) {
	return r.hiddenStates(tokens, nil)
}

// hiddenStates is HiddenStates with the input rows of some positions replaced (rows[pos],
// bf16), as a vision encoder's output replaces its placeholders.
func (r *Reference) hiddenStates(tokens []int, rows map[int][]uint16) ([][]uint16, error) {
	idx := make([]uint32, len(tokens))
	for i := range idx {
		idx[i] = uint32(i)
	}
	return r.hiddenStatesAt(tokens, rows, [3][]uint32{idx, idx, idx}, nil)
}

// hiddenStatesAt is hiddenStates with 3-row positions and, for some positions, rows added to
// the hidden states after the first layers (deep[pos][i] after layer i, float32 sum rounded to
// bf16), as Qwen3-VL's deepstack features are.
func (r *Reference) hiddenStatesAt(tokens []int, rows map[int][]uint16, pos [3][]uint32, deep map[int][][]float32) ([][]uint16, error) {
	n, d := len(tokens), r.Hidden
	if n == 0 {
		return nil, errors.New("cardsim: no tokens")
	}
	x := make([]uint16, n*d)
	for i, tok := range tokens {
		if tok < 0 || tok >= r.Vocab {
			return nil, fmt.Errorf("cardsim: token %d outside vocabulary %d", tok, r.Vocab)
		}
		copy(x[i*d:], r.Embed[tok*d:(tok+1)*d])
		if row, ok := rows[i]; ok {
			copy(x[i*d:], row)
		}
	}
	mask := make([]uint16, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			if j > i {
				mask[i*n+j] = MaskHidden
			}
		}
	}
	for li, l := range r.Layers {
		_, _, out, err := l.RunMRoPE(x, pos, mask, nil, nil)
		if err != nil {
			return nil, err
		}
		x = out
		for p, add := range deep {
			if li >= len(add) {
				continue
			}
			for i := 0; i < d; i++ {
				x[p*d+i] = FloatToBF16(BF16ToFloat(x[p*d+i]) + add[li][i])
			}
		}
	}
	states := make([][]uint16, n)
	for i := range states {
		states[i] = x[i*d : (i+1)*d]
	}
	return states, nil
}

// Logits returns the post model's logits after the last token, rounded as the post model's
// output tensor is (bf16 or fp32), as float32.
func (r *Reference) Logits(tokens []int) ([]float32, error) {
	return r.logits(tokens, nil)
}

func (r *Reference) logits(tokens []int, replaced map[int][]uint16) ([]float32, error) {
	idx := make([]uint32, len(tokens))
	for i := range idx {
		idx[i] = uint32(i)
	}
	return r.logitsAt(tokens, replaced, [3][]uint32{idx, idx, idx}, nil)
}

// logitsAt is logits with hiddenStatesAt's positions and deepstack rows.
func (r *Reference) logitsAt(tokens []int, replaced map[int][]uint16, pos [3][]uint32, deep map[int][][]float32) ([]float32, error) {
	rows, err := r.hiddenStatesAt(tokens, replaced, pos, deep)
	if err != nil {
		return nil, err
	}
	lg := r.Post.Logits(rows[len(rows)-1])
	if r.PostBF16 {
		for i, v := range lg {
			lg[i] = BF16ToFloat(FloatToBF16(v))
		}
	}
	return lg, nil
}

// Greedy appends n tokens to prompt by argmax (lowest id on ties) and returns the new ones.
func (r *Reference) Greedy(prompt []int, n int) ([]int, error) {
	return r.greedy(prompt, nil, n)
}

// GreedyImages is Greedy for a prompt with images: each run of imageID placeholders in prompt
// takes the encoder's rows (bf16) of the images in order, Image.Grid² rows per image, as the
// package's vision encoder computes them from RGB bytes (Image.Width × Image.Height × 3).
func (r *Reference) GreedyImages(prompt []int, imageID int, images [][]byte, n int) ([]int, error) {
	if r.vision == nil {
		return nil, errors.New("cardsim: the package has no vision encoder")
	}
	per, d := r.Image.Grid*r.Image.Grid, r.Hidden
	starts, err := imageStarts(prompt, imageID, per, len(images))
	if err != nil {
		return nil, err
	}
	rows := map[int][]uint16{}
	for k, px := range images {
		enc := r.vision.VisionEncode(px)
		if enc == nil {
			return nil, fmt.Errorf("cardsim: image %d has %d bytes, want %d×%d×3", k, len(px), r.Image.Width, r.Image.Height)
		}
		for t := 0; t < per; t++ {
			row := make([]uint16, d)
			for i := range row {
				row[i] = FloatToBF16(enc[t*d+i])
			}
			rows[starts[k]+t] = row
		}
	}
	return r.greedy(prompt, rows, n)
}

func (r *Reference) greedy(prompt []int, rows map[int][]uint16, n int) ([]int, error) {
	return greedyWith(prompt, n, func(toks []int) ([]float32, error) { return r.logits(toks, rows) })
}

// greedyWith appends n tokens to prompt, each the argmax of logits over the tokens so far, and
// returns the new ones.
func greedyWith(prompt []int, n int, logits func(toks []int) ([]float32, error)) ([]int, error) {
	toks := append([]int(nil), prompt...)
	var out []int
	for i := 0; i < n; i++ {
		lg, err := logits(toks)
		if err != nil {
			return nil, err
		}
		best := argmax(lg)
		toks = append(toks, best)
		out = append(out, best)
	}
	return out, nil
}

// imageStarts returns where each image's rows begin in prompt: every run of imageID
// placeholders takes per rows of one image after another, and there must be one start for
// each of the n images.
func imageStarts(prompt []int, imageID, per, n int) ([]int, error) {
	var starts []int
	for i := 0; i < len(prompt); {
		if prompt[i] != imageID {
			i++
			continue
		}
		j := i
		for j < len(prompt) && prompt[j] == imageID {
			j++
		}
		if (j-i)%per != 0 {
			return nil, fmt.Errorf("cardsim: a run of %d placeholders at %d; an image takes %d", j-i, i, per)
		}
		for k := i; k < j; k += per {
			starts = append(starts, k)
		}
		i = j
	}
	if len(starts) != n {
		return nil, fmt.Errorf("cardsim: %d images for %d placeholder runs", n, len(starts))
	}
	return starts, nil
}

// argmax is the index of the largest logit, the lowest on ties.
func argmax(lg []float32) int {
	best := 0
	for v := range lg {
		if lg[v] > lg[best] {
			best = v
		}
	}
	return best
}
