package cardsim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// SDSpec describes a simulated Stable Diffusion 1.5 LCM package shaped as the vendor publishes
// it (AXERA-TECH/sd1.5-lcm.axera, HuggingFace AXERA-TECH/lcm-lora-sdv1-5 models/ and
// models_1024x768/; research/sd-lcm.md §1; docs/sd.md): the vendor's file layout, tensor names,
// input order and dtypes.
type SDSpec struct {
	Name          string // package folder name, e.g. "sd15-lcm"
	Width, Height int    // image size (512×512); latents are Width/8 × Height/8
	Seed          uint64 // text encoder Seed+1, unet Seed+2, vae decoder Seed+3, vae encoder Seed+4
	// VAEEncoder adds vae_encoder.axmodel and time_input_img2img.npy (img2img).
	VAEEncoder bool
	// TokenizerDir, when set, is a folder whose files are copied into tokenizer/.
	TokenizerDir string
	// CMM claims of the four models.
	TextEncoderBytes, UNetBytes, VAEDecoderBytes, VAEEncoderBytes int64
	// Edit, when set, changes each model's spec (file is its path in the package, as in
	// ModelSpecs) before it is written: tests make packages that differ from the vendor's
	// (other tensor names, another input order).
	Edit func(file string, m *ModelSpec)
}

// SD15LCM is the 512×512 AXERA-TECH lcm-lora-sdv1-5 layout with img2img.
func SD15LCM() SDSpec {
	return SDSpec{
		Name: "sd15-lcm", Width: 512, Height: 512, Seed: 0x53443135, VAEEncoder: true,
		TextEncoderBytes: 235 << 20, UNetBytes: 1650 << 20, VAEDecoderBytes: 95 << 20, VAEEncoderBytes: 65 << 20,
	}
}

// SD15LCM1024x768 is the vendor's models_1024x768 variant: images 768 wide and 1024 high
// (launcher.py --isize 1024x768 is <height>x<width>; ax-llm sd15_image_generator.cpp names it
// "768x1024", width×height, and reads the size from the VAE decoder's [1,3,H,W] output), txt2img
// only (no vae_encoder.axmodel, no time_input_img2img.npy).
func SD15LCM1024x768() SDSpec {
	return SDSpec{
		Name: "sd15-lcm-1024x768", Width: 768, Height: 1024, Seed: 0x53443136,
		TextEncoderBytes: 235 << 20, UNetBytes: 1700 << 20, VAEDecoderBytes: 110 << 20,
	}
}

// Timesteps are the LCM 4-step schedule; row i of time_input_txt2img.npy belongs to Timesteps[i].
var Timesteps = [4]int{999, 759, 499, 259}

// UNetTimeInput is the name of the UNet's time-embedding input: the output of the SiLU after
// time_embedding, promoted to a graph input when the export removed the timestep input t.
const UNetTimeInput = "/down_blocks.0/resnets.0/act_1/Mul_output_0"

// TimeEmbedding returns the 1280 values the generator writes for timestep t:
// Unit(Seed^0x54494d45, t*1280+j) * (0.5 + t/1000) as float32.
func (s *SDSpec) TimeEmbedding(t int) []float32 {
	row := make([]float32, 1280)
	scale := float32(0.5) + float32(t)/1000
	for j := range row {
		row[j] = Unit(s.Seed^0x54494d45, uint64(t*1280+j)) * scale
	}
	return row
}

// ModelSpecs returns the package's model files (relative path → spec).
func (s *SDSpec) ModelSpecs() map[string]*ModelSpec {
	h, w := s.Height/8, s.Width/8
	m := map[string]*ModelSpec{
		"text_encoder/sd15_text_encoder_sim.axmodel": {
			Kind: KindSDText, Name: "sd15_text_encoder_sim", Compiler: "5.1-kilnsim", WeightBytes: s.TextEncoderBytes, Groups: 1,
			Params:  []Param{{"seed", int64(s.Seed + 1)}, {"hidden", 768}, {"vocab", 49408}},
			Inputs:  []Tensor{{"input_ids", Int32, [][]int{{1, 77}}}},
			Outputs: []Tensor{{"last_hidden_state", FP32, [][]int{{1, 77, 768}}}},
		},
		"unet.axmodel": {
			Kind: KindSDUNet, Name: "unet", Compiler: "5.1-kilnsim", WeightBytes: s.UNetBytes, Groups: 1,
			Params: []Param{{"seed", int64(s.Seed + 2)}},
			// The export (model_convert/sd15_export_onnx.py) traces (sample, t,
			// encoder_hidden_states), removes t and appends the time row last.
			Inputs: []Tensor{
				{"sample", FP32, [][]int{{1, 4, h, w}}},
				{"encoder_hidden_states", FP32, [][]int{{1, 77, 768}}},
				{UNetTimeInput, FP32, [][]int{{1, 1280}}},
			},
			Outputs: []Tensor{{"out_sample", FP32, [][]int{{1, 4, h, w}}}},
		},
		"vae_decoder.axmodel": {
			Kind: KindSDVAEDecoder, Name: "vae_decoder", Compiler: "5.1-kilnsim", WeightBytes: s.VAEDecoderBytes, Groups: 1,
			Params:  []Param{{"seed", int64(s.Seed + 3)}},
			Inputs:  []Tensor{{"x", FP32, [][]int{{1, 4, h, w}}}},
			Outputs: []Tensor{{"sample", FP32, [][]int{{1, 3, s.Height, s.Width}}}},
		},
	}
	if s.VAEEncoder {
		m["vae_encoder.axmodel"] = &ModelSpec{
			Kind: KindSDVAEEncoder, Name: "vae_encoder", Compiler: "5.1-kilnsim", WeightBytes: s.VAEEncoderBytes, Groups: 1,
			Params:  []Param{{"seed", int64(s.Seed + 4)}},
			Inputs:  []Tensor{{"image_sample", FP32, [][]int{{1, 3, s.Height, s.Width}}}},
			Outputs: []Tensor{{"latent_sample", FP32, [][]int{{1, 8, h, w}}}},
		}
	}
	return m
}

// WriteSDPackage writes the package into dir (created if needed):
//
//	text_encoder/sd15_text_encoder_sim.axmodel, text_encoder/config.json
//	unet.axmodel, vae_decoder.axmodel, vae_encoder.axmodel (with VAEEncoder)
//	time_input_txt2img.npy           float32 (4, 1280): rows for t = 999, 759, 499, 259
//	time_input_img2img.npy           float32 (4, 1280): rows for t = 499, 259, then two zero rows
//	tokenizer/…                      copies of TokenizerDir's files, when set
func WriteSDPackage(dir string, s SDSpec) error {
	if s.Width < 8 || s.Height < 8 || s.Width%8 != 0 || s.Height%8 != 0 {
		return errors.New("cardsim: SD width and height must be positive multiples of 8")
	}
	if err := os.MkdirAll(filepath.Join(dir, "text_encoder"), 0o755); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	for name, m := range s.ModelSpecs() {
		if s.Edit != nil {
			s.Edit(name, m)
		}
		b, err := m.Marshal()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("cardsim: %w", err)
		}
	}
	txt := make([]float32, 0, 4*1280)
	for _, t := range Timesteps {
		txt = append(txt, s.TimeEmbedding(t)...)
	}
	if err := WriteNPY(filepath.Join(dir, "time_input_txt2img.npy"), []int{4, 1280}, txt); err != nil {
		return err
	}
	if s.VAEEncoder {
		img := make([]float32, 4*1280)
		copy(img, txt[2*1280:]) // rows for 499 and 259; rows 2 and 3 stay zero as in the real file
		if err := WriteNPY(filepath.Join(dir, "time_input_img2img.npy"), []int{4, 1280}, img); err != nil {
			return err
		}
	}
	// The vendor's python/models/text_encoder/config.json: the stale bos/eos/pad ids of the
	// model config (the tokenizer's are 49406/49407) and torch_dtype float16, which ax-llm
	// reads as the two-byte type of 2-byte tensors.
	te := map[string]any{
		"architectures": []string{"CLIPTextModel"}, "model_type": "clip_text_model", "hidden_size": 768,
		"intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "hidden_act": "quick_gelu",
		"max_position_embeddings": 77, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
		"projection_dim": 768, "layer_norm_eps": 1e-05, "torch_dtype": "float16",
	}
	if err := writeJSON(filepath.Join(dir, "text_encoder", "config.json"), te); err != nil {
		return err
	}
	if s.TokenizerDir != "" {
		if err := copyDir(s.TokenizerDir, filepath.Join(dir, "tokenizer")); err != nil {
			return err
		}
	}
	return nil
}

// WriteNPY writes a little-endian float32 C-order .npy file (format 1.0, 128-byte preamble
// when the header fits, as numpy writes it).
func WriteNPY(path string, shape []int, data []float32) error {
	n := 1
	dims := ""
	for _, d := range shape {
		n *= d
		dims += fmt.Sprintf("%d, ", d)
	}
	if len(shape) > 1 {
		dims = dims[:len(dims)-2]
	} else if len(shape) == 1 {
		dims = dims[:len(dims)-1]
	}
	if n != len(data) {
		return fmt.Errorf("cardsim: npy shape %v holds %d values, got %d", shape, n, len(data))
	}
	hdr := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims)
	total := 10 + len(hdr) + 1
	pad := (64 - total%64) % 64
	hdr += string(bytes.Repeat([]byte{' '}, pad)) + "\n"
	var b bytes.Buffer
	b.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&b, binary.LittleEndian, uint16(len(hdr)))
	b.WriteString(hdr)
	binary.Write(&b, binary.LittleEndian, data)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("cardsim: %w", err)
	}
	return nil
}
