package sd

import "math"

// noiseSource draws standard normal float32 tensors the way torch's CPU
// generator does for torch.randn(float32) (research/sd-lcm.md §3): MT19937
// seeded with the low 32 bits of the seed, uniforms (u32 & 0xFFFFFF)·2⁻²⁴,
// Box–Muller over blocks of 16 (the last 16 redrawn when the size is not a
// multiple of 16). Parity with real torch is unconfirmed (its x86 AVX2 path
// uses other math functions); determinism for a seed is what kiln relies on.
type noiseSource struct {
	mt  [624]uint32
	idx int
}

func (g *noiseSource) seed(s uint64) {
	g.mt[0] = uint32(s)
	for i := 1; i < len(g.mt); i++ {
		g.mt[i] = 1812433253*(g.mt[i-1]^(g.mt[i-1]>>30)) + uint32(i)
	}
	g.idx = len(g.mt)
}

func (g *noiseSource) next() uint32 {
	const n, m = 624, 397
	if g.idx >= n {
		for i := 0; i < n; i++ {
			y := g.mt[i]&0x80000000 | g.mt[(i+1)%n]&0x7fffffff
			v := g.mt[(i+m)%n] ^ y>>1
			if y&1 != 0 {
				v ^= 0x9908b0df
			}
			g.mt[i] = v
		}
		g.idx = 0
	}
	y := g.mt[g.idx]
	g.idx++
	y ^= y >> 11
	y ^= y << 7 & 0x9d2c5680
	y ^= y << 15 & 0xefc60000
	y ^= y >> 18
	return y
}

func (g *noiseSource) uniform() float32 {
	return float32(g.next()&0xFFFFFF) * (1.0 / (1 << 24))
}

// randn fills d with standard normal values. len(d) must be at least 16.
func (g *noiseSource) randn(d []float32) {
	n := len(d)
	for i := range d {
		d[i] = g.uniform()
	}
	for i := 0; i+16 <= n; i += 16 {
		normal16(d[i : i+16])
	}
	if n%16 != 0 {
		tail := d[n-16:]
		for i := range tail {
			tail[i] = g.uniform()
		}
		normal16(tail)
	}
}

func normal16(d []float32) {
	for j := 0; j < 8; j++ {
		u1 := 1 - d[j]
		u2 := d[j+8]
		r := float32(math.Sqrt(float64(-2 * float32(math.Log(float64(u1))))))
		theta := float32(2 * math.Pi * float64(u2))
		s, c := math.Sincos(float64(theta))
		d[j] = float32(r * float32(c))
		d[j+8] = float32(r * float32(s))
	}
}

// Noise returns the standard normal source Generate uses for a request
// with this seed: each call fills d with the next draws, in Generate's
// order (txt2img: the initial latent, then the noise after every step but
// the last). References and tests replay a request with it.
func Noise(seed uint64) func(d []float32) {
	g := new(noiseSource)
	g.seed(seed)
	return g.randn
}
