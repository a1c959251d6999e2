package sd

import (
	"math"
	"slices"
	"strconv"
	"testing"
)

// The check values of research/sd-lcm.md §2: alphas_cumprod bits (as torch
// and AXLLM's get_alpha_cumprod_exact have them), and sqrt(ᾱ), sqrt(1−ᾱ),
// c_skip, c_out to the digits the table prints.
func TestAlphasCumprodCheckValues(t *testing.T) {
	ac := AlphasCumprod()
	for _, c := range []struct {
		t            int
		bits         uint32
		value        string
		sqrtA, sqrtB string
		cSkip, cOut  string
	}{
		{999, 0x3b98b3b6, "0.00466009509", "0.0682649", "0.9976672", "2.505008e-09", "0.999999999"},
		{759, 0x3d55dd2f, "0.0522128902", "0.2285014", "0.9735436", "4.339667e-09", "0.999999998"},
		{499, 0x3e8e2ab0, "0.27766943", "0.5269435", "0.8499003", "1.004012e-08", "0.999999995"},
		{259, 0x3f28b29a, "0.658975244", "0.8117729", "0.5839732", "3.726838e-08", "0.999999981"},
		{0, 0x3f7fc84b, "0.999149978", "0.9995749", "0.0291551", "", ""},
	} {
		a := ac[c.t]
		if got := math.Float32bits(a); got != c.bits {
			t.Errorf("alphas_cumprod[%d] bits = %#08x, want %#08x", c.t, got, c.bits)
		}
		if got := digits(float64(a), c.value); got != c.value {
			t.Errorf("alphas_cumprod[%d] = %s, want %s", c.t, got, c.value)
		}
		if got := digits(math.Sqrt(float64(a)), c.sqrtA); got != c.sqrtA {
			t.Errorf("sqrt(alphas_cumprod[%d]) = %s, want %s", c.t, got, c.sqrtA)
		}
		if got := digits(math.Sqrt(1-float64(a)), c.sqrtB); got != c.sqrtB {
			t.Errorf("sqrt(1-alphas_cumprod[%d]) = %s, want %s", c.t, got, c.sqrtB)
		}
		if c.cSkip == "" {
			continue
		}
		cs, co := Scalings(c.t)
		if got := digits(cs, c.cSkip); got != c.cSkip {
			t.Errorf("c_skip(%d) = %s, want %s", c.t, got, c.cSkip)
		}
		if got := digits(co, c.cOut); got != c.cOut {
			t.Errorf("c_out(%d) = %s, want %s", c.t, got, c.cOut)
		}
	}
	// Monotone and in (0, 1).
	for i := 1; i < len(ac); i++ {
		if !(ac[i] < ac[i-1] && ac[i] > 0) {
			t.Fatalf("alphas_cumprod[%d] = %v after %v", i, ac[i], ac[i-1])
		}
	}
}

// digits formats v with as many significant digits as want has.
func digits(v float64, want string) string {
	n := 0
	lead := true
	for _, r := range want {
		if r == 'e' {
			break
		}
		if r >= '0' && r <= '9' {
			if r == '0' && lead {
				continue
			}
			lead = false
			n++
		}
	}
	f := byte('f')
	if slices.Contains([]byte(want), 'e') {
		return strconv.FormatFloat(v, 'e', n-1, 64)
	}
	// fixed notation with the same number of decimals
	dec := len(want) - slices.Index([]byte(want), '.') - 1
	return strconv.FormatFloat(v, f, dec, 64)
}

func TestSchedule(t *testing.T) {
	for n, want := range map[int][]int{1: {999}, 2: {999, 499}, 4: {999, 759, 499, 259}, 3: nil, 5: nil, 0: nil, 51: nil} {
		if got := Schedule(n); !slices.Equal(got, want) {
			t.Errorf("Schedule(%d) = %v, want %v", n, got, want)
		}
	}
	if got := SupportedSteps(); !slices.Equal(got, []int{1, 2, 4}) {
		t.Errorf("SupportedSteps = %v", got)
	}
}

func TestLCMStepLast(t *testing.T) {
	// On the last step the result is the boundary-condition x0 estimate;
	// with eps = the noise that made x from x0, it gives x0 back (to
	// float32 rounding).
	c := coefs(259, 259, true)
	x0 := []float32{0.5, -1.25, 2}
	eps := []float32{0.1, -0.3, 1.5}
	x := make([]float32, 3)
	addNoise(x, x0, eps, 259)
	lcmStep(x, eps, nil, c)
	for i := range x {
		if math.Abs(float64(x[i]-x0[i])) > 1e-5 {
			t.Fatalf("step %d: got %v, want %v", i, x[i], x0[i])
		}
	}
}
