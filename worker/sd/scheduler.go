package sd

import (
	"math"
	"sync"
)

// LCM scheduler constants (diffusers LCMScheduler, research/sd-lcm.md §2).
const (
	// TrainTimesteps is num_train_timesteps.
	TrainTimesteps = 1000
	// LatentScale is the VAE scaling factor: the decoder takes latent/0.18215.
	LatentScale = 0.18215
	sigmaData   = 0.5
	tScaling    = 10
)

// Timesteps is the 4-step LCM schedule; row i of time_input_txt2img.npy is
// the time embedding of Timesteps[i].
var Timesteps = [4]int{999, 759, 499, 259}

var alphas = sync.OnceValue(computeAlphasCumprod)

// AlphasCumprod returns alphas_cumprod of the scaled_linear schedule
// (beta 0.00085..0.012) exactly as torch computes it in float32:
// linspace(sqrt(0.00085), sqrt(0.012), 1000) the two-sided way, squared,
// 1 − beta, and a running product accumulated in float64 whose elements are
// rounded to float32.
func AlphasCumprod() *[TrainTimesteps]float32 { return alphas() }

func computeAlphasCumprod() *[TrainTimesteps]float32 {
	var out [TrainTimesteps]float32
	start, end := float32(math.Sqrt(0.00085)), float32(math.Sqrt(0.012))
	step := (end - start) / float32(TrainTimesteps-1)
	prod := 1.0
	for i := range out {
		var v float32
		if i < TrainTimesteps/2 {
			v = start + float32(step*float32(i))
		} else {
			v = end - float32(step*float32(TrainTimesteps-1-i))
		}
		beta := float32(v * v)
		prod *= float64(1 - beta)
		out[i] = float32(prod)
	}
	return &out
}

// Scalings returns the LCM boundary-condition scalings of timestep t:
// c_skip = σ²/((10t)² + σ²), c_out = 10t/sqrt((10t)² + σ²) with σ = 0.5.
func Scalings(t int) (cSkip, cOut float64) {
	s := float64(t) * tScaling
	cSkip = sigmaData * sigmaData / (s*s + sigmaData*sigmaData)
	cOut = s / math.Sqrt(s*s+sigmaData*sigmaData)
	return cSkip, cOut
}

// Schedule returns the timesteps of an LCM run with steps steps (diffusers
// set_timesteps with original_inference_steps 50) when every one of them has
// a row in the package's time table: 1 → [999], 2 → [999 499],
// 4 → [999 759 499 259]. It returns nil for other step counts.
func Schedule(steps int) []int {
	if steps < 1 || steps > 50 {
		return nil
	}
	const k = TrainTimesteps / 50
	ts := make([]int, steps)
	for i := range ts {
		idx := int(math.Floor(float64(i) * 50 / float64(steps)))
		ts[i] = TrainTimesteps - 1 - idx*k
		if timeRow(ts[i]) < 0 {
			return nil
		}
	}
	return ts
}

// SupportedSteps lists the step counts Schedule accepts.
func SupportedSteps() []int {
	var s []int
	for n := 1; n <= 50; n++ {
		if Schedule(n) != nil {
			s = append(s, n)
		}
	}
	return s
}

// timeRow is the row of the txt2img time table for timestep t, or -1.
func timeRow(t int) int {
	for i, v := range Timesteps {
		if v == t {
			return i
		}
	}
	return -1
}

// stepCoefs are the float32 factors of one LCM step.
type stepCoefs struct {
	sqrtA, sqrtB         float32 // sqrt(ᾱ_t), sqrt(1−ᾱ_t)
	cSkip, cOut          float32
	sqrtAPrev, sqrtBPrev float32 // of the next timestep; unused on the last step
	last                 bool
}

func coefs(t, prev int, last bool) stepCoefs {
	ac := AlphasCumprod()
	a := float64(ac[t])
	cs, co := Scalings(t)
	c := stepCoefs{
		sqrtA: float32(math.Sqrt(a)), sqrtB: float32(math.Sqrt(1 - a)),
		cSkip: float32(cs), cOut: float32(co), last: last,
	}
	if !last {
		ap := float64(ac[prev])
		c.sqrtAPrev, c.sqrtBPrev = float32(math.Sqrt(ap)), float32(math.Sqrt(1-ap))
	}
	return c
}

// lcmStep updates x in place from the UNet's noise prediction eps:
// x0 = (x − sqrt(1−ᾱ)·eps)/sqrt(ᾱ), denoised = c_out·x0 + c_skip·x, and
// unless last, x = sqrt(ᾱ_prev)·denoised + sqrt(1−ᾱ_prev)·noise.
// Every operation is rounded to float32 on its own (no FMA).
func lcmStep(x, eps, noise []float32, c stepCoefs) {
	eps = eps[:len(x)]
	if c.last {
		for i, xi := range x {
			x0 := float32(xi-float32(c.sqrtB*eps[i])) / c.sqrtA
			x[i] = float32(c.cOut*x0) + float32(c.cSkip*xi)
		}
		return
	}
	noise = noise[:len(x)]
	for i, xi := range x {
		x0 := float32(xi-float32(c.sqrtB*eps[i])) / c.sqrtA
		d := float32(c.cOut*x0) + float32(c.cSkip*xi)
		x[i] = float32(c.sqrtAPrev*d) + float32(c.sqrtBPrev*noise[i])
	}
}

// addNoise is the DDPM forward process: x = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·noise.
func addNoise(x, x0, noise []float32, t int) {
	a := float64(AlphasCumprod()[t])
	sa, sb := float32(math.Sqrt(a)), float32(math.Sqrt(1-a))
	for i := range x {
		x[i] = float32(sa*x0[i]) + float32(sb*noise[i])
	}
}
