package sd

import (
	"context"
	"image/png"
	"runtime"
	"testing"
	"time"

	"github.com/kiln-project/kiln/test/cardsim"
)

// BenchmarkGenerate is one 512×512 txt2img image with the simulator's
// no-compute mode: the card's work is only the copies, so the time is the
// host's (tokenize, scheduler math, noise, VAE scaling, conversions, PNG)
// plus the device-thread hand-offs. host-ms excludes the calls to the card.
// The no-compute decoder output is flat, which flatters the PNG encode; see
// BenchmarkHostRealImage.
func BenchmarkGenerate(b *testing.B) {
	p := openPipeline(b, cardsim.SD15LCM())
	cardsim.Controls(b).Config(b, "nocompute=1", "nocompute=0")
	benchGenerate(b, p, &Request{Prompt: "a red fox in the snow, oil painting", Seed: 1})
}

// BenchmarkImg2Img is BenchmarkGenerate for img2img from a 640×480 PNG
// (decode and resize included).
func BenchmarkImg2Img(b *testing.B) {
	p := openPipeline(b, cardsim.SD15LCM())
	cardsim.Controls(b).Config(b, "nocompute=1", "nocompute=0")
	benchGenerate(b, p, &Request{Prompt: "an oil painting", Seed: 1, InitImage: testImage(b, 640, 480)})
}

// BenchmarkHostRealImage runs with the simulated ops computing, so the PNG
// encodes a real pattern; host-ms is the time outside the calls to the card.
func BenchmarkHostRealImage(b *testing.B) {
	p := openPipeline(b, cardsim.SD15LCM())
	benchGenerate(b, p, &Request{Prompt: "a red fox in the snow, oil painting", Seed: 1})
}

func benchGenerate(b *testing.B, p *Pipeline, req *Request) {
	ctx := context.Background()
	if _, err := p.Generate(ctx, req, nil); err != nil { // warm up
		b.Fatal(err)
	}
	var host, dev, imgT time.Duration
	var size int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req.Seed = uint64(i)
		res, err := p.Generate(ctx, req, func(int, int) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		host += res.Timings.Host()
		dev += res.Timings.Device
		imgT += res.Timings.Image
		size += len(res.PNG)
	}
	n := float64(b.N)
	b.ReportMetric(float64(host.Microseconds())/1000/n, "host-ms/op")
	b.ReportMetric(float64(dev.Microseconds())/1000/n, "device-ms/op")
	b.ReportMetric(float64(imgT.Microseconds())/1000/n, "image-ms/op")
	b.ReportMetric(float64(size)/n, "png-bytes/op")
}

// BenchmarkPNG encodes a 512×512 simulator image at each compression level.
func BenchmarkPNG(b *testing.B) {
	spec := cardsim.SD15LCM()
	p := openPipeline(b, spec)
	if _, err := p.Generate(context.Background(), &Request{Prompt: "a red fox", Seed: 1}, nil); err != nil {
		b.Fatal(err)
	}
	planes := append([]float32(nil), p.pix...)
	for _, c := range []struct {
		name  string
		level png.CompressionLevel
	}{{"BestSpeed", png.BestSpeed}, {"Default", png.DefaultCompression}, {"NoCompression", png.NoCompression}} {
		b.Run(c.name, func(b *testing.B) {
			w := newPNGWriter(512, 512, c.level)
			var size int
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				out, err := w.encode(planes)
				if err != nil {
					b.Fatal(err)
				}
				size = len(out)
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}

// TestMemoryPerImage checks that a pipeline's buffers are reused: after the
// first image, an image allocates little more than its PNG copy.
func TestMemoryPerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	p := openPipeline(t, cardsim.SD15LCM())
	ctx := context.Background()
	req := &Request{Prompt: "a red fox", Seed: 1}
	if _, err := p.Generate(ctx, req, nil); err != nil {
		t.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	const n = 3
	var pngBytes int
	runtime.ReadMemStats(&m0)
	for i := 0; i < n; i++ {
		res, err := p.Generate(ctx, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		pngBytes += len(res.PNG)
	}
	runtime.ReadMemStats(&m1)
	per := (m1.TotalAlloc - m0.TotalAlloc) / n
	mallocs := (m1.Mallocs - m0.Mallocs) / n
	t.Logf("per image: %d bytes in %d allocations (PNG %d bytes)", per, mallocs, pngBytes/n)
	if limit := uint64(pngBytes/n) + 256<<10; per > limit {
		t.Errorf("an image allocates %d bytes, more than its PNG + 256 KiB (%d)", per, limit)
	}
}
