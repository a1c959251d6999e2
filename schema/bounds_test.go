package schema

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// hostileBodies are shapes that once crashed or bloated a worker: declared
// lengths far past the body, nesting megabytes deep, element counts that
// make a decoder allocate gigabytes.
func hostileBodies() map[string]struct {
	data   []byte
	asJSON bool
} {
	u32 := func(lead byte, n uint32) []byte {
		b := []byte{lead, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		return b
	}
	// 103 bytes: a map whose "messages" declares four billion entries.
	huge := append([]byte{0x81, 0xa8}, "messages"...)
	huge = append(huge, u32(0xdd, 0xffffffff)...)
	huge = append(huge, bytes.Repeat([]byte{0x90}, 103-len(huge))...)
	deep := bytes.Repeat([]byte{0x91}, 3<<20) // a few MB of one-element arrays
	deep = append(deep, 0xc0)
	wide := append(u32(0xdd, MaxContainerElements+1), bytes.Repeat([]byte{0xc0}, MaxContainerElements+1)...)
	return map[string]struct {
		data   []byte
		asJSON bool
	}{
		"msgpack huge array":            {huge, false},
		"msgpack huge map":              {append(u32(0xdf, 0xfffffff0), 0xa1, 'x', 0xc0), false},
		"msgpack huge string":           {u32(0xdb, 0xffffffff), false},
		"msgpack huge binary":           {append(u32(0xc6, 1<<30), 1, 2, 3), false},
		"msgpack huge ext":              {append(u32(0xc9, 1<<31), 1), false},
		"msgpack deep nesting":          {deep, false},
		"msgpack too many elements":     {wide, false},
		"msgpack truncated length":      {[]byte{0xda, 0x01}, false},
		"msgpack never-used byte":       {[]byte{0xc1}, false},
		"msgpack data after the value":  {[]byte{0x80, 0x80}, false},
		"msgpack empty body":            {nil, false},
		"json deep nesting":             {[]byte(strings.Repeat("[", 3<<20)), true},
		"json deep objects":             {[]byte(strings.Repeat(`{"a":`, 1<<20)), true},
		"json too many elements":        {[]byte("[" + strings.Repeat("0,", MaxContainerElements+1) + "0]"), true},
		"json too many elements nested": {[]byte("[" + strings.Repeat("[0,0,0,0,0,0,0,0],", MaxBodyElements/8+1) + "0]"), true},
	}
}

func TestUnmarshalRefusesHostileShapes(t *testing.T) {
	for name, tc := range hostileBodies() {
		t.Run(name, func(t *testing.T) {
			c := Msgpack
			if tc.asJSON {
				c = JSON
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			var j ChatJob
			err := c.Unmarshal(tc.data, &j)
			runtime.ReadMemStats(&after)
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("Unmarshal = %v, want a *schema.Error", err)
			}
			want := CodeBadMsgpack
			if tc.asJSON {
				want = CodeBadJSON
			}
			if se.Code != want {
				t.Fatalf("code %q, want %q (%s)", se.Code, want, se.Message)
			}
			// Refused before decoding: nothing near the declared sizes was allocated.
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
				t.Fatalf("decoding allocated %d bytes for a %d-byte body", grew, len(tc.data))
			}
		})
	}
}

func TestUnmarshalAcceptsBodiesAtTheLimits(t *testing.T) {
	lim := DefaultLimits
	j := chat()
	j.Messages = nil
	for i := 0; i < lim.MaxMessages; i++ {
		j.Messages = append(j.Messages, Message{Role: "user", Content: "hi", Images: [][]byte{{1}}})
	}
	j.Metadata = map[string]string{}
	for i := 0; i < lim.MaxMetadata; i++ {
		j.Metadata[strings.Repeat("k", i+1)] = "v"
	}
	j.Stop = make([]string, lim.MaxStop)
	for _, c := range []Codec{Msgpack, JSON} {
		data, err := c.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		var k ChatJob
		if err := c.Unmarshal(data, &k); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		if len(k.Messages) != lim.MaxMessages || len(k.Metadata) != lim.MaxMetadata {
			t.Fatalf("%s: decoded %d messages, %d metadata", c, len(k.Messages), len(k.Metadata))
		}
	}
	var res Result
	big := &Result{JobID: "x", Image: bytes.Repeat([]byte{7}, 8<<20)}
	data, _ := Msgpack.Marshal(big)
	if err := Msgpack.Unmarshal(data, &res); err != nil || len(res.Image) != 8<<20 {
		t.Fatalf("8 MiB image result: %v", err)
	}
}
