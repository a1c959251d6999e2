package sd

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"testing"
)

func TestDecodeInitResize(t *testing.T) {
	// A uniform image stays uniform through the resize, at the right value,
	// whatever the scale; JPEG (YCbCr) and PNG decode alike.
	for _, size := range [][2]int{{64, 64}, {1000, 700}, {20, 30}} {
		img := image.NewRGBA(image.Rect(0, 0, size[0], size[1]))
		for i := 0; i < len(img.Pix); i += 4 {
			img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = 255, 0, 51, 255
		}
		var b bytes.Buffer
		if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 100}); err != nil {
			t.Fatal(err)
		}
		dst := make([]float32, 3*64*48)
		if err := decodeInit(b.Bytes(), 64, 48, ImageLimits{}, dst); err != nil {
			t.Fatal(err)
		}
		n := 64 * 48
		for c, want := range []float32{1, -1, 51.0/255*2 - 1} {
			for _, v := range dst[c*n : (c+1)*n] {
				if d := v - want; d > 0.03 || d < -0.03 {
					t.Fatalf("%v: channel %d value %v, want about %v", size, c, v, want)
				}
			}
		}
	}
	// A left/right split keeps its sides.
	img := image.NewGray(image.Rect(0, 0, 200, 100))
	for y := 0; y < 100; y++ {
		for x := 100; x < 200; x++ {
			img.SetGray(x, y, color.Gray{255})
		}
	}
	dst := make([]float32, 3*32*32)
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 100}); err != nil {
		t.Fatal(err)
	}
	if err := decodeInit(b.Bytes(), 32, 32, ImageLimits{}, dst); err != nil {
		t.Fatal(err)
	}
	if dst[5*32+2] > -0.9 || dst[5*32+29] < 0.9 {
		t.Fatalf("left %v right %v", dst[5*32+2], dst[5*32+29])
	}
}

func FuzzDecodeInit(f *testing.F) {
	f.Add(testImage(f, 16, 16))
	f.Add(testImage(f, 3, 1))
	var b bytes.Buffer
	_ = jpeg.Encode(&b, image.NewGray(image.Rect(0, 0, 9, 7)), nil)
	f.Add(b.Bytes())
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Add([]byte{0xff, 0xd8, 0xff})
	f.Add([]byte("GIF89a"))
	dst := make([]float32, 3*16*8)
	f.Fuzz(func(t *testing.T, data []byte) {
		err := decodeInit(data, 16, 8, ImageLimits{MaxPixels: 1 << 20}, dst)
		if err != nil {
			if _, ok := err.(*RequestError); !ok {
				t.Fatalf("error %T is not a *RequestError: %v", err, err)
			}
			return
		}
		for _, v := range dst {
			if !(v >= -1 && v <= 1) {
				t.Fatalf("value %v outside [-1, 1]", v)
			}
		}
	})
}
