package cardsim

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func bytesF32(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func TestSDModels(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := SD15LCM()
	s.Width, s.Height = 64, 48
	if err := WriteSDPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	specs := s.ModelSpecs()
	load := func(name string) *model { return c.load(filepath.Join(dir, name), specs[name]) }
	te, unet := load("text_encoder/sd15_text_encoder_sim.axmodel"), load("unet.axmodel")
	dec, enc := load("vae_decoder.axmodel"), load("vae_encoder.axmodel")

	encode := func(ids []int32) []float32 {
		b := make([]byte, 77*4)
		for i := 0; i < 77; i++ {
			id := int32(49407)
			if i < len(ids) {
				id = ids[i]
			}
			binary.LittleEndian.PutUint32(b[4*i:], uint32(id))
		}
		c.put(te.in[0][0], b)
		c.ok("text encoder", c.Execute(te.id, te.ctx, 0, te.io[0]))
		return bytesF32(c.get(te.out[0][0], 77*768*4))
	}
	cat, dog := encode([]int32{49406, 2368}), encode([]int32{49406, 1929})
	if slices.Equal(cat, dog) {
		t.Fatal("different prompts give the same text embedding")
	}
	ids := make([]int32, 77)
	for i := range ids {
		ids[i] = 49407
	}
	ids[0], ids[1] = 49406, 2368
	if ref, err := s.TextEncode(ids); err != nil || !slices.Equal(ref, cat) {
		t.Fatalf("text encoder differs from the Go reference (%v)", err)
	}
	c.put(te.in[0][0], f32bytes([]float32{-1}))
	c.want("token id outside the vocabulary", c.Execute(te.id, te.ctx, 0, te.io[0]), errEngineExecuteFail)

	h, w := s.Height/8, s.Width/8
	latent := make([]float32, 4*h*w)
	for i := range latent {
		latent[i] = Unit(42, uint64(i))
	}
	runUNet := func(x []float32, t int, text []float32) []float32 {
		c.put(unet.in[0][0], f32bytes(x)) // the vendor's order: sample, encoder_hidden_states, time row
		c.put(unet.in[0][1], f32bytes(text))
		c.put(unet.in[0][2], f32bytes(s.TimeEmbedding(t)))
		c.ok("unet", c.Execute(unet.id, unet.ctx, 0, unet.io[0]))
		return bytesF32(c.get(unet.out[0][0], len(x)*4))
	}
	e1 := runUNet(latent, 999, cat)
	if !slices.Equal(e1, s.UNet(latent, s.TimeEmbedding(999), cat)) {
		t.Fatal("unet differs from the Go reference")
	}
	if slices.Equal(e1, runUNet(latent, 999, dog)) || slices.Equal(e1, runUNet(latent, 259, cat)) {
		t.Fatal("unet output ignores the text or the time embedding")
	}
	latent2 := slices.Clone(latent)
	latent2[0] += 1
	if slices.Equal(e1, runUNet(latent2, 999, cat)) {
		t.Fatal("unet output ignores the latent")
	}
	c.put(dec.in[0][0], f32bytes(e1))
	c.ok("vae decoder", c.Execute(dec.id, dec.ctx, 0, dec.io[0]))
	img := bytesF32(c.get(dec.out[0][0], 3*s.Height*s.Width*4))
	if !slices.Equal(img, s.VAEDecode(e1)) {
		t.Fatal("vae decoder differs from the Go reference")
	}
	lo, hi := img[0], img[0]
	for _, v := range img {
		if !(v >= -1 && v <= 1) {
			t.Fatalf("image value %v outside [-1, 1]", v)
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	if hi-lo < 0.2 {
		t.Fatalf("image is flat: [%v, %v]", lo, hi)
	}
	c.put(enc.in[0][0], f32bytes(img))
	c.ok("vae encoder", c.Execute(enc.id, enc.ctx, 0, enc.io[0]))
	moments := bytesF32(c.get(enc.out[0][0], 8*h*w*4))
	if !slices.Equal(moments, s.VAEEncode(img)) {
		t.Fatal("vae encoder differs from the Go reference")
	}
	if slices.Equal(moments[:4*h*w], make([]float32, 4*h*w)) {
		t.Fatal("vae encoder mean is all zero")
	}
}

func TestSDPackageFiles(t *testing.T) {
	dir := t.TempDir()
	s := SD15LCM()
	if err := WriteSDPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	txt := mustRead(t, filepath.Join(dir, "time_input_txt2img.npy"))
	if len(txt) != 20608 || string(txt[:6]) != "\x93NUMPY" || txt[127] != '\n' {
		t.Fatalf("txt2img npy: %d bytes, header %q", len(txt), txt[:10])
	}
	img := mustRead(t, filepath.Join(dir, "time_input_img2img.npy"))
	rows := bytesF32(img[128:])
	txtRows := bytesF32(txt[128:])
	if !slices.Equal(rows[:2*1280], txtRows[2*1280:]) || slices.ContainsFunc(rows[2*1280:], func(v float32) bool { return v != 0 }) {
		t.Fatal("img2img rows are not (txt2img rows 2,3; zeros)")
	}
	for _, f := range []string{"text_encoder/sd15_text_encoder_sim.axmodel", "text_encoder/config.json", "unet.axmodel",
		"vae_decoder.axmodel", "vae_encoder.axmodel"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	var names []string
	for _, in := range s.ModelSpecs()["unet.axmodel"].Inputs {
		names = append(names, in.Name)
	}
	if want := []string{"sample", "encoder_hidden_states", UNetTimeInput}; !slices.Equal(names, want) {
		t.Errorf("unet inputs %q, want the vendor's order %q", names, want)
	}

	big := SD15LCM1024x768()
	dir = t.TempDir()
	if err := WriteSDPackage(dir, big); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vae_encoder.axmodel", "time_input_img2img.npy"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("the txt2img-only 1024x768 package has %s", f)
		}
	}
	if d := big.ModelSpecs()["vae_decoder.axmodel"].Outputs[0].Dims[0]; !slices.Equal(d, []int{1, 3, 1024, 768}) {
		t.Errorf("1024x768 vae_decoder output %v, want [1 3 1024 768] (height 1024, width 768)", d)
	}
}

// TestSDUNetInputsByName: the simulated UNet finds its inputs by the vendor's names in any
// order, and by shape when the names differ, so kiln's by-name binding and its shape
// fallback both meet a UNet that computes the same thing.
func TestSDUNetInputsByName(t *testing.T) {
	c := openCard(t, "")
	base := SD15LCM()
	base.Width, base.Height = 32, 24
	h, w := base.Height/8, base.Width/8
	x := make([]float32, 4*h*w)
	for i := range x {
		x[i] = Unit(7, uint64(i))
	}
	text := make([]float32, 77*768)
	for i := range text {
		text[i] = Unit(8, uint64(i))
	}
	want := base.UNet(x, base.TimeEmbedding(759), text)
	for _, tc := range []struct {
		name string
		edit func(string, *ModelSpec)
	}{
		{"vendor", nil},
		{"time second", func(f string, m *ModelSpec) {
			if f == "unet.axmodel" {
				m.Inputs[1], m.Inputs[2] = m.Inputs[2], m.Inputs[1]
			}
		}},
		{"other names", func(f string, m *ModelSpec) {
			if f == "unet.axmodel" {
				for i := range m.Inputs {
					m.Inputs[i].Name = fmt.Sprintf("input.%d", i)
				}
			}
		}},
	} {
		s := base
		s.Edit = tc.edit
		dir := t.TempDir()
		if err := WriteSDPackage(dir, s); err != nil {
			t.Fatal(err)
		}
		spec := s.ModelSpecs()["unet.axmodel"]
		if tc.edit != nil {
			tc.edit("unet.axmodel", spec)
		}
		unet := c.load(filepath.Join(dir, "unet.axmodel"), spec)
		for i, in := range spec.Inputs {
			v := x
			switch in.Dims[0][len(in.Dims[0])-1] {
			case 768:
				v = text
			case 1280:
				v = base.TimeEmbedding(759)
			}
			c.put(unet.in[0][i], f32bytes(v))
		}
		c.ok("unet", c.Execute(unet.id, unet.ctx, 0, unet.io[0]))
		if got := bytesF32(c.get(unet.out[0][0], len(x)*4)); !slices.Equal(got, want) {
			t.Errorf("%s: unet output differs from the Go reference", tc.name)
		}
	}
}

func TestVisionEncoder(t *testing.T) {
	c := openCard(t, "")
	dir := t.TempDir()
	s := smallLLM()
	s.Vision = &VisionSpec{File: "vision_model.axmodel", Width: 32, Height: 32, Grid: 4}
	if err := WriteLLMPackage(dir, s); err != nil {
		t.Fatal(err)
	}
	m := c.load(filepath.Join(dir, s.ModelDir, s.Vision.File), s.VisionModelSpec())
	run := func(px []byte) []uint16 {
		c.put(m.in[0][0], px)
		c.ok("vision", c.Execute(m.id, m.ctx, 0, m.io[0]))
		return bytesU16(c.get(m.out[0][0], 16*s.Hidden*2))
	}
	px := make([]byte, 32*32*3)
	a := run(px)
	px[5] = 255
	b := run(px)
	if slices.Equal(a, b) {
		t.Fatal("vision output ignores the image")
	}
	if !slices.Equal(a[s.Hidden:], b[s.Hidden:]) {
		t.Fatal("a pixel of patch 0 changed other tokens")
	}
	for i := range px {
		px[i] = byte(Unit(9, uint64(i))*127.9 + 128)
	}
	b = run(px)
	for i, v := range s.VisionEncode(px) {
		if FloatToBF16(v) != b[i] {
			t.Fatalf("vision output %d differs from the Go reference", i)
		}
	}
}
