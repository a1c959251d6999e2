package llm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-project/kiln/test/cardsim"
	"github.com/kiln-project/kiln/worker/axcl"
	"github.com/kiln-project/kiln/worker/npu"
)

// What Load refuses, checked without a card: packages on disk
// (openPackage) and the tensors their models describe (layerShape,
// postLogits, checkVocab, visionInput), each refusal naming its reason.

// validateSpec is a small package: testSpec with a 1000-token embedding
// table written as a sparse file.
func validateSpec() cardsim.LLMSpec {
	s := testSpec()
	s.Vocab, s.EmbedValues = 1000, false
	return s
}

// pkgFiles edits a package folder written by cardsim.WriteLLMPackage.
type pkgFiles struct {
	t   *testing.T
	dir string
}

func (f pkgFiles) path(rel string) string { return filepath.Join(f.dir, filepath.FromSlash(rel)) }

func (f pkgFiles) write(rel, content string) {
	f.t.Helper()
	if err := os.WriteFile(f.path(rel), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f pkgFiles) mkdir(rel string) {
	f.t.Helper()
	if err := os.Mkdir(f.path(rel), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func (f pkgFiles) remove(rel string) {
	f.t.Helper()
	if err := os.RemoveAll(f.path(rel)); err != nil {
		f.t.Fatal(err)
	}
}

// config rewrites config.json after edit changes its fields.
func (f pkgFiles) config(edit func(cfg map[string]any)) {
	f.t.Helper()
	raw, err := os.ReadFile(f.path("config.json"))
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		f.t.Fatal(err)
	}
	edit(cfg)
	raw, err = json.Marshal(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.write("config.json", string(raw))
}

func TestOpenPackageRefuses(t *testing.T) {
	s := validateSpec()
	md := s.ModelDir + "/"
	for _, c := range []struct {
		name   string
		spec   func(s *cardsim.LLMSpec) // before writing
		edit   func(f pkgFiles)         // after writing
		reason string                   // in the error; "" for a package that opens
	}{
		{name: "a complete package"},
		{
			name: "an empty config.json: the files found by their vendor names",
			edit: func(f pkgFiles) { f.write("config.json", "") },
		},
		{
			name:   "no folder",
			edit:   func(f pkgFiles) { f.remove("") },
			reason: "no such file or directory",
		},
		{
			name: "a file, not a folder",
			edit: func(f pkgFiles) {
				f.remove("")
				if err := os.WriteFile(f.dir, nil, 0o644); err != nil {
					f.t.Fatal(err)
				}
			},
			reason: "is not a folder",
		},
		{
			name:   "config.json is not JSON",
			edit:   func(f pkgFiles) { f.write("config.json", "{model_name: qwen3") },
			reason: "config.json: invalid character",
		},
		{
			name:   "config.json is a folder",
			edit:   func(f pkgFiles) { f.remove("config.json"); f.mkdir("config.json") },
			reason: "is not a regular file of at most 1 MiB",
		},
		{
			name:   "no layers",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["axmodel_num"] = 0 }) },
			reason: "axmodel_num 0 is not a layer count (1..1024)",
		},
		{
			name:   "too many layers",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["axmodel_num"] = 5000 }) },
			reason: "axmodel_num 5000 is not a layer count",
		},
		{
			name: "a layer template without %d",
			edit: func(f pkgFiles) {
				f.config(func(c map[string]any) { c["template_filename_axmodel"] = md + "qwen3_p128_l0_together.axmodel" })
			},
			reason: "must hold one %d",
		},
		{
			name: "a layer template with two %d",
			edit: func(f pkgFiles) {
				f.config(func(c map[string]any) { c["template_filename_axmodel"] = md + "qwen3_p%d_l%d_together.axmodel" })
			},
			reason: "must hold one %d",
		},
		{
			name:   "no post model named",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { delete(c, "filename_post_axmodel") }) },
			reason: "no filename_post_axmodel",
		},
		{
			name:   "a layer file missing",
			edit:   func(f pkgFiles) { f.remove(md + "qwen3_p128_l1_together.axmodel") },
			reason: "qwen3_p128_l1_together.axmodel is missing",
		},
		{
			name: "a layer file that is a folder",
			edit: func(f pkgFiles) {
				f.remove(md + "qwen3_p128_l0_together.axmodel")
				f.mkdir(md + "qwen3_p128_l0_together.axmodel")
			},
			reason: "qwen3_p128_l0_together.axmodel is missing",
		},
		{
			name:   "the post model missing",
			edit:   func(f pkgFiles) { f.remove(md + "qwen3_post.axmodel") },
			reason: "qwen3_post.axmodel is missing",
		},
		{
			name:   "the embedding table missing",
			edit:   func(f pkgFiles) { f.remove(md + EmbedFile) },
			reason: EmbedFile + " is missing",
		},
		{
			name:   "an embedding table of the wrong size",
			edit:   func(f pkgFiles) { f.write(md+EmbedFile, "short") },
			reason: "has 5 bytes; tokens_embed_num 1000 × tokens_embed_size 64 × 2 is 128000",
		},
		{
			name: "a vision encoder named but missing",
			edit: func(f pkgFiles) {
				f.config(func(c map[string]any) { c["filename_image_encoder_axmodel"] = md + "vision_model.axmodel" })
			},
			reason: "vision_model.axmodel is missing",
		},
		{
			name:   "an unknown config.json key",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["max_context"] = 4096 }) },
			reason: `config.json: key "max_context" is neither in the 2026 axllm format (ax-llm docs/configuration.md) nor one of kiln's`,
		},
		{
			name:   "hybrid attention",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["full_attention_interval"] = 4 }) },
			reason: `key "full_attention_interval" is 4: kiln does not run hybrid, sliding-window or shared-KV attention`,
		},
		{
			name: "sliding-window layers",
			edit: func(f pkgFiles) {
				f.config(func(c map[string]any) { c["layer_types"] = []string{"full_attention", "sliding_attention"} })
			},
			reason: `key "layer_types" is ["full_attention","sliding_attention"]: kiln does not run hybrid`,
		},
		{
			name:   "an embedding-only package",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["is_embedding"] = true }) },
			reason: `key "is_embedding" is true: kiln does not run embedding-only models`,
		},
		{
			name:   "an unsupported vlm_type",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["vlm_type"] = "InternVL3" }) },
			reason: `key "vlm_type" is "InternVL3": kiln serves None, Qwen3VL`,
		},
		{
			name:   "an unsupported tokenizer_type",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["tokenizer_type"] = "Gemma4" }) },
			reason: `key "tokenizer_type" is "Gemma4": kiln has the chat templates of Qwen3`,
		},
		{
			name: "an HTTP tokenizer",
			edit: func(f pkgFiles) {
				f.config(func(c map[string]any) { c["url_tokenizer_model"] = "http://127.0.0.1:12345" })
			},
			reason: `key "url_tokenizer_model" is "http://127.0.0.1:12345": kiln reads a local tokenizer.json`,
		},
		{
			name:   "post_config.json is not JSON",
			edit:   func(f pkgFiles) { f.write("post_config.json", "top_k = 1") },
			reason: "post_config.json: invalid character",
		},
		{
			name:   "a post config named but missing",
			edit:   func(f pkgFiles) { f.config(func(c map[string]any) { c["post_config_path"] = "sampling.json" }) },
			reason: "post config ",
		},
		{
			name: "no config.json and no layer files",
			edit: func(f pkgFiles) {
				f.write("config.json", "")
				f.remove(s.ModelDir)
			},
			reason: "has neither a config.json naming its models nor a *_p128_l0_together.axmodel",
		},
		{
			name: "no config.json and two layer-0 models",
			edit: func(f pkgFiles) {
				f.write("config.json", "")
				f.write(md+"llama_p128_l0_together.axmodel", "x")
			},
			reason: "holds several layer-0 models",
		},
		{
			name:   "no tokenizer",
			spec:   func(s *cardsim.LLMSpec) { s.TokenizerDir = "" },
			reason: `key "url_tokenizer_model" is "qwen3_tokenizer/tokenizer.json" and no tokenizer.json is found there`,
		},
		{
			name: "a tokenizer that does not parse",
			edit: func(f pkgFiles) {
				f.remove("qwen3_tokenizer")
				f.mkdir("qwen3_tokenizer")
				f.write("qwen3_tokenizer/tokenizer.json", `{"model": {"type": "BPE", "vocab": 7}}`)
			},
			reason: "tokenizer of",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := validateSpec()
			if c.spec != nil {
				c.spec(&s)
			}
			f := pkgFiles{t, filepath.Join(t.TempDir(), s.Name)}
			if err := cardsim.WriteLLMPackage(f.dir, s); err != nil {
				t.Fatal(err)
			}
			if c.edit != nil {
				c.edit(f)
			}
			pkg, tok, err := openPackage(f.dir)
			if c.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(pkg.Layers) != s.Layers || tok == nil {
					t.Fatalf("package %+v, tokenizer %v", pkg, tok)
				}
				return
			}
			if !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want ErrPackage saying %q", err, c.reason)
			}
			if pkg != nil || tok != nil {
				t.Fatal("a refused package is returned")
			}
		})
	}
}

// groupsOf describes a simulated model as the runtime does (axcl.Describe).
func groupsOf(ms *cardsim.ModelSpec) []axcl.ShapeGroup {
	list := func(ts []cardsim.Tensor, g int) []axcl.Tensor {
		out := make([]axcl.Tensor, len(ts))
		for i, t := range ts {
			out[i] = axcl.Tensor{Index: i, Name: t.Name, DataType: axcl.DataType(t.DType),
				Dims: slices.Clone(t.Dims[g]), Size: uint64(t.Elems(g) * t.DType.Size())}
		}
		return out
	}
	groups := make([]axcl.ShapeGroup, ms.Groups)
	for g := range groups {
		groups[g] = axcl.ShapeGroup{Inputs: list(ms.Inputs, g), Outputs: list(ms.Outputs, g)}
	}
	return groups
}

// TestGroupsOfIsWhatTheCardSays: the shape groups these tests build are
// those the simulated card describes for the same model files, but for the
// tensor layouts, which no check reads.
func TestGroupsOfIsWhatTheCardSays(t *testing.T) {
	s := validateSpec()
	s.Vision = cardsim.TinyQwen3VL().Vision
	dir := filepath.Join(t.TempDir(), s.Name)
	if err := cardsim.WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	cfg := npu.Config{Library: cardsim.Library(t), SampleInterval: -1}
	for file, spec := range map[string]*cardsim.ModelSpec{
		s.LayerFile(0): s.LayerSpec(0), s.PostFile(): s.PostSpec(), s.Vision.File: s.VisionModelSpec(),
	} {
		info, err := npu.Inspect(t.Context(), cfg, filepath.Join(dir, s.ModelDir, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range info.Groups { // the checks do not read layouts
			for i := range g.Inputs {
				g.Inputs[i].Layout = 0
			}
			for i := range g.Outputs {
				g.Outputs[i].Layout = 0
			}
		}
		if got, want := fmt.Sprint(groupsOf(spec)), fmt.Sprint(info.Groups); got != want {
			t.Errorf("%s:\n built %s\n card  %s", file, got, want)
		}
	}
}

// named is the tensor called name in list.
func named(t *testing.T, list []axcl.Tensor, name string) *axcl.Tensor {
	t.Helper()
	if x := tensor(list, name); x != nil {
		return x
	}
	t.Fatalf("no tensor %s", name)
	return nil
}

// resize sets a tensor's dims and the size that goes with them.
func resize(x *axcl.Tensor, dims ...int) {
	x.Dims = dims
	n := uint64(1)
	for _, d := range dims {
		n *= uint64(d)
	}
	x.Size = n * uint64(x.DataType.Bits()/8)
}

func TestLayerShape(t *testing.T) {
	s := validateSpec() // groups: decode, then prefill with history 0, 128, 256, 384
	pkg := &Package{Layers: []string{"l0.axmodel", "l1.axmodel"}, Hidden: s.Hidden}
	shape, sizes, _, err := pkg.layerShape(groupsOf(s.LayerSpec(0)))
	if err != nil {
		t.Fatal(err)
	}
	want := Shape{Layers: 2, Hidden: 64, KVDim: 32, Context: 639, Chunk: 128, Decode: 0,
		Prefill: []Group{{1, 0}, {2, 128}, {3, 256}, {4, 384}}}
	if shape.Layers != want.Layers || shape.Hidden != want.Hidden || shape.KVDim != want.KVDim || shape.Context != want.Context ||
		shape.Chunk != want.Chunk || shape.Decode != want.Decode || !slices.Equal(shape.Prefill, want.Prefill) {
		t.Fatalf("shape %+v, want %+v", shape, want)
	}
	if sizes.cache != 639*32*2 || sizes.mask != 128*(384+128)*2 || sizes.input != 128*64*2 {
		t.Errorf("buffer sizes %+v", sizes)
	}

	for _, c := range []struct {
		name   string
		edit   func(g []axcl.ShapeGroup)
		hidden int // config.json tokens_embed_size
		reason string
	}{
		{
			name: "a tensor missing",
			edit: func(g []axcl.ShapeGroup) {
				g[2].Inputs = slices.DeleteFunc(g[2].Inputs, func(x axcl.Tensor) bool { return x.Name == "V_cache" })
			},
			reason: `l0.axmodel: shape group 2 has no input "V_cache" nor "V_cache_2", not an Axera LLM layer; inputs found: 0 "input", 1 "indices", 2 "mask", 3 "K_cache"`,
		},
		{
			name:   "an fp16 cache",
			edit:   func(g []axcl.ShapeGroup) { named(t, g[1].Inputs, "K_cache").DataType = axcl.TypeFP16 },
			reason: "tensor K_cache is fp16, kiln runs bf16 layers",
		},
		{
			name:   "int64 indices",
			edit:   func(g []axcl.ShapeGroup) { named(t, g[0].Inputs, "indices").DataType = axcl.TypeInt64 },
			reason: `indices "indices" are int64, want uint32`,
		},
		{
			name:   "a second decode group whose cache cannot hold its context",
			edit:   func(g []axcl.ShapeGroup) { resize(named(t, g[3].Inputs, "indices"), 1, 1) },
			reason: "decode group 3: K_cache holds 8192 elements, context 49151 × kv_dim 4096 needs more",
		},
		{
			name:   "no decode group",
			edit:   func(g []axcl.ShapeGroup) { resize(named(t, g[0].Inputs, "indices"), 1, 2) },
			reason: "has no decode shape group",
		},
		{
			name:   "a decode cache shorter than the context",
			edit:   func(g []axcl.ShapeGroup) { resize(named(t, g[0].Inputs, "K_cache"), 1, 600, 32) },
			reason: "decode group 0: K_cache holds 19200 elements, context 639 × kv_dim 32 needs more",
		},
		{
			name:   "mRoPE positions in one prefill group only",
			edit:   func(g []axcl.ShapeGroup) { resize(named(t, g[2].Inputs, "indices"), 3, 128) },
			reason: "prefill group 2 has [3 128] indices, other groups not",
		},
		{
			name:   "a prefill group of another chunk",
			edit:   func(g []axcl.ShapeGroup) { resize(named(t, g[2].Outputs, "output"), 1, 64, 64) },
			reason: "prefill group 2 does not fit chunk 128, hidden 64, kv_dim 32",
		},
		{
			name:   "a prefill history past the context",
			edit:   func(g []axcl.ShapeGroup) { resize(named(t, g[4].Inputs, "mask"), 1, 128, 128+600) },
			reason: "prefill group 4 has history 600, outside context 639",
		},
		{
			name:   "config.json says another hidden size",
			hidden: 128,
			reason: "config.json says tokens_embed_size 128, l0.axmodel takes hidden 64",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			groups := groupsOf(s.LayerSpec(0))
			if c.edit != nil {
				c.edit(groups)
			}
			pkg := &Package{Layers: []string{"l0.axmodel", "l1.axmodel"}, Hidden: c.hidden}
			if _, _, _, err := pkg.layerShape(groups); !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want ErrPackage saying %q", err, c.reason)
			}
		})
	}
}

// TestLayersShareShapes: every layer must describe the tensors of layer 0.
func TestLayersShareShapes(t *testing.T) {
	s := validateSpec()
	l0, l1 := groupsOf(s.LayerSpec(0)), groupsOf(s.LayerSpec(1))
	if !sameShapes(l0, l1) {
		t.Fatal("two layers of one package differ")
	}
	other := s
	other.MaxCtx = 1023
	for name, g := range map[string][]axcl.ShapeGroup{
		"another context": groupsOf(other.LayerSpec(1)),
		"a group fewer":   l1[:4],
		"an output fewer": append(slices.Clone(l1[:4]), axcl.ShapeGroup{Inputs: l1[4].Inputs, Outputs: l1[4].Outputs[:2]}),
		"another data type": func() []axcl.ShapeGroup {
			g := groupsOf(s.LayerSpec(1))
			g[0].Inputs[0].DataType = axcl.TypeFP16
			return g
		}(),
	} {
		if sameShapes(l0, g) {
			t.Errorf("%s: taken for the same shapes", name)
		}
	}
}

func TestPostLogits(t *testing.T) {
	s := validateSpec()
	post := func(fp32 bool) []axcl.ShapeGroup {
		s := s
		s.PostFP32 = fp32
		return groupsOf(s.PostSpec())
	}
	for _, fp32 := range []bool{false, true} {
		out, err := postLogits("post.axmodel", post(fp32), s.Hidden)
		if err != nil {
			t.Fatal(err)
		}
		if out.Name != "output" || elems(out) != 1000 || (out.DataType == axcl.TypeFP32) != fp32 {
			t.Fatalf("logits %+v", out)
		}
	}
	// An output not called "output": the first.
	g := post(false)
	g[0].Outputs[0].Name = "logits"
	if out, err := postLogits("post.axmodel", g, s.Hidden); err != nil || out.Name != "logits" {
		t.Fatalf("logits %+v (%v)", out, err)
	}

	for _, c := range []struct {
		name   string
		edit   func(g []axcl.ShapeGroup) []axcl.ShapeGroup
		hidden int
		reason string
	}{
		{"no shape group", func([]axcl.ShapeGroup) []axcl.ShapeGroup { return nil }, 64, "post.axmodel: post model wants one input and an output"},
		{"two inputs", func(g []axcl.ShapeGroup) []axcl.ShapeGroup {
			g[0].Inputs = append(g[0].Inputs, g[0].Inputs[0])
			return g
		}, 64, "post model wants one input and an output"},
		{"no output", func(g []axcl.ShapeGroup) []axcl.ShapeGroup { g[0].Outputs = nil; return g }, 64, "post model wants one input and an output"},
		{"an fp32 input", func(g []axcl.ShapeGroup) []axcl.ShapeGroup { g[0].Inputs[0].DataType = axcl.TypeFP32; return g }, 64, "post model input is fp32 × 64, want bf16 × hidden 64"},
		{"another hidden size", nil, 128, "post model input is bf16 × 64, want bf16 × hidden 128"},
		{"int8 logits", func(g []axcl.ShapeGroup) []axcl.ShapeGroup { g[0].Outputs[0].DataType = axcl.TypeInt8; return g }, 64, "post model output is int8, want bf16 or fp32 logits"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := post(false)
			if c.edit != nil {
				g = c.edit(g)
			}
			if _, err := postLogits("post.axmodel", g, c.hidden); !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want ErrPackage saying %q", err, c.reason)
			}
		})
	}

	pkg := &Package{Post: "post.axmodel", Vocab: 1000}
	if err := pkg.checkVocab(1000); err != nil {
		t.Fatal(err)
	}
	if err := (&Package{Post: "post.axmodel"}).checkVocab(1000); err != nil {
		t.Fatalf("a package without tokens_embed_num: %v", err)
	}
	if err := pkg.checkVocab(151936); !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), "config.json says tokens_embed_num 1000, post.axmodel writes 151936 logits") {
		t.Fatalf("err = %v", err)
	}
}

func TestVisionInput(t *testing.T) {
	s := cardsim.TinyQwen3VL()
	shape := &Shape{Hidden: s.Hidden, Vocab: s.Vocab}
	pkg := &Package{Vision: "vision.axmodel", ImageTokenID: s.Vision.ImageTokenID}
	v, b, err := pkg.visionInput(groupsOf(s.VisionModelSpec()), shape)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Vision{Width: 384, Height: 384, Tokens: 144, ImageTokenID: 151655}); v != want || b.in != 0 || b.out != 0 || b.deep != nil {
		t.Fatalf("vision %+v (binding %+v), want %+v", v, b, want)
	}

	for _, c := range []struct {
		name   string
		edit   func(g []axcl.ShapeGroup, p *Package)
		reason string
	}{
		{"two unnamed image inputs", func(g []axcl.ShapeGroup, _ *Package) {
			g[0].Inputs[0].Name = "img"
			g[0].Inputs = append(g[0].Inputs, g[0].Inputs[0])
			g[0].Inputs[1].Name = "img2"
		}, "vision.axmodel: no vision input named hidden_states, pixel_values, input and no single uint8 4-dimensional input; inputs: img uint8 [1 384 384 3], img2 uint8 [1 384 384 3]"},
		{"no output", func(g []axcl.ShapeGroup, _ *Package) { g[0].Outputs = nil }, "the vision encoder wants an input and an output"},
		{"a float image", func(g []axcl.ShapeGroup, _ *Package) { g[0].Inputs[0].DataType = axcl.TypeFP32 }, "vision input input is fp32 [1 384 384 3], want uint8 [1,H,W,3]"},
		{"an NCHW image", func(g []axcl.ShapeGroup, _ *Package) { g[0].Inputs[0].Dims = []int{1, 3, 384, 384} }, "vision input input is uint8 [1 3 384 384]"},
		{"int8 rows", func(g []axcl.ShapeGroup, _ *Package) { g[0].Outputs[0].DataType = axcl.TypeInt8 }, "vision output output is int8, want bf16 or fp32"},
		{"rows of another width", func(g []axcl.ShapeGroup, _ *Package) { resize(&g[0].Outputs[0], 1, 144, 50) }, "vision output output of 7200 values is not rows of hidden 64; outputs: output bf16 [1 144 50]"},
		{"no rows", func(g []axcl.ShapeGroup, _ *Package) { resize(&g[0].Outputs[0], 1, 0, 64) }, "vision output output of 0 values"},
		{"a placeholder outside the vocabulary", func(_ []axcl.ShapeGroup, p *Package) { p.ImageTokenID = 151936 }, "config.json vision_image_token_id 151936 is outside the vocabulary of 151936"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g, p := groupsOf(s.VisionModelSpec()), *pkg
			c.edit(g, &p)
			if _, _, err := p.visionInput(g, shape); !errors.Is(err, ErrPackage) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %v, want ErrPackage saying %q", err, c.reason)
			}
		})
	}
}

// TestLayerShapeSeveralDecodeGroups: a layer laid out as the 2026 ax-llm
// runner allows (ax-llm src/runner/LLM_init.cpp, LLMImpl.hpp): three decode
// groups of contexts 255, 639 and 383, the largest not first, and tensor
// names suffixed _<group> in groups other than 0. kiln decodes in the
// largest, finds every group's tensors as the vendor's lookup does, and
// refuses a role that moves to another index.
func TestLayerShapeSeveralDecodeGroups(t *testing.T) {
	s := validateSpec()
	s.DecodeContexts = []int{255, 639, 383}
	suffixed := func() []axcl.ShapeGroup {
		groups := groupsOf(s.LayerSpec(0))
		for g := 1; g < len(groups); g++ {
			for _, list := range [][]axcl.Tensor{groups[g].Inputs, groups[g].Outputs} {
				for i := range list {
					list[i].Name += "_" + strconv.Itoa(g)
				}
			}
		}
		return groups
	}
	pkg := &Package{Layers: []string{"l0.axmodel"}}
	shape, sizes, ios, err := pkg.layerShape(suffixed())
	if err != nil {
		t.Fatal(err)
	}
	if shape.Decode != 1 || shape.Context != 639 || !slices.Equal(shape.UnusedDecode, []int{0, 2}) ||
		!slices.Equal(shape.Prefill, []Group{{3, 0}, {4, 128}, {5, 256}, {6, 384}}) {
		t.Fatalf("shape %+v: want decode group 1 (context 639), unused decode groups 0 and 2, prefill groups 3..6", shape)
	}
	if sizes.cache != 639*32*2 || sizes.mask != 128*(384+128)*2 {
		t.Errorf("buffer sizes %+v", sizes)
	}
	if got := ios[4].k().Name; got != "K_cache_4" {
		t.Errorf("group 4 K_cache is %q, want K_cache_4", got)
	}
	if got := ios[0].vo().Name; got != "V_cache_out" {
		t.Errorf("group 0 V_cache_out is %q, want the plain name", got)
	}

	groups := suffixed()
	in := groups[2].Inputs
	in[3].Name, in[4].Name = in[4].Name, in[3].Name // K and V swap places in group 2
	in[3].Name, in[4].Name = "V_cache_2", "K_cache_2"
	if _, _, _, err := pkg.layerShape(groups); !errors.Is(err, ErrPackage) ||
		!strings.Contains(err.Error(), `input "K_cache" is input 3 in shape group 0 but "K_cache_2" is 4 in group 2`) {
		t.Fatalf("err = %v, want a refusal naming K_cache's index", err)
	}
	groups = suffixed()
	groups[5].Outputs[2].Name = "output_4"
	if _, _, _, err := pkg.layerShape(groups); !errors.Is(err, ErrPackage) ||
		!strings.Contains(err.Error(), `shape group 5 has no output "output" nor "output_5"`) {
		t.Fatalf("err = %v, want a refusal naming the missing output", err)
	}
}
