package sd

import (
	"math"
	"testing"
)

func TestHalfRoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := f16ToF32(uint16(h))
		if math.IsNaN(float64(f)) {
			if got := f32ToF16(f); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Fatalf("NaN %#04x → %#04x", h, got)
			}
			continue
		}
		if got := f32ToF16(f); got != uint16(h) {
			t.Fatalf("%#04x → %v → %#04x", h, f, got)
		}
	}
	for _, c := range []struct {
		f float32
		h uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65520, 0x7c00}, {1e9, 0x7c00},
		{5.9604645e-08, 0x0001}, {2.9802322e-08, 0x0000}, {2.9802326e-08, 0x0001},
		{1.0004883, 0x3c00}, {1.0014648, 0x3c02}, {0.33333334, 0x3555},
	} {
		if got := f32ToF16(c.f); got != c.h {
			t.Errorf("f32ToF16(%v) = %#04x, want %#04x", c.f, got, c.h)
		}
	}
	if got := f32ToBF16(1.00390625); got != 0x3f80 { // a tie rounds to even
		t.Errorf("f32ToBF16 tie = %#04x", got)
	}
	if got := f32ToBF16(1.01171875); got != 0x3f82 {
		t.Errorf("f32ToBF16 tie up = %#04x", got)
	}
}

func TestPortCodec(t *testing.T) {
	v := []float32{0, 1, -0.5, 3.25, 1e-3}
	for _, k := range []elemKind{kindF32, kindF16, kindBF16} {
		p := &port{kind: k, elems: len(v), bytes: make([]byte, len(v)*k.size())}
		p.encode(v)
		got := make([]float32, len(v))
		p.decode(got)
		for i := range v {
			if d := math.Abs(float64(got[i] - v[i])); d > 1e-2*math.Abs(float64(v[i]))+1e-6 {
				t.Errorf("%s: %v came back as %v", k, v[i], got[i])
			}
		}
	}
}
