package llm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReadPackage feeds arbitrary config.json and post_config.json bytes to
// the package reader: it returns a package or an error, never panics.
func FuzzReadPackage(f *testing.F) {
	f.Add([]byte(`{"template_filename_axmodel":"m/a_p128_l%d_together.axmodel","axmodel_num":2,"filename_post_axmodel":"m/a_post.axmodel","tokens_embed_num":4,"tokens_embed_size":2}`),
		[]byte(`{"enable_top_k_sampling":true,"top_k":1}`))
	f.Add([]byte(``), []byte(`{"enable_temperature":true,"temperature":0.7,"enable_top_p_sampling":true,"top_p":0.9}`))
	f.Add([]byte(`{"template_filename_axmodel":"%d%d","axmodel_num":1000000000}`), []byte(`[]`))
	f.Add([]byte(`{"axmodel_num":-1,"tokens_embed_num":-5}`), []byte(`{"top_k":"x"}`))
	f.Add([]byte(`{"template_filename_axmodel":"m/a_p128_l%d_together.axmodel","axmodel_num":2,"filename_post_axmodel":"m/a_post.axmodel","tokenizer_type":"Qwen3","url_tokenizer_model":"t/tokenizer.json","layer_types":["full_attention",7],"vlm_type":"None","kv_cache_slots":2,"devices":[0,1]}`), []byte(`{}`))
	f.Add([]byte(`{"template_filename_axmodel":"m/a_p128_l%d_together.axmodel","axmodel_num":2,"filename_post_axmodel":"m/a_post.axmodel","sliding_window":{"x":[]},"unknown":null}`), []byte(`{}`))
	// Hugging Face's Qwen3-VL config.json beside a_vision.axmodel, sane and hostile.
	f.Add([]byte(`{"model_type":"qwen3_vl","image_token_id":151655,"vision_config":{"patch_size":16,"temporal_patch_size":2,"spatial_merge_size":2}}`), []byte(``))
	f.Add([]byte(`{"model_type":"qwen3_vl","vision_config":{"patch_size":0,"temporal_patch_size":-2,"spatial_merge_size":1e9}}`), []byte(``))
	f.Add([]byte(`{"model_type":"qwen3_vl","vision_config":[1,2]}`), []byte(``))
	f.Fuzz(func(t *testing.T, config, post []byte) {
		dir := t.TempDir()
		md := filepath.Join(dir, "m")
		if err := os.MkdirAll(md, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a_p128_l0_together.axmodel", "a_p128_l1_together.axmodel", "a_post.axmodel", "a_vision.axmodel"} {
			if err := os.WriteFile(filepath.Join(md, name), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(md, EmbedFile), make([]byte, 16), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), config, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "post_config.json"), post, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := ReadPackage(dir)
		if err == nil && (len(p.Layers) == 0 || p.Post == "" || p.Embed == "") {
			t.Fatalf("package without files: %+v", p)
		}
		if err == nil && p.Defaults.validate() != nil {
			t.Fatalf("defaults %+v do not validate", p.Defaults)
		}
		if err == nil && p.Patches != nil && (p.Patches.Patch < 1 || p.Patches.Temporal < 1 || p.Patches.Merge < 1 || p.VisionInput != VisionPatches) {
			t.Fatalf("patch layout %+v accepted", *p.Patches)
		}
		Detect(dir)
	})
}

// FuzzStopMatcher: whatever the pieces and stop strings, no stop string is
// ever passed on, the output is a prefix of the input, and without a stop
// the whole input comes out after Flush.
func FuzzStopMatcher(f *testing.F) {
	f.Add("hello END world", "END", "\n", 3)
	f.Add("ééé\n\nx", "\n\n", "é", 1)
	f.Add("aaaa", "aa", "", 2)
	f.Fuzz(func(t *testing.T, text, stop1, stop2 string, step int) {
		if step < 1 || step > 16 {
			step = 1
		}
		stops := []string{stop1, stop2}
		m := NewStopMatcher(stops)
		var out strings.Builder
		hit := false
		for i := 0; i < len(text) && !hit; i += step {
			piece, h := m.Feed(text[i:min(i+step, len(text))])
			out.WriteString(piece)
			hit = h
		}
		if !hit {
			out.WriteString(m.Flush(""))
		}
		got := out.String()
		if !strings.HasPrefix(text, got) {
			t.Fatalf("output %q is not a prefix of %q", got, text)
		}
		for _, s := range stops {
			if s != "" && strings.Contains(got, s) {
				t.Fatalf("output %q holds stop %q", got, s)
			}
		}
		found := false
		for _, s := range stops {
			found = found || s != "" && strings.Contains(text, s)
		}
		if !hit && (found || got != text) {
			t.Fatalf("no stop reported for %q with stops %q: output %q", text, stops, got)
		}
	})
}

// FuzzPatchify: any layout and image size (a patch layout comes from a package's
// config.json) is either cut into exactly the destination or refused; never a panic.
func FuzzPatchify(f *testing.F) {
	f.Add(16, 2, 2, 32, 64, 32*64*3)
	f.Add(4, 1, 3, 24, 12, 24*12*3)
	f.Add(0, 2, 2, 32, 32, 10)
	f.Add(1<<30, 1<<30, 1<<30, 1<<30, 1<<30, 3)
	f.Add(-16, 2, 2, -32, 32, 0)
	f.Fuzz(func(t *testing.T, patch, temporal, merge, w, h, imgLen int) {
		if imgLen < 0 || imgLen > 1<<16 {
			return
		}
		l := PatchLayout{Patch: patch, Temporal: temporal, Merge: merge}
		img := make([]byte, imgLen)
		n := 0
		if temporal > 0 && temporal <= 16 {
			n = imgLen * temporal
		}
		if err := l.Patchify(make([]byte, n), img, w, h); err == nil && (imgLen != w*h*3 || n != imgLen*temporal) {
			t.Fatalf("%+v %d×%d: %d image bytes into %d accepted", l, w, h, imgLen, n)
		}
	})
}
