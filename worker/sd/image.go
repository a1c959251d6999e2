package sd

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // init images may be JPEG
	"image/png"
	"math"
)

// ImageLimits bound the init images of img2img.
type ImageLimits struct {
	// MaxPixels is the largest width×height accepted (default 16,777,216 =
	// 4096×4096). Decoding allocates about 4 bytes per pixel.
	MaxPixels int
	// MaxSide is the largest width or height (default 8192).
	MaxSide int
	// MaxAspect is the largest ratio of the longer to the shorter side
	// (default 4): the image is stretched to the model's size, and a
	// stretch beyond this is refused.
	MaxAspect float64
}

func (l ImageLimits) withDefaults() ImageLimits {
	if l.MaxPixels <= 0 {
		l.MaxPixels = 4096 * 4096
	}
	if l.MaxSide <= 0 {
		l.MaxSide = 8192
	}
	if l.MaxAspect <= 0 {
		l.MaxAspect = 4
	}
	return l
}

// decodeInit decodes a PNG or JPEG init image, checks it against l, resizes
// it to w×h (bicubic, antialiased when shrinking, as Pillow's resize), rounds
// to 8 bits as Pillow does, and writes it planar RGB in [−1, 1] into dst
// (3·w·h values).
func decodeInit(data []byte, w, h int, l ImageLimits, dst []float32) error {
	l = l.withDefaults()
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return &RequestError{Field: "init_image", Err: ErrBadImage, Msg: fmt.Sprintf("not a PNG or JPEG image (%v)", err)}
	}
	if cfg.Width < 1 || cfg.Height < 1 {
		return &RequestError{Field: "init_image", Err: ErrBadImage, Msg: fmt.Sprintf("a %d×%d image has no pixels", cfg.Width, cfg.Height)}
	}
	if cfg.Width > l.MaxSide || cfg.Height > l.MaxSide || cfg.Width*cfg.Height > l.MaxPixels {
		return &RequestError{Field: "init_image", Err: ErrOverLimit, Msg: fmt.Sprintf(
			"%d×%d pixels; at most %d pixels and %d per side allowed", cfg.Width, cfg.Height, l.MaxPixels, l.MaxSide)}
	}
	long, short := max(cfg.Width, cfg.Height), min(cfg.Width, cfg.Height)
	if float64(long) > l.MaxAspect*float64(short) {
		return &RequestError{Field: "init_image", Err: ErrOutOfRange, Msg: fmt.Sprintf(
			"%d×%d has a side ratio of %.2f; at most %g:1 is allowed (the image is stretched to %d×%d)",
			cfg.Width, cfg.Height, float64(long)/float64(short), l.MaxAspect, w, h)}
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return &RequestError{Field: "init_image", Err: ErrBadImage, Msg: fmt.Sprintf("the %s image cannot be decoded (%v)", format, err)}
	}
	if b := img.Bounds(); b.Dx() != cfg.Width || b.Dy() != cfg.Height {
		return &RequestError{Field: "init_image", Err: ErrBadImage, Msg: "the image's size differs from its header"}
	}
	resizeRGB(img, w, h, dst)
	return nil
}

// rowReader returns a function that writes row y of img as RGB floats
// (0..255) into dst.
func rowReader(img image.Image) func(y int, dst []float32) {
	b := img.Bounds()
	switch m := img.(type) {
	case *image.RGBA:
		return func(y int, dst []float32) {
			p := m.Pix[(y-m.Rect.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				dst[3*x], dst[3*x+1], dst[3*x+2] = float32(p[4*x]), float32(p[4*x+1]), float32(p[4*x+2])
			}
		}
	case *image.NRGBA: // alpha dropped, as Pillow's convert("RGB")
		return func(y int, dst []float32) {
			p := m.Pix[(y-m.Rect.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				dst[3*x], dst[3*x+1], dst[3*x+2] = float32(p[4*x]), float32(p[4*x+1]), float32(p[4*x+2])
			}
		}
	case *image.Gray:
		return func(y int, dst []float32) {
			p := m.Pix[(y-m.Rect.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				v := float32(p[x])
				dst[3*x], dst[3*x+1], dst[3*x+2] = v, v, v
			}
		}
	case *image.YCbCr:
		return func(y int, dst []float32) {
			for x := 0; x < b.Dx(); x++ {
				yi, ci := m.YOffset(b.Min.X+x, y), m.COffset(b.Min.X+x, y)
				r, g, bb := color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
				dst[3*x], dst[3*x+1], dst[3*x+2] = float32(r), float32(g), float32(bb)
			}
		}
	default:
		return func(y int, dst []float32) {
			for x := 0; x < b.Dx(); x++ {
				c := color.NRGBAModel.Convert(img.At(b.Min.X+x, y)).(color.NRGBA)
				dst[3*x], dst[3*x+1], dst[3*x+2] = float32(c.R), float32(c.G), float32(c.B)
			}
		}
	}
}

// resizeRGB resamples img to w×h into planar [−1, 1] floats.
func resizeRGB(img image.Image, w, h int, dst []float32) {
	b := img.Bounds()
	sw, sh := b.Dx(), b.Dy()
	hx := newFilter(sw, w)
	vy := newFilter(sh, h)
	row := make([]float32, 3*sw)
	tmp := make([]float32, 3*w*sh) // horizontally resized rows, RGB interleaved
	read := rowReader(img)
	for y := 0; y < sh; y++ {
		read(b.Min.Y+y, row)
		out := tmp[3*w*y:]
		for x := 0; x < w; x++ {
			var r, g, bl float32
			for k, wt := range hx.w[x] {
				s := 3 * (hx.lo[x] + k)
				r += float32(wt * row[s])
				g += float32(wt * row[s+1])
				bl += float32(wt * row[s+2])
			}
			out[3*x], out[3*x+1], out[3*x+2] = clamp8(r), clamp8(g), clamp8(bl)
		}
	}
	plane := w * h
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var r, g, bl float32
			for k, wt := range vy.w[y] {
				s := 3 * (w*(vy.lo[y]+k) + x)
				r += float32(wt * tmp[s])
				g += float32(wt * tmp[s+1])
				bl += float32(wt * tmp[s+2])
			}
			o := y*w + x
			dst[o] = clamp8(r)/255*2 - 1
			dst[plane+o] = clamp8(g)/255*2 - 1
			dst[2*plane+o] = clamp8(bl)/255*2 - 1
		}
	}
}

// clamp8 rounds to an integer in 0..255 (Pillow keeps 8 bits between passes).
func clamp8(v float32) float32 {
	return float32(math.Round(float64(min(max(v, 0), 255))))
}

// filter holds, per output pixel, the first input pixel and the weights.
type filter struct {
	lo []int
	w  [][]float32
}

// newFilter builds Pillow's bicubic (a = −0.5) coefficients for in → out,
// with the support widened by the scale when shrinking.
func newFilter(in, out int) filter {
	scale := float64(in) / float64(out)
	fs := max(scale, 1)
	support := 2 * fs
	f := filter{lo: make([]int, out), w: make([][]float32, out)}
	for o := 0; o < out; o++ {
		center := (float64(o) + 0.5) * scale
		lo := max(int(center-support+0.5), 0)
		hi := min(int(center+support+0.5), in)
		ws := make([]float64, hi-lo)
		var sum float64
		for i := range ws {
			ws[i] = cubic((float64(lo+i) - center + 0.5) / fs)
			sum += ws[i]
		}
		f.lo[o] = lo
		f.w[o] = make([]float32, len(ws))
		for i, v := range ws {
			if sum != 0 {
				v /= sum
			}
			f.w[o][i] = float32(v)
		}
	}
	return f
}

func cubic(x float64) float64 {
	const a = -0.5
	x = math.Abs(x)
	switch {
	case x < 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return (((x-5)*x+8)*x - 4) * a
	}
	return 0
}

// pngWriter encodes RGB images with reused buffers.
type pngWriter struct {
	enc  png.Encoder
	pool onePool
	img  *image.RGBA
	out  bytes.Buffer
}

type onePool struct{ b *png.EncoderBuffer }

func (p *onePool) Get() *png.EncoderBuffer  { b := p.b; p.b = nil; return b }
func (p *onePool) Put(b *png.EncoderBuffer) { p.b = b }

func newPNGWriter(w, h int, level png.CompressionLevel) *pngWriter {
	pw := &pngWriter{img: image.NewRGBA(image.Rect(0, 0, w, h))}
	pw.enc = png.Encoder{CompressionLevel: level, BufferPool: &pw.pool}
	for i := 3; i < len(pw.img.Pix); i += 4 {
		pw.img.Pix[i] = 255
	}
	return pw
}

// encode converts planar [3][h][w] decoder output (about [−1, 1]) to 8-bit
// RGB — clip(v/2 + 0.5, 0, 1)·255 rounded half to even, as numpy — and
// returns a fresh copy of the PNG bytes.
func (pw *pngWriter) encode(planes []float32) ([]byte, error) {
	w, h := pw.img.Rect.Dx(), pw.img.Rect.Dy()
	n := w * h
	r, g, b := planes[:n], planes[n:2*n], planes[2*n:3*n]
	pix := pw.img.Pix
	for i := 0; i < n; i++ {
		pix[4*i], pix[4*i+1], pix[4*i+2] = to8(r[i]), to8(g[i]), to8(b[i])
	}
	pw.out.Reset()
	if err := pw.enc.Encode(&pw.out, pw.img); err != nil {
		return nil, fmt.Errorf("sd: png: %w", err)
	}
	return bytes.Clone(pw.out.Bytes()), nil
}

func to8(v float32) uint8 {
	v = float32(v/2) + 0.5
	if !(v > 0) { // also NaN
		return 0
	}
	if v >= 1 {
		return 255
	}
	return uint8(math.RoundToEven(float64(float32(v * 255))))
}
