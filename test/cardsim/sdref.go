package cardsim

import (
	"fmt"
	"math"
)

// Go references of the SD and vision ops, bit for bit equal to csrc/ops.c (see README "Ops").

const posSalt = 0x504f5321

func abs32(x float32) float32 { return float32(math.Abs(float64(x))) }

func floor32(x float32) float32 { return float32(math.Floor(float64(x))) }

func tri(u float32) float32 { return float32(4*abs32(u-floor32(u)-0.5)) - 1 }

func softsign1(h float32) float32 { return h / (1 + abs32(h)) }

// TextEncode is the simulated text encoder: input_ids [77] → last_hidden_state [77][768].
func (s *SDSpec) TextEncode(ids []int32) ([]float32, error) {
	const f, vocab = 768, 49408
	seed := s.Seed + 1
	for t, id := range ids {
		if id < 0 || id >= vocab {
			return nil, fmt.Errorf("cardsim: input_ids[%d] = %d is outside the vocabulary", t, id)
		}
	}
	out := make([]float32, len(ids)*f)
	acc := make([]float32, f)
	for t, id := range ids {
		for i := 0; i < f; i++ {
			acc[i] += Unit(seed, uint64(id)*f+uint64(i))
			out[t*f+i] = acc[i]/float32(t+1) + float32(0.25*Unit(seed^posSalt, uint64(t*f+i)))
		}
	}
	return out, nil
}

// Image runs the whole SD pipeline in Go from the op twins above and the formulas of
// research/sd-lcm.md written out again (the LCM step, DDPM add_noise for img2img, the
// posterior sample, latent/0.18215, the 8-bit rounding) and returns the planar 8-bit RGB
// pixels a pipeline on the simulated card must give exactly. ids are the 77 token ids;
// steps the timesteps that run; alphasCumprod the scheduler's table by timestep; noise fills
// its argument with the next standard normals of the request's generator; init, for
// img2img, the init image as planar RGB in [-1, 1].
func (s *SDSpec) Image(ids []int32, steps []int, alphasCumprod []float32, noise func([]float32), init []float32) ([]uint8, error) {
	ehs, err := s.TextEncode(ids)
	if err != nil {
		return nil, err
	}
	n := 4 * (s.Width / 8) * (s.Height / 8)
	randn := func() []float32 { v := make([]float32, n); noise(v); return v }
	ac := alphasCumprod
	sq := func(v float64) float32 { return float32(math.Sqrt(v)) }
	var x []float32
	if init == nil {
		x = randn()
	} else {
		mom := s.VAEEncode(init)
		eps := randn()
		x0 := make([]float32, n)
		for i := range x0 {
			std := float32(math.Exp(float64(float32(0.5 * min(max(mom[n+i], -30), 20)))))
			x0[i] = float32((mom[i] + float32(std*eps[i])) * 0.18215)
		}
		z := randn()
		a := float64(ac[steps[0]])
		x = make([]float32, n)
		for i := range x {
			x[i] = float32(sq(a)*x0[i]) + float32(sq(1-a)*z[i])
		}
	}
	for k, ts := range steps {
		temb := s.TimeEmbedding(ts)
		eps := s.UNet(x, temb, ehs)
		a := float64(ac[ts])
		st := 10 * float64(ts)
		cSkip, cOut := float32(0.25/(st*st+0.25)), float32(st/math.Sqrt(st*st+0.25))
		var z []float32
		if k < len(steps)-1 {
			z = randn()
		}
		for i := range x {
			x0 := float32(x[i]-float32(sq(1-a)*eps[i])) / sq(a)
			d := float32(cOut*x0) + float32(cSkip*x[i])
			if z == nil {
				x[i] = d
			} else {
				ap := float64(ac[steps[k+1]])
				x[i] = float32(sq(ap)*d) + float32(sq(1-ap)*z[i])
			}
		}
	}
	for i := range x {
		x[i] /= 0.18215
	}
	img := s.VAEDecode(x)
	px := make([]uint8, len(img))
	for i, v := range img {
		v = float32(v/2) + 0.5
		v = min(max(v, 0), 1)
		px[i] = uint8(math.RoundToEven(float64(float32(v * 255))))
	}
	return px, nil
}

// UNet is the simulated UNet: sample [4][h][w] (h, w = Height/8, Width/8), time embedding
// [1280], encoder_hidden_states [77][768] → out_sample [4][h][w].
func (s *SDSpec) UNet(x, temb, ehs []float32) []float32 {
	h, w := s.Height/8, s.Width/8
	const seqLen, f = 77, 768
	var sv [8]float32
	for k := range sv {
		var acc float32
		for t := 0; t < seqLen; t++ {
			acc += ehs[t*f+k]
		}
		sv[k] = acc / seqLen
	}
	var tau float32
	for _, v := range temb {
		tau += v
	}
	tau /= float32(len(temb))
	gain := 1 + float32(0.05*tau)
	out := make([]float32, len(x))
	for c := 0; c < 4; c++ {
		fx := 1 + int(float32(abs32(sv[c])*8))%7
		fy := 1 + int(float32(abs32(sv[c+4])*8))%7
		for y := 0; y < h; y++ {
			for xx := 0; xx < w; xx++ {
				o := (c*h+y)*w + xx
				u := float32(fx*xx)/float32(w) + float32(fy*y)/float32(h) + sv[c]
				out[o] = x[o] - float32(tri(u)*gain)
			}
		}
	}
	return out
}

// VAEDecode is the simulated VAE decoder: latent [4][h][w] → image [3][8h][8w] in (−1, 1).
func (s *SDSpec) VAEDecode(z []float32) []float32 {
	h, w := s.Height/8, s.Width/8
	H, W := 8*h, 8*w
	seed := s.Seed + 3
	var m [12]float32
	for i := range m {
		m[i] = Unit(seed, uint64(i))
	}
	img := make([]float32, 3*H*W)
	for c := 0; c < 3; c++ {
		for y := 0; y < H; y++ {
			for x := 0; x < W; x++ {
				var v float32
				for k := 0; k < 4; k++ {
					v += float32(m[c*4+k] * z[(k*h+y/8)*w+x/8])
				}
				img[(c*H+y)*W+x] = float32(0.9*softsign1(float32(0.5*v))) + float32(0.1*tri(float32(x+y)/32))
			}
		}
	}
	return img
}

// VAEEncode is the simulated VAE encoder: image [3][H][W] → moments [8][H/8][W/8].
func (s *SDSpec) VAEEncode(img []float32) []float32 {
	h, w := s.Height/8, s.Width/8
	H, W := 8*h, 8*w
	seed := s.Seed + 4
	var m [12]float32
	for i := range m {
		m[i] = Unit(seed, uint64(i))
	}
	lat := make([]float32, 8*h*w)
	for by := 0; by < h; by++ {
		for bx := 0; bx < w; bx++ {
			var mc [3]float32
			for c := 0; c < 3; c++ {
				var acc float32
				for dy := 0; dy < 8; dy++ {
					for dx := 0; dx < 8; dx++ {
						acc += img[(c*H+by*8+dy)*W+bx*8+dx]
					}
				}
				mc[c] = acc / 64
			}
			for k := 0; k < 4; k++ {
				var v float32
				for c := 0; c < 3; c++ {
					v += float32(m[k*3+c] * mc[c])
				}
				lat[(k*h+by)*w+bx] = v
				lat[((4+k)*h+by)*w+bx] = -6 + float32(0.1*v)
			}
		}
	}
	return lat
}

// VisionEncode is the simulated vision encoder: an NHWC uint8 image of Vision.Width ×
// Vision.Height → Grid² rows of Hidden float32 values (round with FloatToBF16 for a bf16
// output). It returns nil without a vision encoder.
func (s *LLMSpec) VisionEncode(px []byte) []float32 {
	v := s.Vision
	if v == nil || len(px) != v.Width*v.Height*3 {
		return nil
	}
	g, d := v.Grid, s.Hidden
	seed := s.Seed + 0x20000
	ph, pw := v.Height/g, v.Width/g
	out := make([]float32, g*g*d)
	for ty := 0; ty < g; ty++ {
		for tx := 0; tx < g; tx++ {
			tok := ty*g + tx
			var sum [3]uint32
			for y := ty * ph; y < (ty+1)*ph; y++ {
				for x := tx * pw; x < (tx+1)*pw; x++ {
					for c := 0; c < 3; c++ {
						sum[c] += uint32(px[(y*v.Width+x)*3+c])
					}
				}
			}
			var f [3]float32
			for c := range f {
				f[c] = float32(sum[c]) / float32(ph*pw*255)
			}
			for i := 0; i < d; i++ {
				acc := float32(Unit(seed, uint64(3*d+tok*d+i)) * 0.5)
				for c := 0; c < 3; c++ {
					acc += float32(Unit(seed, uint64(i*3+c)) * f[c])
				}
				out[tok*d+i] = softsign4(acc)
			}
		}
	}
	return out
}
